#!/usr/bin/python3
"""An iris classifier served over HTTP: a `runtime: command` deployment for Serve.

At start it trains a logistic regression on scikit-learn's iris data set (150 samples, a second
or two), then answers on 127.0.0.1:$PORT:
  GET  /healthz                 200 "ok"
  GET  <prefix>/                JSON describing the model
  POST <anything>/predict       {"features": [[5.1, 3.5, 1.4, 0.2], ...]}
                                -> {"predictions": ["setosa", ...], "probabilities": [[...], ...]}
Serve forwards requests with the route prefix still in the path, so the server matches on how
paths end rather than on the prefix. It exits cleanly on SIGTERM (Serve sends it on stop).
"""
import json
import math
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

MAX_BODY_BYTES = 1 << 20
MAX_ROWS = 10000


def train():
    iris = load_iris()
    model = LogisticRegression(max_iter=1000)
    model.fit(iris.data, iris.target)
    accuracy = float(model.score(iris.data, iris.target))
    return iris, model, accuracy


IRIS, MODEL, ACCURACY = train()
CLASSES = [str(name) for name in IRIS.target_names]
FEATURES = [str(name) for name in IRIS.feature_names]


def parse_features(body):
    """The rows to classify, or raises ValueError with a message for the caller."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"the body is not valid JSON: {error}") from None
    if not isinstance(request, dict) or "features" not in request:
        raise ValueError('expected a JSON object like {"features": [[5.1, 3.5, 1.4, 0.2]]}')
    rows = request["features"]
    if not isinstance(rows, list) or not rows:
        raise ValueError('"features" must be a non-empty list of rows')
    if len(rows) > MAX_ROWS:
        raise ValueError(f'"features" has {len(rows)} rows; at most {MAX_ROWS} per request')
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(FEATURES):
            raise ValueError(f"row {index} must be a list of {len(FEATURES)} numbers "
                             f"({', '.join(FEATURES)})")
        for value in row:
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f"row {index} holds {json.dumps(value)}, not a finite number")
    return rows


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Serve reuses its connections

    def send_json(self, status, value):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path.endswith("/predict"):
            self.send_json(405, {"error": "use POST with {\"features\": [[...], ...]}"})
            return
        self.send_json(200, {
            "model": "LogisticRegression(max_iter=1000)",
            "trained_on": f"sklearn.datasets.load_iris ({len(IRIS.data)} samples)",
            "classes": CLASSES,
            "feature_names": FEATURES,
            "training_accuracy": round(ACCURACY, 4),
            "predict": {"method": "POST", "path": "<prefix>/predict",
                        "body": {"features": [[5.1, 3.5, 1.4, 0.2]]}},
        })

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.send_json(413, {"error": f"the body is larger than {MAX_BODY_BYTES} bytes"})
            self.close_connection = True
            return
        body = self.rfile.read(length)
        if not path.endswith("/predict"):
            self.send_json(404, {"error": f"no such endpoint: POST {path}; "
                                          "try POST <prefix>/predict"})
            return
        try:
            rows = parse_features(body)
        except ValueError as error:
            self.send_json(400, {"error": str(error)})
            return
        probabilities = MODEL.predict_proba(rows)
        self.send_json(200, {
            "predictions": [CLASSES[row.argmax()] for row in probabilities],
            "probabilities": [[round(float(p), 4) for p in row] for row in probabilities],
        })

    def log_message(self, format, *args):
        pass  # one line per request would drown the replica's log


def main():
    port = int(os.environ["PORT"])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True

    def stop(signum, frame):
        # shutdown() waits for serve_forever to return, so it must run on another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"trained on {len(IRIS.data)} iris samples, accuracy {ACCURACY:.2f}, "
          f"listening on {port}", flush=True)
    server.serve_forever()
    server.server_close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
