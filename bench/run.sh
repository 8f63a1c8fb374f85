#!/usr/bin/env bash
# Measures Serve's HTTP path against a baseline measured in the same run: nginx (one worker)
# answering a fixed body. Prints a Markdown table; docs/benchmarks.md keeps the figures.
#
#   bench/run.sh [duration-seconds] [connections]   the HTTP path (./dev bench)
#   bench/run.sh --soak [seconds]                     memory under load, 300 s at 32 connections
#   bench/run.sh --control-plane                      1,000 deployments; 20,000 replicas in one
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD="$ROOT/${SERVE_BUILD_DIR:-build}"
MODE=http
case "${1:-}" in
  --soak) MODE=soak; shift ;;
  --control-plane) MODE=control-plane; shift ;;
esac

if [ "$MODE" = control-plane ]; then
  # The control plane's figures come from the two scale tests (tests/integration/scale_test.cc
  # and bounds_test.cc), which measure them against a real cluster and print them.
  for test in scale_test bounds_test; do
    echo "== $test"
    SERVE_BIN_DIR="$BUILD/bin" SERVE_REQUIRE_TEST_SERVERS=1 "$BUILD/tests/$test" 2>&1 |
      grep -v -e '^\[' -e '^Running main' -e '^Note: ' -e '^$' || true
  done
  exit 0
fi

DURATION=${1:-10}
CONNECTIONS=${2:-64}
[ "$MODE" = soak ] && DURATION=${1:-300}
THREADS=2
WORK=$(mktemp -d /tmp/serve-bench-XXXXXX)
# Run as root, the node runs its workers as nobody, who must reach the run directory inside.
chmod 0755 "$WORK"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NGINX_PORT=$(free_port)
HTTP_PORT=$(free_port)
NATS_PORT=$(free_port)
SERVE=("$BUILD/bin/serve" --address "nats://127.0.0.1:$NATS_PORT" --namespace bench --run-dir "$WORK/run")

cleanup() {
  [ -f "$WORK/proxy-off.pid" ] && kill "$(cat "$WORK/proxy-off.pid")" 2>/dev/null || true
  [ -f "$WORK/proxy-nolog.pid" ] && kill "$(cat "$WORK/proxy-nolog.pid")" 2>/dev/null || true
  [ -f "$WORK/proxy-ioloop.pid" ] && kill "$(cat "$WORK/proxy-ioloop.pid")" 2>/dev/null || true
  "${SERVE[@]}" shutdown >/dev/null 2>&1 || true
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/nginx"
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx;
  scgi_temp_path $WORK/nginx;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    client_max_body_size 2m;
    client_body_buffer_size 2m;
    location / { return 200 "hello world"; }
    # The body baseline: nginx reads a request body and passes it to an upstream (itself).
    location /sink { proxy_pass http://127.0.0.1:$NGINX_PORT/drop; }
    location /drop { return 200 "ok"; }
  }
}
CONF
nginx -c "$WORK/nginx.conf" -p "$WORK" 2>/dev/null
"${SERVE[@]}" start --http-port "$HTTP_PORT" >/dev/null
"${SERVE[@]}" deploy examples/hello/serve.yaml >/dev/null
# The C++ counter through the native runtime (handler threads), from this build's library.
sed "s#../../build/examples#$BUILD/examples#" examples/counter/serve.yaml \
  > "$WORK/counter.yaml"
"${SERVE[@]}" deploy "$WORK/counter.yaml" >/dev/null
# The same hello in Python: a class in the worker's interpreter (runtime: python) and an
# http.server behind the command runtime.
"${SERVE[@]}" deploy bench/python-hello/serve.yaml >/dev/null
# builtin:echo for bodies, and a native deployment declared kConcurrent (calls overlap on each
# replica's handler threads), from this build's test libraries.
cat > "$WORK/more.yaml" <<YAML
deployments:
  - name: echo
    route_prefix: /echo
    runtime: builtin:echo
    resources: {num_cpus: 0.1}
  - name: concurrent
    route_prefix: /concurrent
    runtime: native
    artifact: $BUILD/tests/deployments/libtest_concurrent.so
    num_replicas: 2
    resources: {num_cpus: 0.25}
  # The same handlers without kConcurrent: calls serialized on each replica's handler thread
  # (the counter declares kNonBlocking and runs on the worker's loop).
  - name: serialized
    route_prefix: /serialized
    runtime: native
    artifact: $BUILD/tests/deployments/libtest_handlers.so
    num_replicas: 2
    resources: {num_cpus: 0.01}
  # builtin:hello with 2 replicas, as the native targets have: what a second worker process
  # costs on its own.
  - name: hello2
    route_prefix: /hello2
    runtime: builtin:hello
    num_replicas: 2
    resources: {num_cpus: 0.01}
YAML
"${SERVE[@]}" deploy "$WORK/more.yaml" >/dev/null

# Resident memory (KiB) of the instance's processes: proxy, controller, nats-server and the
# builtin:hello worker.
rss_of() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
soak_pids() {
  echo "proxy $(cat "$WORK/run/pids/proxy.pid")"
  echo "controller $(cat "$WORK/run/pids/controller.pid")"
  echo "nats-server $(cat "$WORK/run/pids/nats.pid")"
  echo "worker $(pgrep -f "serve-replica worker .*--replica-id hello-" | head -1)"
}
if [ "$MODE" = soak ]; then
  echo "soak: builtin:hello, wrk -t$THREADS -c32 for $DURATION s; resident memory at minute 1 and at the end"
  wrk -t"$THREADS" -c32 -d"${DURATION}s" --latency "http://127.0.0.1:$HTTP_PORT/hello" > "$WORK/soak.txt" &
  wrk_pid=$!
  sleep 60
  declare -A first
  while read -r name pid; do first[$name]=$(rss_of "$pid"); done < <(soak_pids)
  sleep $((DURATION - 65))
  echo "| process | RSS at 60 s (KiB) | RSS at $((DURATION - 5)) s (KiB) | growth |"
  echo "|---|---|---|---|"
  while read -r name pid; do
    last=$(rss_of "$pid")
    echo "| $name | ${first[$name]} | $last | $(awk -v a="${first[$name]}" -v b="$last" 'BEGIN {printf "%+.1f%%", (a > 0 ? (b / a - 1) * 100 : 0)}') |"
  done < <(soak_pids)
  wait "$wrk_pid"
  awk '/Requests\/sec|Non-2xx|Socket errors|^ +(50|99)%/' "$WORK/soak.txt"
  exit 0
fi

# Prints "requests/s p50 p99 non-2xx" for one wrk run (with $2 connections, default
# $CONNECTIONS).
measure() {
  local url=$1 connections=${2:-$CONNECTIONS}
  wrk -t"$THREADS" -c"$connections" -d"${DURATION}s" --latency "$url" >/dev/null  # warm-up
  wrk -t"$THREADS" -c"$connections" -d"${DURATION}s" --latency "$url" |
    awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Non-2xx/ {bad=$NF}
         END {printf "%s %s %s %s\n", rps, p50, p99, bad ? bad : 0}'
}

read -r nginx_rps nginx_p50 nginx_p99 nginx_bad < <(measure "http://127.0.0.1:$NGINX_PORT/hello")
read -r serve_rps serve_p50 serve_p99 serve_bad < <(measure "http://127.0.0.1:$HTTP_PORT/hello")
read -r native_rps native_p50 native_p99 native_bad < <(measure "http://127.0.0.1:$HTTP_PORT/counter")
# Python at 32 connections, with builtin:hello at 32 in the same run to compare against.
read -r hello32_rps hello32_p50 hello32_p99 hello32_bad < <(measure "http://127.0.0.1:$HTTP_PORT/hello" 32)
read -r py_rps py_p50 py_p99 py_bad < <(measure "http://127.0.0.1:$HTTP_PORT/py-hello" 32)
read -r pyhttp_rps pyhttp_p50 pyhttp_p99 pyhttp_bad < <(measure "http://127.0.0.1:$HTTP_PORT/py-http-hello" 32)
read -r conc_rps conc_p50 conc_p99 conc_bad < <(measure "http://127.0.0.1:$HTTP_PORT/concurrent")
read -r serial_rps serial_p50 serial_p99 serial_bad < <(measure "http://127.0.0.1:$HTTP_PORT/serialized")
read -r hello2_rps hello2_p50 hello2_p99 hello2_bad < <(measure "http://127.0.0.1:$HTTP_PORT/hello2")
# 1 MiB bodies at 8 connections: POSTed to builtin:echo (which answers with them) and to nginx,
# which passes them to an upstream.
cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
measure_post() {
  wrk -t"$THREADS" -c8 -d"${DURATION}s" --latency -s "$WORK/post.lua" "$1" >/dev/null  # warm-up
  wrk -t"$THREADS" -c8 -d"${DURATION}s" --latency -s "$WORK/post.lua" "$1" |
    awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Non-2xx/ {bad=$NF}
         END {printf "%s %s %s %s\n", rps, p50, p99, bad ? bad : 0}'
}
read -r nginx_body_rps nginx_body_p50 nginx_body_p99 nginx_body_bad < <(measure_post "http://127.0.0.1:$NGINX_PORT/sink")
read -r echo_body_rps echo_body_p50 echo_body_p99 echo_body_bad < <(measure_post "http://127.0.0.1:$HTTP_PORT/echo")

# Starts a second proxy of the same instance with extra flags; prints its port.
start_proxy() {
  local name=$1
  shift
  local port
  port=$(free_port)
  # As the proxy role's NATS user, from the credentials `serve start` wrote.
  SERVE_NATS_CREDS="$WORK/run/creds/proxy.creds" \
  "$BUILD/bin/serve-proxy" --address "nats://127.0.0.1:$NATS_PORT" \
    --namespace bench --http-port "$port" "$@" >"$WORK/$name.log" 2>&1 &
  echo $! > "$WORK/$name.pid"
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/hello" >/dev/null && break
    sleep 0.1
  done
  echo "$port"
}

# Measures the default proxy and the one on port $1 in turn (default, other, default, other),
# so drift in the machine's speed hits both alike; prints "a1 a2 b1 b2 cost%".
in_turn() {
  local a1 b1 a2 b2
  read -r a1 _ < <(measure "http://127.0.0.1:$HTTP_PORT/hello")
  read -r b1 _ < <(measure "http://127.0.0.1:$1/hello")
  read -r a2 _ < <(measure "http://127.0.0.1:$HTTP_PORT/hello")
  read -r b2 _ < <(measure "http://127.0.0.1:$1/hello")
  echo "$a1 $a2 $b1 $b2 $(awk -v a="$a1" -v b="$a2" -v c="$b1" -v d="$b2" \
    'BEGIN {printf "%+.1f", ((a + b) / (c + d) - 1) * 100}')"
}

# What counting costs, and what the access log costs: proxies without each.
read -r on1 on2 off1 off2 metrics_cost < <(in_turn "$(start_proxy proxy-off --no-metrics)")
read -r log1 log2 nolog1 nolog2 access_log_cost < <(in_turn "$(start_proxy proxy-nolog --no-access-log)")
# What reading the NATS socket on the proxy's loop (the default) does against nats.c's reader
# thread (--no-nats-io-on-loop).
read -r loop1 loop2 thread1 thread2 loop_vs_thread < <(in_turn "$(start_proxy proxy-thread --no-nats-io-on-loop)")

ratio=$(awk -v a="$serve_rps" -v b="$nginx_rps" 'BEGIN {printf "%.2f", a / b}')
native_ratio=$(awk -v a="$native_rps" -v b="$nginx_rps" 'BEGIN {printf "%.2f", a / b}')
python_vs_command=$(awk -v a="$py_rps" -v b="$pyhttp_rps" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')
builtin_vs_python=$(awk -v a="$hello32_rps" -v b="$py_rps" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')

echo "| target | requests/s | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|"
echo "| nginx, fixed body (baseline) | $nginx_rps | $nginx_p50 | $nginx_p99 | $nginx_bad |"
echo "| serve: proxy -> NATS -> builtin:hello replica | $serve_rps | $serve_p50 | $serve_p99 | $serve_bad |"
echo "| serve: proxy -> NATS -> native C++ counter (kNonBlocking), 2 replicas | $native_rps | $native_p50 | $native_p99 | $native_bad |"
echo "| serve: builtin:hello, 2 replicas | $hello2_rps | $hello2_p50 | $hello2_p99 | $hello2_bad |"
echo "| serve: native test deployment, serialized on a handler thread, 2 replicas | $serial_rps | $serial_p50 | $serial_p99 | $serial_bad |"
echo "| serve, c32: builtin:hello | $hello32_rps | $hello32_p50 | $hello32_p99 | $hello32_bad |"
echo "| serve, c32: python runtime, hello class | $py_rps | $py_p50 | $py_p99 | $py_bad |"
echo "| serve, c32: command runtime, Python http.server hello | $pyhttp_rps | $pyhttp_p50 | $pyhttp_p99 | $pyhttp_bad |"
echo "| serve: native kConcurrent test deployment, 2 replicas | $conc_rps | $conc_p50 | $conc_p99 | $conc_bad |"
echo "| nginx, 1 MiB POST passed to an upstream, c8 | $nginx_body_rps ($(awk -v r="$nginx_body_rps" 'BEGIN {printf "%.0f", r}') MiB/s) | $nginx_body_p50 | $nginx_body_p99 | $nginx_body_bad |"
echo "| serve, 1 MiB POST to builtin:echo (answered with it), c8 | $echo_body_rps ($(awk -v r="$echo_body_rps" 'BEGIN {printf "%.0f", r}') MiB/s) | $echo_body_p50 | $echo_body_p99 | $echo_body_bad |"
echo
echo "metrics on vs off (builtin:hello, requests/s): on $on1, $on2; off $off1, $off2; on - off: $metrics_cost%"
echo "access log on vs off (builtin:hello, requests/s): on $log1, $log2; off $nolog1, $nolog2; on - off: $access_log_cost%"
echo "NATS I/O on the proxy's loop vs on nats.c's thread (builtin:hello, requests/s): loop $loop1, $loop2; thread $thread1, $thread2; loop - thread: $loop_vs_thread%"
echo
echo "python runtime / command runtime (c32, requests/s): $python_vs_command (issue 15 asks >= 3)"
echo "builtin:hello / python runtime (c32, requests/s): $builtin_vs_python (issue 15 asks <= 2)"
of_hello() { awk -v a="$1" -v b="$serve_rps" 'BEGIN {printf "%.2f", a / b}'; }
echo "native counter / builtin:hello: $(of_hello "$native_rps"); kConcurrent / builtin:hello: $(of_hello "$conc_rps"); serialized native / builtin:hello: $(of_hello "$serial_rps"); builtin:hello with 2 replicas / with 1: $(of_hello "$hello2_rps") (64 connections)"
echo "serve / nginx throughput ratio: builtin $ratio, native $native_ratio ($(nproc) cores, wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, $(date -u +%Y-%m-%d))"
