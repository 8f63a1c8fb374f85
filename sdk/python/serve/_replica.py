"""The replica side of `runtime: python`, called by serve-replica's embedded interpreter.

Not an API: serve-replica imports this module, calls load() once and then Replica's methods
from its threads (handler threads for requests, the control thread for check_health and
reconfigure). Exceptions of user code are turned into answers and messages here; what escapes
(SystemExit, say) is the host's to handle.
"""
import asyncio
import importlib
import inspect
import json
import logging
import os
import sys
import threading
import traceback

import serve
from serve import Request, Response

# How many lines of a traceback a start error carries (the whole one goes to the log).
_TRACEBACK_TAIL_LINES = 10
_TEXT = "text/plain; charset=utf-8"


class _HostHandler(logging.Handler):
    """serve.logger's lines to the worker's log (spdlog), tagged with the request id."""

    def __init__(self, log):
        super().__init__()
        self._log = log

    def emit(self, record):
        try:
            self._log(record.levelno, getattr(record, "request_id", ""), self.format(record))
        except Exception:  # a log line must never fail a request
            self.handleError(record)


def use_host_log(log):
    """Sends serve.logger (and Python warnings) to the host's log function."""
    for handler in list(serve.logger.handlers):
        serve.logger.removeHandler(handler)
    serve.logger.addHandler(_HostHandler(log))


def _is_host_frame(filename):
    """Frames of the import machinery and of this module: noise in a user's traceback."""
    return (filename.startswith("<frozen ") or filename == __file__
            or filename.endswith(os.path.join("importlib", "__init__.py")))


def _tail(error, working_dir):
    """The last lines of error's traceback, its frames in the user's code only, and files in
    working_dir named relative to it."""
    summary = traceback.TracebackException.from_exception(error)
    summary.stack = traceback.StackSummary.from_list(
        [frame for frame in summary.stack if not _is_host_frame(frame.filename)])
    text = "".join(summary.format()).rstrip()
    if working_dir:
        text = text.replace(os.path.join(working_dir, ""), "")
    return "\n".join(text.splitlines()[-_TRACEBACK_TAIL_LINES:])


def _parse_config(text):
    return json.loads(text) if text else {}


def load(import_path, working_dir, python_path, user_config, route_prefix):
    """Imports and builds the deployment. Returns (Replica, "") or (None, why it failed)."""
    module_name, _, attribute = import_path.partition(":")
    for entry in reversed(python_path):
        sys.path.insert(0, entry)
    if working_dir:
        sys.path.insert(0, working_dir)
    stage = f"importing module '{module_name}'"
    try:
        target = importlib.import_module(module_name)
        stage = f"module '{module_name}' has no attribute '{attribute}'"
        for part in attribute.split("."):
            target = getattr(target, part)
        stage = "parsing user_config as JSON"
        config = _parse_config(user_config)
        stage = f"constructing {import_path}"
        if inspect.isclass(target):
            instance = target(config) if _takes_argument(target) else target()
        elif callable(target):
            instance = target  # a function deployment: called with the request
        else:
            return None, (f"{import_path} is a {type(target).__name__}, not a class or "
                          "function; point import_path at the deployment's class")
    except BaseException as error:  # SystemExit at import time ends the start too
        serve.logger.error("%s:\n%s", stage,
                           "".join(traceback.format_exception(error)).rstrip())
        if isinstance(error, AttributeError) and stage.startswith("module"):
            return None, stage
        return None, f"{stage} failed:\n{_tail(error, working_dir)}"
    if not callable(instance):
        return None, f"{import_path} has no __call__ method: define __call__(self, request)"
    return Replica(instance, route_prefix), ""


def _takes_argument(cls):
    """Whether cls(...) wants the config: an __init__ with a parameter besides self."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in signature.parameters.values())


class _UnsupportedAnswer(Exception):
    pass


class Replica:
    def __init__(self, instance, route_prefix):
        self._instance = instance
        self._route_prefix = route_prefix
        self._loop = None
        self._loop_thread = None
        self._loop_lock = threading.Lock()
        call = getattr(instance, "__call__", instance)
        self.is_async = inspect.iscoroutinefunction(call)
        if self.is_async:
            self._ensure_loop()

    # Requests -------------------------------------------------------------------------------

    def handle(self, method, path, query, headers, body, request_id):
        """Answers one request: (status, [(name, value), ...], body bytes)."""
        token = serve._request_id.set(request_id)
        try:
            request = Request(method, path, query, headers, body, request_id, self._route_prefix)
            try:
                value = self._await(self._instance(request), request_id)
                return _answer(value)
            except _UnsupportedAnswer as error:
                serve.logger.error("%s", error)
                return 500, [("Content-Type", _TEXT)], str(error).encode()
            except Exception as error:
                serve.logger.error("__call__ raised:\n%s",
                                   "".join(traceback.format_exception(error)).rstrip())
                return 500, [("Content-Type", _TEXT)], _describe(error).encode()
        finally:
            serve._request_id.reset(token)

    # The control thread ---------------------------------------------------------------------

    def check_health(self):
        """"" when healthy, else why not."""
        check = getattr(self._instance, "check_health", None)
        if check is None:
            return ""
        try:
            self._await(check(), "")
            return ""
        except Exception as error:
            serve.logger.warning("check_health raised:\n%s",
                                 "".join(traceback.format_exception(error)).rstrip())
            return _describe(error)

    def reconfigure(self, user_config):
        """"" when applied, else why not."""
        try:
            config = _parse_config(user_config)
        except ValueError as error:
            return f"user_config is not JSON: {error}"
        apply = getattr(self._instance, "reconfigure", None)
        if apply is None:
            return ""
        try:
            self._await(apply(config), "")
            return ""
        except Exception as error:
            serve.logger.warning("reconfigure raised:\n%s",
                                 "".join(traceback.format_exception(error)).rstrip())
            return _describe(error)

    def stop(self):
        loop, thread = self._loop, self._loop_thread
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)

    # async def support ----------------------------------------------------------------------

    def _ensure_loop(self):
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="serve-asyncio",
                                          daemon=True)
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    def _await(self, value, request_id):
        """value itself, or what it returns when it is a coroutine (run on the replica's loop,
        this thread waiting without the GIL)."""
        if not inspect.iscoroutine(value):
            return value
        future = asyncio.run_coroutine_threadsafe(_with_request_id(value, request_id),
                                                  self._ensure_loop())
        return future.result()


async def _with_request_id(coroutine, request_id):
    serve._request_id.set(request_id)  # this task's own context
    return await coroutine


def _describe(error):
    try:
        text = str(error)
    except Exception:  # a __str__ that raises: the type is what is known
        text = ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _answer(value):
    status, headers, media_type = 200, None, None
    if isinstance(value, Response):
        status, headers, media_type, value = value.status, value.headers, value.media_type, value.body
        if value is None:
            value = b""
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise _UnsupportedAnswer(f"Response status must be an int from 100 to 599, got "
                                     f"{status!r}")
    if isinstance(value, (bytes, bytearray, memoryview)):
        body, content_type = bytes(value), "application/octet-stream"
    elif isinstance(value, str):
        body, content_type = value.encode(), _TEXT
    elif isinstance(value, (dict, list)):
        try:
            body = json.dumps(value).encode()
        except (TypeError, ValueError) as error:
            raise _UnsupportedAnswer(f"__call__ returned a {type(value).__name__} that JSON "
                                     f"cannot hold: {error}") from None
        content_type = "application/json"
    else:
        kind = type(value)
        name = (kind.__name__ if kind.__module__ == "builtins" else
                f"{kind.__module__}.{kind.__qualname__}")
        raise _UnsupportedAnswer(f"__call__ returned {'None' if value is None else 'a ' + name}; "
                                 "return a dict or list (JSON), str, bytes or serve.Response")
    pairs = []
    given = headers.items() if isinstance(headers, dict) else (headers or [])
    for pair in given:
        try:
            name, text = pair
        except (TypeError, ValueError):
            raise _UnsupportedAnswer(f"Response headers must be a dict or (name, value) pairs, "
                                     f"got {pair!r}") from None
        if not isinstance(name, str) or not isinstance(text, str):
            raise _UnsupportedAnswer(f"Response header names and values must be str, got "
                                     f"{name!r}: {text!r}")
        if any(c in name + text for c in "\r\n\0"):
            raise _UnsupportedAnswer(f"Response header {name!r} has a line break or NUL")
        pairs.append((name, text))
    if not any(name.lower() == "content-type" for name, _ in pairs):
        pairs.append(("Content-Type", media_type or content_type))
    return status, pairs, body
