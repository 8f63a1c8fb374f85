"""The same hello as an HTTP server of its own (http.server), for the command runtime."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MESSAGE = json.loads(os.environ.get("SERVE_USER_CONFIG") or "{}").get("message", "hello world")
BODY = MESSAGE.encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the worker reuses its connections

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
server.daemon_threads = True
server.serve_forever()
