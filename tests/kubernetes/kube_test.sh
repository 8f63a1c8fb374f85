#!/usr/bin/env bash
# `./dev kube-test`: deploy/kubernetes/ run for real by podman 4.3's `podman kube play` (no
# cluster needed). It plays every Deployment of the manifests (nats, redis, checkpointer,
# controller, 2 proxies, 2 node agents) on a podman network of its own, then the Job
# deploy-example as a pod; waits for "hello world" from /hello on every proxy pod; kills the
# controller's process and sees /hello keep answering all the while, and the controller come back
# (its container restarts: restartPolicy Always) and report hello HEALTHY. Then it removes every
# pod, volume, secret and network it made; only the images stay.
#
# What podman 4.3 does not do and this script does instead (tests/kubernetes/podman_manifests.py
# writes the copies it plays; deploy/kubernetes/README.md, "Try it with podman"):
#   - Services: each Deployment is played with a network alias per Service that selects it, so
#     `nats`, `redis`, `proxy` and `controller` resolve on the network as Service names do
#     (`proxy` to both proxy pods).
#   - Ports: podman 4.3 publishes every containerPort on the host at the same number, so the two
#     pods of a Deployment would collide; the copies declare none, and the script reaches each
#     proxy at its pod's address on the network (the host routes to a rootful podman network),
#     at the port the manifest names `http`.
#   - Secrets: created as podman secrets (JSON), with new random passwords.
#   - Jobs: the Job's pod template is played as a Pod (restartPolicy OnFailure).
#   - Images: nats:2.9 and redis:7 are not reachable here; Serve's image has both servers.
#   - `$(VAR)` in args: replaced by the value the manifest gives it.
#   - Probes: podman 4.3 runs health checks from systemd timers, and there is no systemd here,
#     so no liveness or readiness probe runs; restarts come from the restart policy.
#
# The image: serve:latest if it exists (from an earlier compose-test or kube-test; its date is
# printed), else built from the Dockerfile as compose-test does (20-40 min here).
# SERVE_KUBE_REBUILD=1 builds it even when it exists. Needs root (podman rootful).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/serve-kube.XXXXXX)
# shellcheck source=tests/deploy/podman_env.sh
. "$ROOT/tests/deploy/podman_env.sh"

NETWORK=serve-kube-test-$$
PLAY=$WORK/play
mkdir -p "$PLAY"
PLAYED=()          # the files played, for `podman kube down`
SECRETS_MADE=()
NETWORK_MADE=
VOLUMES=()         # what kube play made of the claims and ConfigMaps, to remove

show_logs() {
  echo "--- pods ---"
  podman pod ls 2>/dev/null || true
  echo "--- container logs (last lines) ---"
  for pod in $(podman pod ls -q --filter "network=$NETWORK" 2>/dev/null); do
    for container in $(podman pod inspect "$pod" --format '{{range .Containers}}{{.Name}} {{end}}'); do
      case $container in *-infra) continue ;; esac
      echo "== $container"
      podman logs --tail 15 "$container" 2>&1 || true
    done
  done
}

cleanup() {
  local code=$?
  set +e
  [ $code -ne 0 ] && show_logs
  local file
  for file in "${PLAYED[@]}"; do podman kube down "$file" >/dev/null 2>&1; done
  # Whatever kube down left (a pod whose play failed half-way).
  for pod in $(podman pod ls -q --filter "network=$NETWORK" 2>/dev/null); do
    podman pod rm -f -t 0 "$pod" >/dev/null 2>&1
  done
  for volume in "${VOLUMES[@]}"; do podman volume rm -f "$volume" >/dev/null 2>&1; done
  for secret in "${SECRETS_MADE[@]}"; do podman secret rm "$secret" >/dev/null 2>&1; done
  [ -n "$NETWORK_MADE" ] && podman network rm -f "$NETWORK" >/dev/null 2>&1
  rm -rf "$WORK"
  exit $code
}
trap cleanup EXIT

if [ "${SERVE_KUBE_REBUILD:-0}" = 1 ] || ! podman image exists serve:latest; then
  build_serve_image
else
  log "using the image serve:latest of $(podman image inspect serve:latest --format '{{.Created}}' | cut -d. -f1) (SERVE_KUBE_REBUILD=1 builds it again)"
fi

python3 "$ROOT/tests/kubernetes/podman_manifests.py" "$ROOT/deploy/kubernetes" "$PLAY" localhost/serve:latest ||
  fail "could not turn deploy/kubernetes into what podman kube play runs"
plan() { python3 -c "import json, sys; plan = json.load(open('$PLAY/plan.json')); $1"; }

# Names podman keeps globally: refuse to run over someone else's (or a crashed run's) objects.
mapfile -t WORKLOADS < <(plan 'print("\n".join(w["name"] for w in plan["workloads"]))')
mapfile -t JOBS < <(plan 'print("\n".join(j["name"] for j in plan["jobs"]))')
mapfile -t SECRETS < <(plan 'print("\n".join(plan["secrets"]))')
mapfile -t NEEDED_VOLUMES < <(cd "$PLAY" && python3 -c '
import sys, yaml
for name in sys.argv[1:]:
    for value in yaml.safe_load_all(open(name)):
        if value["kind"] in ("ConfigMap", "PersistentVolumeClaim"): print(value["metadata"]["name"])
' ./*.yaml | sort -u)
for name in "${WORKLOADS[@]}"; do
  ! podman pod exists "$name-pod-0" || fail "a pod $name-pod-0 exists already: remove it (podman pod rm -f $name-pod-0)"
done
for name in "${JOBS[@]}"; do
  ! podman pod exists "$name" || fail "a pod $name exists already: remove it (podman pod rm -f $name)"
done
for name in "${SECRETS[@]}"; do
  ! podman secret inspect "$name" >/dev/null 2>&1 || fail "a podman secret $name exists already: remove it (podman secret rm $name)"
done
for name in "${NEEDED_VOLUMES[@]}"; do
  ! podman volume exists "$name" || fail "a podman volume $name exists already: remove it (podman volume rm $name)"
done
VOLUMES=("${NEEDED_VOLUMES[@]}")

podman network create "$NETWORK" >/dev/null
NETWORK_MADE=1
for name in "${SECRETS[@]}"; do
  plan "json.dump(plan['secrets']['$name'], sys.stdout)" | podman secret create "$name" - >/dev/null
  SECRETS_MADE+=("$name")
done
admin_password=$(plan "import base64; print(base64.b64decode(plan['secrets']['serve-bus']['SERVE_NATS_PASSWORD_ADMIN']).decode())")

play() {  # $1: file, $2...: network aliases
  local network=$NETWORK
  if [ $# -gt 1 ]; then
    network+=":$(printf 'alias=%s,' "${@:2}")"
    network=${network%,}
  fi
  PLAYED+=("$PLAY/$1")
  podman kube play --network "$network" "$PLAY/$1" > "$WORK/play-$1.log" 2>&1 ||
    { cat "$WORK/play-$1.log"; fail "podman kube play $1"; }
}

log "podman kube play: ${WORKLOADS[*]}"
for name in "${WORKLOADS[@]}"; do
  aliases=$(plan "print(' '.join(next(w for w in plan['workloads'] if w['name'] == '$name')['aliases']))")
  # shellcheck disable=SC2086  # the aliases, space-separated (none for most)
  play "$name.yaml" $aliases
done

# Every container of every pod running.
pods=()
for name in "${WORKLOADS[@]}"; do
  replicas=$(plan "print(next(w for w in plan['workloads'] if w['name'] == '$name')['replicas'])")
  for ((i = 0; i < replicas; i++)); do pods+=("$name-pod-$i"); done
done
deadline=$(($(date +%s) + 60))
for pod in "${pods[@]}"; do
  until [ "$(podman pod inspect "$pod" --format '{{.State}}' 2>/dev/null)" = Running ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "pod $pod is not running after 60 s"
    sleep 0.5
  done
done
log "pods running: ${pods[*]}"

address_of() {  # $1: pod
  podman inspect "$(podman pod inspect "$1" --format '{{.InfraContainerID}}')" \
    --format "{{(index .NetworkSettings.Networks \"$NETWORK\").IPAddress}}"
}
proxy_port=$(plan "print(next(w for w in plan['workloads'] if w['name'] == 'proxy')['ports']['http'])")
proxies=()
for pod in "${pods[@]}"; do
  case $pod in proxy-pod-*) proxies+=("http://$(address_of "$pod"):$proxy_port") ;; esac
done
log "proxies: ${proxies[*]}"

hello() { curl -s --max-time 2 "$1/hello" || true; }
all_say_hello() {
  local proxy
  for proxy in "${proxies[@]}"; do [ "$(hello "$proxy")" = "hello world" ] || return 1; done
}
wait_for_hello() {  # $1: what for, $2: seconds
  local deadline=$(($(date +%s) + $2))
  until all_say_hello; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "/hello did not answer \"hello world\" on every proxy within $2 s ($1): $(hello "${proxies[0]}")"
    sleep 0.5
  done
  log "/hello answers \"hello world\" on every proxy ($1)"
}

log "the Job deploy-example, as a pod"
for name in "${JOBS[@]}"; do play "job-$name.yaml"; done
wait_for_hello "after the Job deployed examples/hello" 180
for name in "${JOBS[@]}"; do
  deadline=$(($(date +%s) + 60))
  until [ "$(podman inspect "$name-deploy" --format '{{.State.Status}} {{.State.ExitCode}}' 2>/dev/null)" = "exited 0" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "the Job's container $name-deploy did not finish with 0"
    sleep 0.5
  done
done
log "the Job's container finished (exit 0)"

# The names the Services stand for resolve on the network, one address per pod.
resolved=$(podman run --rm --network "$NETWORK" localhost/serve:latest getent ahostsv4 proxy | awk '{print $1}' | sort -u | wc -l)
[ "$resolved" -eq "${#proxies[@]}" ] || fail "the name proxy resolves to $resolved addresses, not ${#proxies[@]}"

cli() {
  podman run --rm --network "$NETWORK" -e SERVE_ADDRESS=nats://nats:4222 -e SERVE_NAMESPACE=serve \
    -e SERVE_NATS_USER=serve-admin -e SERVE_NATS_PASSWORD="$admin_password" \
    localhost/serve:latest serve "$@"
}

log "kill -9 of the controller's process (its container restarts)"
controller="controller-pod-0-controller"
restarts=$(podman inspect "$controller" --format '{{.RestartCount}}')
crash "$controller"
killed=$(date +%s)
deadline=$((killed + 120))
rounds=0
restarted=
# /hello on every proxy at every round, from the kill until the controller reports again.
while true; do
  all_say_hello || fail "/hello stopped answering $(($(date +%s) - killed)) s after the controller was killed"
  rounds=$((rounds + 1))
  if [ -z "$restarted" ] &&
     [ "$(podman inspect "$controller" --format '{{.RestartCount}} {{.State.Status}}')" = "$((restarts + 1)) running" ]; then
    restarted=1
    log "the controller's container restarted"
  fi
  [ -n "$restarted" ] && cli status 2>/dev/null | grep -Eq '^hello +HEALTHY ' && break
  [ "$(date +%s)" -lt "$deadline" ] ||
    fail "the controller did not restart and report hello HEALTHY within 120 s: $(cli status 2>&1 | tail -5)"
  sleep 0.2
done
log "the controller reports hello HEALTHY; /hello answered on every proxy all along ($rounds rounds)"
wait_for_hello "after the controller came back" 30

# The downward API reached the node agents: each is named after its pod (metadata.name) and
# offers the CPUs of its limit (limits.cpu, through --num-cpus); both proxies report.
cli status > "$WORK/status.txt" 2>&1 || true
cpus=$(python3 -c '
import sys, yaml
for value in yaml.safe_load_all(open(sys.argv[1])):
    if value["kind"] == "Deployment":
        args = value["spec"]["template"]["spec"]["containers"][0]["args"]
        print(args[args.index("--num-cpus") + 1])
' "$PLAY/replica.yaml")
for pod in "${pods[@]}"; do
  case $pod in
    replica-pod-*)
      grep -Eq "^$pod +HEALTHY +$pod +$cpus " "$WORK/status.txt" ||
        { cat "$WORK/status.txt"; fail "serve status does not show node $pod HEALTHY with $cpus CPUs"; } ;;
  esac
done
healthy_proxies=$(grep -Ec '^proxy-[0-9a-f]+ +HEALTHY ' "$WORK/status.txt" || true)
[ "$healthy_proxies" -eq "${#proxies[@]}" ] ||
  { cat "$WORK/status.txt"; fail "serve status shows $healthy_proxies proxies HEALTHY, not ${#proxies[@]}"; }
log "serve status: nodes ${cpus} CPUs each, named after their pods; ${healthy_proxies} proxies"

log "passed in $(($(date +%s) - START)) s; tearing down"
