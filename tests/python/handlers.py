"""Test handlers for `runtime: python` (tests/integration/python_test.cc), chosen by the last
part of the path: /ok, /who, /raise, /unsupported, /exit, /segfault, /abort, /health/fail."""
import ctypes
import os
import sys

from serve import Response, deployment, logger


@deployment
class Handlers:
    def __init__(self, config):
        self.config = config
        self.healthy = True
        print("handlers constructed")  # reaches the replica's log without a flush

    def __call__(self, request):
        action = request.path.rstrip("/").rsplit("/", 1)[-1]
        if action == "ok":
            return "ok"
        if action == "who":
            return {"pid": os.getpid(), "config": self.config}
        if action == "raise":
            raise KeyError("no such thing, on purpose")
        if action == "unsupported":
            return {1, 2}
        if action == "exit":
            logger.warning("exiting on purpose")
            sys.exit(7)
        if action == "segfault":
            ctypes.string_at(0)  # reads address 0: SIGSEGV
        if action == "abort":
            os.abort()
        if action == "fail":
            self.healthy = False
            return "check_health fails from now on"
        return Response({"error": f"no action {action!r}"}, status=404)

    def check_health(self):
        if not self.healthy:
            raise RuntimeError("told to fail")

    def reconfigure(self, config):
        self.config = config
