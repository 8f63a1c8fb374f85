#!/usr/bin/env bash
# `./dev up-test`: the first five minutes of a new user, measured. A fresh clone of this
# repository's last commit runs `./dev up` in a fresh Debian 12 container (minbase, as
# debootstrap makes it: none of the packages ./dev installs are there), and the script waits for
# /hello to answer inside it. It prints how long `./dev up` took, package installs included, and
# the lines ./dev printed. Then it removes the container; the base image stays cached.
#
# Uses the podman set-up of tests/deploy/podman_env.sh (root, runc, cgroupfs). The container
# downloads its packages from deb.debian.org, so the figure includes this machine's network.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/serve-fresh-up.XXXXXX)
# shellcheck source=tests/deploy/podman_env.sh
. "$ROOT/tests/deploy/podman_env.sh"
CONTAINER=serve-fresh-up-$$

cleanup() {
  local code=$?
  podman rm -f "$CONTAINER" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit $code
}
trap cleanup EXIT

ensure_base_image
git clone -q "$ROOT" "$WORK/src"
chmod 0755 "$WORK"
log "a fresh clone at $(git -C "$WORK/src" log --oneline -1)"

# Inside: ./dev up, timed, then /hello by bash's /dev/tcp (minbase has no curl).
cat > "$WORK/inside.sh" <<'INSIDE'
set -u
cd /src
start=$(date +%s)
./dev up > /src/up.log 2>&1
code=$?
took=$(($(date +%s) - start))
echo "dev-up-exit $code"
echo "dev-up-seconds $took"
[ $code -eq 0 ] || { tail -40 /src/up.log; exit 1; }
for _ in $(seq 600); do
  if exec 3<>/dev/tcp/127.0.0.1/8000 2>/dev/null; then
    printf 'GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3
    answer=$(cat <&3)
    exec 3<&-
    if [[ $answer == "HTTP/1.1 200"* ]]; then
      echo "hello-seconds $(($(date +%s) - start))"
      echo "hello-body ${answer##*$'\r\n\r\n'}"
      exit 0
    fi
  fi
  sleep 0.1
done
echo "/hello did not answer 200 within 60 s of ./dev up"
exit 1
INSIDE

log "./dev up in a fresh debian:12 container"
podman run --name "$CONTAINER" -v "$WORK/src:/src" -v "$WORK/inside.sh:/inside.sh:ro" \
  debian:12 bash /inside.sh > "$WORK/result" 2>&1 || { cat "$WORK/result"; fail "./dev up"; }
cat "$WORK/result"
echo "--- what ./dev up printed ---"
grep -a -v '^\s*$' "$WORK/src/up.log" | sed 's/\x1b\[[0-9;]*m//g'
up=$(awk '/^dev-up-seconds/ {print $2}' "$WORK/result")
hello=$(awk '/^hello-seconds/ {print $2}' "$WORK/result")
log "passed: ./dev up took $((up / 60)) min $((up % 60)) s; /hello answered $((hello / 60)) min $((hello % 60)) s after it began"
