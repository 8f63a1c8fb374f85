# shellcheck shell=bash
# What `./dev compose-test` (tests/compose/compose_test.sh) and `./dev kube-test`
# (tests/kubernetes/kube_test.sh) share: rootful podman set up as this kind of machine needs it,
# the base image made without a registry, and Serve's image built from the Dockerfile.
# Source it after setting ROOT (the repository) and WORK (a scratch directory the caller
# removes); it sets START, CACHE and CONTAINERS_CONF.
#
# No registry is reachable from here, so the base image the Dockerfile starts FROM is made with
# debootstrap (Debian 12, minbase) and `podman import`, and cached in $SERVE_COMPOSE_CACHE
# (default /var/cache/serve-compose).

CACHE=${SERVE_COMPOSE_CACHE:-/var/cache/serve-compose}
START=$(date +%s)

log() { printf '\033[1m==> [%4ss] %s\033[0m\n' "$(($(date +%s) - START))" "$*"; }
fail() { printf '\033[1;31mFAILED: %s\033[0m\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "run as root: podman runs rootful here (runc, cgroupfs)"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# podman 4.3 with runc (crun refuses this machine's hybrid cgroups), cgroupfs (no systemd), and
# ulimits a container may have here (nofile at most the hard limit, nproc at most 32768).
podman_nofile=$(ulimit -Hn)
cat > "$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$podman_nofile:$podman_nofile", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$WORK/containers.conf

# The base image: the names the Dockerfile's FROM lines use.
ensure_base_image() {
  if ! podman image exists debian:12; then
    if [ ! -f "$CACHE/bookworm-minbase.tar" ]; then
      log "making the base image with debootstrap (once; cached in $CACHE)"
      mkdir -p "$CACHE"
      rm -rf "$CACHE/rootfs"
      debootstrap --variant=minbase bookworm "$CACHE/rootfs" http://deb.debian.org/debian \
        > "$CACHE/debootstrap.log" 2>&1 || fail "debootstrap failed: see $CACHE/debootstrap.log"
      tar -C "$CACHE/rootfs" -cf "$CACHE/bookworm-minbase.tar" .
      rm -rf "$CACHE/rootfs"
    fi
    podman import "$CACHE/bookworm-minbase.tar" debian:12 >/dev/null 2>&1
  fi
  podman image exists debian:12-slim || podman tag debian:12 debian:12-slim
}

# serve:latest from the Dockerfile (the build stage compiles everything: 20-40 min on 2 busy
# cores; layers podman has cached make a rebuild of unchanged sources quick).
build_serve_image() {
  ensure_base_image
  log "building serve:latest from the Dockerfile"
  podman build --quiet --tag serve:latest "$ROOT" > "$WORK/build.log" 2>&1 ||
    { tail -30 "$WORK/build.log"; fail "podman build failed"; }
  local size
  size=$(podman image inspect serve:latest --format '{{.Size}}')
  log "image serve:latest: $((size / 1024 / 1024)) MiB"
}

# SIGKILL to a container's main process from the host, as a crash (the OOM killer, say) would:
# `podman kill` counts as a stop by the user, after which no restart policy applies.
crash() { kill -KILL "$(podman inspect --format '{{.State.Pid}}' "$1")"; }
