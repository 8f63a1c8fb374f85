#!/bin/sh
# Checks deploy/systemd/*.service with `systemd-analyze verify`, the command they start being
# the built one (the units name /usr/local/bin/serve, where `cmake --install` puts it). Any
# line systemd-analyze prints (an unknown key, a bad value, a missing command) fails the check.
# Usage: verify_systemd.sh SOURCE_DIR BIN_DIR
set -eu
source_dir=$1
bin_dir=$2
if ! command -v systemd-analyze >/dev/null; then
  if [ "${SERVE_REQUIRE_TEST_SERVERS:-}" = 1 ]; then
    echo "systemd-analyze not installed (Debian: systemd)"; exit 1
  fi
  echo "systemd-analyze not installed: skipped"; exit 0
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir "$scratch/runtime"
failed=0
for unit in "$source_dir"/deploy/systemd/*.service; do
  name=$(basename "$unit")
  sed "s#/usr/local/bin/serve#$bin_dir/serve#g" "$unit" > "$scratch/$name"
  mode=--system
  case "$name" in *-user.service) mode=--user ;; esac
  if ! out=$(XDG_RUNTIME_DIR="$scratch/runtime" systemd-analyze verify --man=no "$mode" \
      "$scratch/$name" 2>&1) || [ -n "$out" ]; then
    echo "$name ($mode):"; echo "$out"; failed=1
  else
    echo "$name ($mode): ok"
  fi
done
exit $failed
