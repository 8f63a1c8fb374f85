#!/usr/bin/python3
"""Answers every request with JSON describing what it received (standard library only).

Used by services/replica/command_runtime_test.cc. Listens on 127.0.0.1:$PORT.
  GET  /healthz          200 "ok", or 503 "unhealthy" after POST /toggle-health
  POST /toggle-health    flips the health answer
  GET  /status/<n>       answers with status <n>
  anything else          200 JSON: method, path, query, headers, body, env
Flags: --ignore-sigterm  keep running on SIGTERM (to test the SIGKILL after the grace period)
"""
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

healthy = True
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the runtime's curl handles expect

    def answer(self, status, body, content_type="application/json"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Echo", "yes")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def handle_any(self):
        global healthy
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if url.path == "/healthz":
            with lock:
                ok = healthy
            self.answer(200 if ok else 503, "ok" if ok else "unhealthy", "text/plain")
            return
        if url.path == "/toggle-health":
            with lock:
                healthy = not healthy
            self.answer(200, json.dumps({"healthy": healthy}))
            return
        if url.path.startswith("/status/"):
            self.answer(int(url.path.split("/")[2]), "status", "text/plain")
            return
        self.answer(200, json.dumps({
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", "replace"),
            "env": {k: os.environ.get(k, "") for k in
                    ("PORT", "SERVE_REPLICA_ID", "SERVE_DEPLOYMENT", "SERVE_USER_CONFIG")},
            "cwd": os.getcwd(),
            "pid": os.getpid(),
        }))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = handle_any

    def log_message(self, format, *args):
        print("echo_server: " + format % args, file=sys.stderr, flush=True)


def main():
    if "--ignore-sigterm" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.daemon_threads = True
    print("echo_server listening on " + os.environ["PORT"], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
