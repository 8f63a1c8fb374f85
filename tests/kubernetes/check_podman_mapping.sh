#!/bin/sh
# DeployFiles.KubernetesManifestsMapToPodman: the copies `./dev kube-test` plays under podman can
# still be made from deploy/kubernetes/. A new kind, image or volume there that
# tests/kubernetes/podman_manifests.py does not map fails here, in a second, rather than in the
# next run of kube-test (which needs root, podman and the image).
#   check_podman_mapping.sh <source dir>
source=$1
if ! python3 -c 'import yaml' 2>/dev/null; then
  if [ "$SERVE_REQUIRE_TEST_SERVERS" = 1 ]; then
    echo "PyYAML not installed (Debian: python3-yaml; ./dev test installs it)"
    exit 1
  fi
  echo "PyYAML not installed: skipped"
  exit 0
fi
out=$(mktemp -d) || exit 1
trap 'rm -rf "$out"' EXIT
python3 "$source/tests/kubernetes/podman_manifests.py" "$source/deploy/kubernetes" "$out" \
  localhost/serve:latest || exit 1
# What kube_test.sh relies on: the workloads it waits for, the proxy's port named http, the
# admin's password, a Job to play.
python3 - "$out/plan.json" <<'PY' || exit 1
import json, sys
plan = json.load(open(sys.argv[1]))
workloads = {w["name"]: w for w in plan["workloads"]}
missing = {"nats", "redis", "checkpointer", "controller", "proxy", "replica"} - set(workloads)
assert not missing, f"no Deployment for {sorted(missing)}"
assert "http" in workloads["proxy"]["ports"], "the proxy declares no port named http"
assert "SERVE_NATS_PASSWORD_ADMIN" in plan["secrets"].get("serve-bus", {}), "no admin password in serve-bus"
assert plan["jobs"], "no Job deploys the example"
print("the manifests map to podman:", ", ".join(sorted(workloads)), "+ jobs", [j["name"] for j in plan["jobs"]])
PY
