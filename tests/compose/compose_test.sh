#!/usr/bin/env bash
# `./dev compose-test`: docker-compose.yml run for real, by Debian's docker-compose against
# Debian's podman serving the Docker API (no Docker engine needed). It builds the image from the
# Dockerfile, brings everything up with two node agents, waits for /hello, deploys the python
# example through the cli service and waits for its predictions, kills a node agent's
# container and the controller's and sees /hello keep answering, takes everything down keeping
# the Redis volume and brings it up again without the one-shot deploy: the deployment comes back
# from Redis, the python one with its code. Then it removes everything it made but the cached
# base image.
#
# The podman set-up, the base image (made with debootstrap: no registry is reachable here) and
# the image build are tests/deploy/podman_env.sh's, which ./dev kube-test shares. Needs root
# (podman rootful: runc, cgroupfs).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PROJECT=serve-compose-test
WORK=$(mktemp -d /tmp/serve-compose.XXXXXX)
# shellcheck source=tests/deploy/podman_env.sh
. "$ROOT/tests/deploy/podman_env.sh"

export SERVE_HTTP_PORT=$(free_port) SERVE_DASHBOARD_PORT=$(free_port)

podman system service --time=0 "unix://$WORK/podman.sock" > "$WORK/podman-service.log" 2>&1 &
PODMAN_SERVICE=$!
export DOCKER_HOST=unix://$WORK/podman.sock
HEALTH_LOOP=

# Passwords for the bus, as a user makes .env.
for role in CONTROLLER PROXY NODE WORKER CHECKPOINTER ADMIN; do
  echo "SERVE_NATS_PASSWORD_$role=p$(openssl rand -hex 16)"
done > "$WORK/.env"
compose() {
  docker-compose --project-name "$PROJECT" --project-directory "$ROOT" \
    -f "$ROOT/docker-compose.yml" --env-file "$WORK/.env" "$@"
}

cleanup() {
  local code=$?
  [ -n "$HEALTH_LOOP" ] && kill "$HEALTH_LOOP" 2>/dev/null
  if [ $code -ne 0 ]; then
    echo "--- container logs (last lines) ---"
    compose logs --no-color --tail 20 2>/dev/null || true
  fi
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  kill "$PODMAN_SERVICE" 2>/dev/null; wait "$PODMAN_SERVICE" 2>/dev/null
  rm -rf "$WORK"
  exit $code
}
trap cleanup EXIT

for _ in $(seq 100); do [ -S "$WORK/podman.sock" ] && break; sleep 0.1; done
[ -S "$WORK/podman.sock" ] || fail "podman system service did not start: $(cat "$WORK/podman-service.log")"

build_serve_image

# podman 4.3 runs health checks through systemd timers; without systemd, this loop runs them.
(while true; do
   for id in $(podman ps -q --filter "label=com.docker.compose.project=$PROJECT"); do
     podman healthcheck run "$id" >/dev/null 2>&1 || true
   done
   sleep 5
 done) &
HEALTH_LOOP=$!

hello() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SERVE_HTTP_PORT/hello" || true; }
wait_for_hello() {  # $1: what for, $2: seconds
  local deadline=$(($(date +%s) + $2))
  until [ "$(hello)" = 200 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "/hello did not answer 200 within $2 s ($1)"
    sleep 0.5
  done
  log "/hello answers ($1)"
}
containers_of() { podman ps -q --filter "label=com.docker.compose.project=$PROJECT" \
  --filter "label=com.docker.compose.service=$1"; }
container_of() { containers_of "$1" | head -1; }

log "docker-compose up -d --scale replica=2"
compose up -d --no-build --scale replica=2 > "$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "up"; }
wait_for_hello "first start" 300

predict() {  # the answer of examples/python-model for one iris of each of two kinds
  curl -s -X POST "http://127.0.0.1:$SERVE_HTTP_PORT/model/predict" \
    -d '{"features": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}' || true
}
wait_for_predictions() {  # $1: what for, $2: seconds
  local deadline=$(($(date +%s) + $2))
  until predict | grep -q '"predictions": *\["setosa", *"virginica"\]'; do
    [ "$(date +%s)" -lt "$deadline" ] ||
      fail "/model/predict did not classify within $2 s ($1): $(predict)"
    sleep 0.5
  done
  log "/model/predict classifies ($1)"
}

log "serve deploy examples/python-model (a python class on Debian's scikit-learn) through the cli service"
compose run --rm --no-deps cli deploy /opt/serve/examples/python-model/serve.yaml \
  > "$WORK/deploy-python.log" 2>&1 || { cat "$WORK/deploy-python.log"; fail "deploy python-model"; }
wait_for_predictions "the python runtime in the image" 300

log "kill -9 of every node agent (their containers restart; the controller places hello again)"
for replica in $(containers_of replica); do crash "$replica"; done
deadline=$(($(date +%s) + 30))
until [ "$(hello)" != 200 ]; do  # the proxy has noticed: no replica serves hello for a while
  [ "$(date +%s)" -lt "$deadline" ] || fail "/hello still answered 30 s after every node died"
  sleep 0.2
done
wait_for_hello "after every node agent was killed" 120

log "kill -9 of the controller's process (its container restarts)"
controller=$(container_of controller)
crash "$controller"
wait_for_hello "after the controller's container was killed" 120
deadline=$(($(date +%s) + 120))
until compose run --rm --no-deps cli status 2>/dev/null | grep -q HEALTHY; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "the controller did not come back"
  sleep 1
done
log "the controller answers again; hello is HEALTHY"

log "docker-compose down (the redis volume kept), then up without the one-shot deploy"
compose down > "$WORK/down.log" 2>&1 || { cat "$WORK/down.log"; fail "down"; }
[ "$(hello)" != 200 ] || fail "/hello still answers after down"
compose up -d --no-build --scale replica=2 --scale deploy-example=0 > "$WORK/up2.log" 2>&1 ||
  { cat "$WORK/up2.log"; fail "up again"; }
wait_for_hello "after down and up: restored from Redis, nothing redeployed" 300
[ -z "$(container_of deploy-example)" ] || fail "the one-shot deploy ran again"
wait_for_predictions "after down and up: its code restored from Redis too" 300

log "passed in $(($(date +%s) - START)) s; tearing down"
