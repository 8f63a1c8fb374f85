#!/usr/bin/env python3
"""Turns deploy/kubernetes/ into what podman 4.3's `kube play` runs, for tests/kubernetes/kube_test.sh.

    podman_manifests.py <deploy/kubernetes dir> <output dir> <image>

podman kube play makes Pods, Deployments (one pod per replica), PersistentVolumeClaims and
ConfigMaps, and nothing else, so this writes, into <output dir>:
  - <deployment>.yaml for each Deployment (with the ConfigMaps it mounts), and the Job's pod
    template as a Pod in job-<name>.yaml, to play once the rest runs;
  - plan.json: for each file, the network aliases that stand for the Services selecting its pods
    (podman makes no Services: an alias on the podman network is the Service's DNS name), and
    the Secrets as podman secrets want them: JSON of base64 values (podman 4.3 stores a Secret
    object given to kube play as YAML, then cannot read it back for secretKeyRef), every
    *PASSWORD* value replaced by a new random one (secrets.example.yaml's are placeholders).
The copies differ from the manifests only where podman needs it:
  - images nats:* and redis:* become <image> (no registry is reachable here; Serve's image holds
    Debian's nats-server and redis-server), run by name (those images' entrypoints are not there),
    Redis with `--protected-mode no` (as the redis image's entrypoint does) and its data under
    /var/lib/serve/redis (a directory of the serve user in the image, which the volume takes on);
  - `$(VAR)` in args, which Kubernetes expands and podman 4.3 does not, becomes the variable's
    value when the manifest fixes it: a literal, or a resourceFieldRef to the container's limit;
  - containers declare no ports: podman 4.3 publishes every containerPort on the host at the
    same number, so the two pods of a Deployment collide, as does anything else on the host
    using that port. Pods reach each other at every port over the network all the same; named
    ports in probes become numbers, and plan.json lists each workload's ports by name.
Everything in the manifests is read as data: an object of a kind this does not expect is an
error naming it.
"""
import base64
import json
import math
import os
import re
import secrets
import sys

import yaml

IGNORED = {"Namespace", "Kustomization"}  # podman has one namespace; kustomize lists files


def fail(message):
    sys.exit(f"podman_manifests.py: {message}")


def load(directory):
    objects = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".yaml"):
            continue
        with open(os.path.join(directory, name), encoding="utf-8") as file:
            for value in yaml.safe_load_all(file):
                if value is None:
                    continue
                if not isinstance(value, dict) or "kind" not in value:
                    fail(f"{name}: a document that is not a Kubernetes object")
                objects.append(value)
    return objects


def quantity_to_int(quantity):
    """A CPU quantity ("2", "500m") as whole CPUs, rounded up as Kubernetes does for divisor 1."""
    text = str(quantity)
    if text.endswith("m"):
        return max(1, math.ceil(int(text[:-1]) / 1000))
    return math.ceil(float(text))


def static_value(variable, container):
    if "value" in variable:
        return str(variable["value"])
    field = variable.get("valueFrom", {}).get("resourceFieldRef")
    if field and field.get("resource") == "limits.cpu" and str(field.get("divisor", "1")) == "1":
        limit = container.get("resources", {}).get("limits", {}).get("cpu")
        if limit is None:
            fail(f"container {container['name']}: {variable['name']} reads limits.cpu, which is unset")
        return str(quantity_to_int(limit))
    return None


def expand_arguments(container):
    values = {}
    for variable in container.get("env", []):
        value = static_value(variable, container)
        if value is not None:
            values[variable["name"]] = value

    def expand(match):
        name = match.group(1)
        if name not in values:
            fail(f"container {container['name']}: $({name}) in args has no value known before the pod runs")
        return values[name]

    container["args"] = [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", expand, str(a))
                         for a in container.get("args", [])]


def adapt_container(container, image):
    original = container["image"]
    if original.startswith("nats:"):
        container["image"] = image
        container["command"] = ["nats-server"]
    elif original.startswith("redis:"):
        container["image"] = image
        container["command"] = ["redis-server"]
        container["args"] = container.get("args", []) + [
            "--protected-mode", "no", "--dir", "/var/lib/serve/redis"]
        for mount in container.get("volumeMounts", []):
            mount["mountPath"] = "/var/lib/serve/redis"
    elif original.split(":")[0] == "serve":
        container["image"] = image
    else:
        fail(f"container {container['name']}: image {original} is not one this test can run here")
    expand_arguments(container)
    ports = {}
    for port in container.pop("ports", []):
        if "hostPort" in port:
            fail(f"container {container['name']}: a hostPort, which this test does not expect")
        ports[port.get("name", str(port["containerPort"]))] = port["containerPort"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        for action in ("httpGet", "tcpSocket"):
            target = container.get(probe, {}).get(action)
            if target and isinstance(target.get("port"), str):
                if target["port"] not in ports:
                    fail(f"container {container['name']}: {probe} names port {target['port']}, which it does not declare")
                target["port"] = ports[target["port"]]
    return ports


def selects(service, labels):
    selector = service["spec"].get("selector", {})
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def main():
    if len(sys.argv) != 4:
        fail("usage: podman_manifests.py <deploy/kubernetes dir> <output dir> <image>")
    source, output, image = sys.argv[1:]
    objects = load(source)
    by_kind = {}
    for value in objects:
        by_kind.setdefault(value["kind"], []).append(value)
    unexpected = set(by_kind) - IGNORED - {
        "Deployment", "Job", "Service", "Secret", "ConfigMap", "PersistentVolumeClaim"}
    if unexpected:
        fail(f"kinds this test does not know how to run under podman: {', '.join(sorted(unexpected))}")

    config_maps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    claims = {c["metadata"]["name"]: c for c in by_kind.get("PersistentVolumeClaim", [])}
    services = by_kind.get("Service", [])
    plan = {"workloads": [], "jobs": [], "secrets": {}}

    def documents_for(pod_spec, where):
        """The ConfigMaps and claims a pod mounts, which podman must see in the same file."""
        documents = []
        for volume in pod_spec.get("volumes", []):
            if "configMap" in volume:
                name = volume["configMap"]["name"]
                if name not in config_maps:
                    fail(f"{where}: mounts ConfigMap {name}, which no manifest defines")
                documents.append(config_maps[name])
            elif "persistentVolumeClaim" in volume:
                name = volume["persistentVolumeClaim"]["claimName"]
                if name not in claims:
                    fail(f"{where}: mounts claim {name}, which no manifest defines")
                documents.append(claims[name])
            else:
                fail(f"{where}: volume {volume.get('name')} is of a kind this test does not map")
        return documents

    for deployment in by_kind.get("Deployment", []):
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]
        ports = {}
        for container in pod["spec"]["containers"]:
            ports.update(adapt_container(container, image))
        labels = pod["metadata"].get("labels", {})
        aliases = sorted(s["metadata"]["name"] for s in services if selects(s, labels))
        with open(os.path.join(output, f"{name}.yaml"), "w", encoding="utf-8") as file:
            yaml.safe_dump_all(documents_for(pod["spec"], f"Deployment {name}") + [deployment], file)
        plan["workloads"].append({"name": name, "file": f"{name}.yaml", "aliases": aliases,
                                  "replicas": deployment["spec"].get("replicas", 1),
                                  "ports": ports})

    for job in by_kind.get("Job", []):
        name = job["metadata"]["name"]
        spec = job["spec"]["template"]["spec"]
        for container in spec["containers"]:
            adapt_container(container, image)
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "labels": job["spec"]["template"].get("metadata", {}).get("labels", {})},
               "spec": spec}
        with open(os.path.join(output, f"job-{name}.yaml"), "w", encoding="utf-8") as file:
            yaml.safe_dump_all(documents_for(spec, f"Job {name}") + [pod], file)
        plan["jobs"].append({"name": name, "file": f"job-{name}.yaml"})

    for secret in by_kind.get("Secret", []):
        data = dict(secret.get("data", {}))
        for key, value in secret.get("stringData", {}).items():
            if "PASSWORD" in key:  # the example's are placeholders: a password of our own
                value = "p" + secrets.token_hex(16)
            data[key] = base64.b64encode(str(value).encode()).decode()
        plan["secrets"][secret["metadata"]["name"]] = data

    with open(os.path.join(output, "plan.json"), "w", encoding="utf-8") as file:
        json.dump(plan, file, indent=2)


if __name__ == "__main__":
    main()
