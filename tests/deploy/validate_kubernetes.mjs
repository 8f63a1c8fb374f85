// Checks deploy/kubernetes/ without a cluster: every object against the Kubernetes OpenAPI schema
// (the npm package kubernetes-models), and the rules these manifests promise (README.md, "Run on
// Kubernetes"): probes and resource requests on every container, selectors that match their
// pods, named ports that exist, Secret keys that secrets.example.yaml defines, and the NATS
// configuration equal to deploy/nats/nats-server.conf.
//
//   node tests/deploy/validate_kubernetes.mjs <source dir> <dir with node_modules>
import { readFileSync, readdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { createRequire } from "node:module";

const [source, tools] = process.argv.slice(2);
const require = createRequire(join(tools, "node_modules", "x.js"));
const YAML = require("yaml");
const dir = join(source, "deploy", "kubernetes");
const problems = [];
const problem = (where, what) => problems.push(`${where}: ${what}`);

const objects = [];
for (const file of readdirSync(dir).filter((f) => f.endsWith(".yaml")).sort()) {
  for (const doc of YAML.parseAllDocuments(readFileSync(join(dir, file), "utf8"))) {
    if (doc.errors.length) problem(file, doc.errors.map(String).join("; "));
    const value = doc.toJS();
    if (value) objects.push({ file, value });
  }
}

// The schema of each object's apiVersion and kind.
for (const { file, value } of objects) {
  const where = `${file}: ${value.kind} ${value.metadata?.name ?? ""}`;
  if (value.kind === "Kustomization") {
    for (const resource of value.resources ?? []) {
      if (!existsSync(join(dir, resource))) problem(where, `lists ${resource}, which is missing`);
    }
    continue;
  }
  const [group, version] = value.apiVersion.includes("/")
    ? value.apiVersion.split("/")
    : [null, value.apiVersion];
  const module = group ? `kubernetes-models/${group}/${version}/${value.kind}` : `kubernetes-models/${version}/${value.kind}`;
  let Model;
  try {
    const loaded = require(module);
    Model = loaded[value.kind] ?? loaded.default;
  } catch (error) {
    problem(where, `no schema for ${value.apiVersion} ${value.kind}: ${error.message}`);
    continue;
  }
  try {
    new Model(value).validate();
  } catch (error) {
    problem(where, `does not match the Kubernetes schema: ${error.message}`);
  }
  if (value.metadata?.namespace !== "serve" && value.kind !== "Namespace") {
    problem(where, "is not in the namespace serve");
  }
}

// The keys of the Secrets of secrets.example.yaml.
const secretKeys = new Map();
for (const { value } of objects) {
  if (value.kind === "Secret") {
    secretKeys.set(value.metadata.name, new Set(Object.keys({ ...value.data, ...value.stringData })));
  }
}

for (const { file, value } of objects) {
  const pod = value.kind === "Deployment" ? value.spec.template : value.kind === "Job" ? value.spec.template : null;
  if (!pod) continue;
  const where = `${file}: ${value.kind} ${value.metadata.name}`;
  if (value.kind === "Deployment") {
    const labels = pod.metadata?.labels ?? {};
    for (const [key, wanted] of Object.entries(value.spec.selector.matchLabels ?? {})) {
      if (labels[key] !== wanted) problem(where, `selector ${key}=${wanted} does not match its pods`);
    }
  }
  for (const container of pod.spec.containers) {
    const at = `${where}, container ${container.name}`;
    if (!container.resources?.requests) problem(at, "has no resource requests");
    if (value.kind === "Deployment") {
      if (!container.livenessProbe) problem(at, "has no liveness probe");
      if (!container.readinessProbe) problem(at, "has no readiness probe");
    }
    const ports = new Set((container.ports ?? []).map((p) => p.name));
    for (const probe of [container.livenessProbe, container.readinessProbe]) {
      const port = probe?.httpGet?.port;
      if (typeof port === "string" && !ports.has(port)) problem(at, `probes port ${port}, which it does not name`);
    }
    for (const env of container.env ?? []) {
      const ref = env.valueFrom?.secretKeyRef;
      if (ref && !secretKeys.get(ref.name)?.has(ref.key)) {
        problem(at, `reads ${ref.key} of Secret ${ref.name}, which secrets.example.yaml does not define`);
      }
    }
    for (const from of container.envFrom ?? []) {
      if (from.secretRef && !secretKeys.has(from.secretRef.name)) {
        problem(at, `reads Secret ${from.secretRef.name}, which secrets.example.yaml does not define`);
      }
    }
  }
}

// The bus configuration is the shipped one.
const natsConfig = objects.find((o) => o.value.kind === "ConfigMap" && o.value.metadata.name === "nats-config");
const shipped = readFileSync(join(source, "deploy", "nats", "nats-server.conf"), "utf8");
if (!natsConfig) {
  problem("nats.yaml", "has no ConfigMap nats-config");
} else if (natsConfig.value.data["nats-server.conf"] !== shipped) {
  problem("nats.yaml", "ConfigMap nats-config differs from deploy/nats/nats-server.conf: copy it in again");
}

if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
console.log(`${objects.length} objects in deploy/kubernetes are valid`);
