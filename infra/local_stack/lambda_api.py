"""The Lambda Invoke API (``POST /2015-03-31/functions/{name}/invocations``) over the local functions.

Answers as Lambda does, so an unmodified boto3 Lambda client works against it: 200 with the result;
a function error is still 200, with ``X-Amz-Function-Error: Unhandled`` and the runtime's error
document (``errorMessage``, ``errorType``, ``requestId`` and, as the Python runtime sends it,
``stackTrace`` — frames and source lines only, never local variables); API-level failures carry
``x-amzn-ErrorType`` (ResourceNotFoundException 404, InvalidRequestContentException 400,
RequestEntityTooLargeException 413).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

from werkzeug.wrappers import Request, Response

from local_stack.runtime import (
    ASYNC_REQUEST_LIMIT_BYTES,
    SYNC_REQUEST_LIMIT_BYTES,
    FunctionRuntime,
)
from local_stack.template import ACCOUNT_ID

_log = logging.getLogger("local_stack.lambda_api")
_INVOKE_PATH = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations$")
# Function name forms Lambda accepts: name, name:qualifier, partial ARN, full ARN.
_ARN = re.compile(
    r"^(?:arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:)?(?:\d{12}:)?(?:function:)?(?P<name>[^:]+)(?::.+)?$"
)

LocalHandler = Callable[[Request], Response | None]


def _error(status: int, error_type: str, message: str) -> Response:
    response = Response(
        json.dumps({"Type": "User", "message": message}), status=status, content_type="application/json"
    )
    response.headers["x-amzn-ErrorType"] = error_type
    response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
    return response


class LambdaApi:
    """A WSGI app speaking the Invoke API for a fixed set of functions."""

    def __init__(
        self,
        runtimes: dict[str, FunctionRuntime],
        *,
        region: str,
        aliases: dict[str, str] | None = None,
        local_handler: LocalHandler | None = None,
        async_workers: int = 8,
    ) -> None:
        self.runtimes = runtimes
        self.region = region
        self.aliases = dict(aliases or {})  # physical FunctionName -> logical ID
        self.local_handler = local_handler
        self._async = ThreadPoolExecutor(max_workers=async_workers, thread_name_prefix="lambda-event")

    def resolve(self, name: str) -> str | None:
        """The logical ID behind a function name or ARN, or None."""
        match = _ARN.match(unquote(name))
        if match is None:
            return None
        short = match.group("name")
        if short in self.runtimes:
            return short
        return self.aliases.get(short)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        return self.handle(request)(environ, start_response)

    def handle(self, request: Request) -> Response:  # noqa: PLR0911 - one answer per Invoke API outcome
        """Answer one API request."""
        if self.local_handler is not None and request.path.startswith("/_local/"):
            local = self.local_handler(request)
            if local is not None:
                return local
        raw_uri = str(request.environ.get("REQUEST_URI") or request.path).split("?", 1)[0]
        match = _INVOKE_PATH.match(raw_uri)
        if match is None or request.method != "POST":
            return _error(404, "UnknownOperationException", "Unknown operation")
        name = unquote(match.group("name"))
        logical_id = self.resolve(name)
        if logical_id is None:
            arn = f"arn:aws:lambda:{self.region}:{ACCOUNT_ID}:function:{name}"
            return _error(404, "ResourceNotFoundException", f"Function not found: {arn}")
        invocation_type = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type not in {"RequestResponse", "Event", "DryRun"}:
            return _error(400, "InvalidParameterValueException", "Unsupported invocation type")
        limit = (
            SYNC_REQUEST_LIMIT_BYTES if invocation_type == "RequestResponse" else ASYNC_REQUEST_LIMIT_BYTES
        )
        body = request.get_data(cache=False)
        if len(body) > limit:
            message = (
                f"{len(body)} byte payload is too large for the {invocation_type} invocation type"
                f" (limit {limit} bytes)"
            )
            return _error(413, "RequestEntityTooLargeException", message)
        try:
            payload = json.loads(body) if body.strip() else {}
        except ValueError:
            return _error(400, "InvalidRequestContentException", "Could not parse request body into json")
        if invocation_type == "DryRun":
            return Response(status=204)
        client_context = _client_context(request.headers.get("X-Amz-Client-Context"))
        runtime = self.runtimes[logical_id]
        invoked_arn = name if name.startswith("arn:") else runtime.spec.arn
        if invocation_type == "Event":
            self._async.submit(self._run_async, runtime, payload, client_context, invoked_arn)
            response = Response(status=202)
            response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
            return response
        outcome = runtime.invoke(
            payload,
            client_context=client_context,
            want_log=request.headers.get("X-Amz-Log-Type") == "Tail",
            invoked_arn=invoked_arn,
        )
        response = Response(outcome.payload, status=200, content_type="application/json")
        response.headers["x-amzn-RequestId"] = outcome.request_id
        response.headers["X-Amz-Executed-Version"] = "$LATEST"
        if outcome.function_error:
            response.headers["X-Amz-Function-Error"] = outcome.function_error
        if request.headers.get("X-Amz-Log-Type") == "Tail":
            response.headers["X-Amz-Log-Result"] = base64.b64encode(
                outcome.log_tail.encode()[-4096:]
            ).decode()
        return response

    @staticmethod
    def _run_async(runtime: FunctionRuntime, payload: Any, client_context: Any, invoked_arn: str) -> None:
        outcome = runtime.invoke(payload, client_context=client_context, invoked_arn=invoked_arn)
        if outcome.function_error:
            _log.warning("async invocation of %s failed (%s)", runtime.spec.logical_id, outcome.request_id)

    def close(self) -> None:
        """Wait for queued async invocations to finish starting, then stop the pool."""
        self._async.shutdown(wait=False, cancel_futures=True)


def _client_context(header: str | None) -> Any:
    if not header:
        return None
    try:
        return json.loads(base64.b64decode(header))
    except ValueError:
        return None
