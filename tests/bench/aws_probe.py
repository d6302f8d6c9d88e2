"""One function's handler in a fresh process, every AWS API call counted: `python -m tests.bench.aws_probe`.

The job (argv[1], JSON) names the function, its handler and the environment the local stack gives its
workers (moto endpoint, table names, the emulator). Before the handler is imported,
botocore's BaseClient._make_api_call is wrapped, so every call from boto3 and PynamoDB is recorded
with its service, operation and (for DynamoDB) table. The process then serves, on a loopback port:
- the function's HttpApi routes through the local stack's own API Gateway front (payload 2.0), and
- POST /_local/probe/invoke (a direct-invoke or SQS/schedule event as the JSON body),
running the handler in this process. GET /_local/probe/calls answers the calls of every invocation so far.
It prints {"url": ...} once ready and stops when stdin closes.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time
import uuid
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

_lock = threading.Lock()
_current: list[dict[str, str]] | None = None
_invocations: list[dict[str, Any]] = []


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return


class Context:
    """The attributes of the Lambda Python runtime's context that Powertools reads."""

    def __init__(self, function: str, timeout: float) -> None:
        self.function_name = function
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:eu-central-1:123456789012:function:{function}"
        self.memory_limit_in_mb = 512
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function}"
        self.log_stream_name = "probe"
        self._deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left of the function's timeout."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _install_counter(tables: dict[str, str]) -> None:
    from botocore.client import BaseClient

    original = BaseClient._make_api_call

    def counted(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        service = self.meta.service_model.service_name
        entry = {"service": service, "operation": operation_name}
        if service == "dynamodb":
            name = str(api_params.get("TableName", ""))
            entry["table"] = tables.get(name, name)
        with _lock:
            if _current is not None:
                _current.append(entry)
        return original(self, operation_name, api_params)

    BaseClient._make_api_call = counted  # type: ignore[method-assign]


def main() -> int:
    """Serve one function until stdin closes."""
    job = json.loads(sys.argv[1])
    os.environ.clear()
    os.environ.update(job["env"])
    env = job["env"]
    tables = {env.get(k, ""): k for k in ("PORTALS_TABLE", "STATES_TABLE", "RATE_LIMIT_TABLE")}
    _install_counter(tables)
    module_name, _, attribute = job["handler"].rpartition(".")
    began = time.perf_counter()
    handler = getattr(importlib.import_module(module_name), attribute)
    import_seconds = time.perf_counter() - began
    function = job["function"]
    timeout = float(job.get("timeout", 30))

    def invoke(name: str, event: Any) -> Any:
        from local_stack.runtime import InvocationResult

        global _current  # noqa: PLW0603
        calls: list[dict[str, str]] = []
        with _lock:
            _current = calls
        started = time.perf_counter()
        error = None
        try:
            result = handler(event, Context(function, timeout))
            payload = json.dumps(result).encode()
        except Exception as exc:
            error = "Unhandled"
            payload = json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)[:200]}).encode()
        seconds = time.perf_counter() - started
        with _lock:
            _current = None
            _invocations.append({"calls": calls, "seconds": seconds, "error": error})
        return InvocationResult(str(uuid.uuid4()), payload, error, "", seconds * 1000)

    def local(request: Request) -> Response | None:
        if request.path == "/_local/probe/invoke" and request.method == "POST":
            outcome = invoke(function, json.loads(request.get_data(as_text=True)))
            return Response(outcome.payload, 200, content_type="application/json")
        if request.path == "/_local/probe/calls":
            with _lock:
                body = json.dumps({"import_seconds": import_seconds, "invocations": _invocations})
            return Response(body, 200, content_type="application/json")
        return None

    from local_stack.http_api import HttpApiFront
    from local_stack.template import Route

    routes = [Route(r["method"], r["path"], function) for r in job.get("routes", [])]
    front = HttpApiFront(routes, invoke, local_handler=local)
    server = make_server("127.0.0.1", 0, front, threaded=True, request_handler=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"url": f"http://127.0.0.1:{server.server_port}"}), flush=True)
    sys.stdin.read()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
