"""Serve's Python API: a class with __call__ served by `runtime: python`.

    from serve import deployment, Request, Response

    @deployment(num_replicas=2, max_concurrent_queries=8)   # defaults; the YAML file overrides
    class Iris:
        def __init__(self, config: dict): ...        # the deployment's user_config, parsed
        def __call__(self, request: Request):        # or `async def __call__`
            return {"predictions": [...]}            # dict/list -> JSON, str, bytes, Response
        def check_health(self): ...                  # optional; raise to fail the check
        def reconfigure(self, config: dict): ...     # optional; a new user_config, in place

The replica worker (serve-replica) hosts the interpreter, imports the module named by the
deployment's `import_path` ("model:Iris") and builds the class once per replica. This package
is pure Python (the standard library only), so the same code also runs in plain unit tests.
"""
import contextvars
import json as _json
import logging
import sys
from urllib.parse import parse_qsl

__all__ = ["deployment", "Request", "Response", "logger"]

# The id of the request the current thread (or asyncio task) is handling; "" outside one.
_request_id = contextvars.ContextVar("serve_request_id", default="")


def deployment(_cls=None, **options):
    """Marks a class (or function) as a Serve deployment.

    Options are recorded on the class as `_serve_options`. `serve deploy` reads num_replicas,
    max_concurrent_queries and the health-check and shutdown durations from this call in the
    source (literal numbers) and uses them where the config file sets none: defaults, which
    the file overrides. The class works undecorated just the same.
    """

    def mark(target):
        target._serve_options = dict(options)
        return target

    if _cls is not None:
        if options:
            raise TypeError("use @deployment or @deployment(option=value, ...)")
        return mark(_cls)
    return mark


class Request:
    """One HTTP request as the proxy received it.

    path is the full path the client asked for, route_prefix included; query maps each query
    parameter to its first value (query_string is the raw text); headers maps lower-case names
    to values; body is bytes.
    """

    __slots__ = ("method", "path", "route_prefix", "query_string", "headers", "body",
                 "request_id", "_query")

    def __init__(self, method="GET", path="/", query_string="", headers=None, body=b"",
                 request_id="", route_prefix="/"):
        self.method = method
        self.path = path
        self.route_prefix = route_prefix
        self.query_string = query_string
        self.headers = _lower_keys(headers)
        self.body = bytes(body)
        self.request_id = request_id
        self._query = None

    @property
    def query(self):
        if self._query is None:
            parsed = {}
            for key, value in parse_qsl(self.query_string, keep_blank_values=True):
                parsed.setdefault(key, value)
            self._query = parsed
        return self._query

    def text(self, encoding="utf-8"):
        return self.body.decode(encoding)

    def json(self):
        """The body parsed as JSON; raises ValueError (json.JSONDecodeError) when it is not."""
        return _json.loads(self.body)

    def __repr__(self):
        return f"Request({self.method} {self.path!r}, {len(self.body)} bytes)"


def _lower_keys(headers):
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, dict) else headers
    lowered = {}
    for name, value in items:
        lowered.setdefault(str(name).lower(), value)
    return lowered


class Response:
    """An answer with a status, headers or a media type of its own.

    body may be bytes, str, a dict or list (sent as JSON) or None (no body). media_type sets
    Content-Type unless headers give one.
    """

    __slots__ = ("body", "status", "headers", "media_type")

    def __init__(self, body=b"", status=200, headers=None, media_type=None):
        self.body = body
        self.status = status
        self.headers = headers
        self.media_type = media_type

    def __repr__(self):
        return f"Response(status={self.status}, media_type={self.media_type!r})"


class _RequestIdFilter(logging.Filter):
    def filter(self, record):
        record.request_id = _request_id.get()
        return True


class _StderrHandler(logging.StreamHandler):
    """Outside a replica (a unit test, a script): lines to stderr with the request id."""

    def __init__(self):
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(levelname)s serve request=%(request_id)s "
                                            "%(message)s"))


# serve.logger: inside a replica its lines go to the worker's log, which names the node,
# deployment, replica and (during a request) the request id; elsewhere to stderr.
logger = logging.getLogger("serve")
logger.setLevel(logging.INFO)
logger.propagate = False
logger.addFilter(_RequestIdFilter())
logger.addHandler(_StderrHandler())
