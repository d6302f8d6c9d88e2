"""An API Gateway HTTP API (payload format 2.0) in front of the template's functions.

Fidelity choices, each from AWS's documented or observed behaviour:
- Request bodies are handed over as UTF-8 text only for ``text/*``, ``application/json``,
  ``application/xml`` and ``application/javascript``; every other body, including
  ``application/x-www-form-urlencoded`` and a body without a Content-Type, arrives base64-encoded
  with ``isBase64Encoded: true`` (HTTP APIs have no binaryMediaTypes setting).
- The Cookie header is removed from ``headers`` and split into the ``cookies`` array; duplicate
  headers and duplicate query parameters are joined with commas.
- A function error (or a malformed answer) becomes 500 ``{"message":"Internal Server Error"}``;
  no route becomes 404 ``{"message":"Not Found"}``; a body over 10 MB becomes 413.
- A result without ``statusCode`` is inferred as API Gateway does: 200, application/json, with a
  string result as the body verbatim and anything else serialised to JSON.
- ``multiValueHeaders`` is a payload-1.0 field: format 2.0 ignores it, so do we (with a warning).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from werkzeug.wrappers import Request, Response

from local_stack.runtime import SYNC_REQUEST_LIMIT_BYTES, InvocationResult
from local_stack.template import Route

_log = logging.getLogger("local_stack.http_api")

PAYLOAD_LIMIT_BYTES = 10 * 1024 * 1024
TEXT_CONTENT_TYPES = ("application/json", "application/xml", "application/javascript")

Invoke = Callable[[str, dict[str, Any]], InvocationResult]
LocalHandler = Callable[[Request], Response | None]


def is_text_content_type(content_type: str | None) -> bool:
    """Whether API Gateway hands this body over as text (else base64)."""
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type.startswith("text/") or media_type in TEXT_CONTENT_TYPES


@dataclass(frozen=True, slots=True)
class _CompiledRoute:
    route: Route
    pattern: re.Pattern[str] | None
    names: tuple[str, ...]
    literal_length: int
    greedy: bool


def _compile(route: Route) -> _CompiledRoute:
    if route.path == "$default":
        return _CompiledRoute(route, None, (), -1, True)
    regex = ""
    names: list[str] = []
    greedy = False
    for part in re.split(r"(\{[^}]+\})", route.path):
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            greedy = greedy or name.endswith("+")
            names.append(name.removesuffix("+"))
            regex += "(.+)" if name.endswith("+") else "([^/]+)"
        else:
            regex += re.escape(part)
    literal = len(re.sub(r"\{[^}]+\}", "", route.path))
    return _CompiledRoute(route, re.compile(f"^{regex}$"), tuple(names), literal, greedy)


class RouteTable:
    """API Gateway's route selection: the most specific match; ANY and $default as fallbacks."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes = [_compile(route) for route in routes]

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route for this request and its path parameters, or None."""
        best: tuple[tuple[int, int, int], Route, dict[str, str]] | None = None
        for compiled in self._routes:
            route = compiled.route
            if route.method not in {method, "ANY"}:
                continue
            params: dict[str, str] = {}
            if compiled.pattern is not None:
                found = compiled.pattern.match(path)
                if found is None:
                    continue
                params = dict(zip(compiled.names, found.groups(), strict=True))
            # Any path beats $default, longer literal text beats parameters, greedy comes last, and a
            # named method beats ANY.
            rank = (
                0 if compiled.pattern is None else 1,
                compiled.literal_length - 1000 * compiled.greedy,
                int(route.method != "ANY"),
            )
            if best is None or rank > best[0]:
                best = (rank, route, params)
        return None if best is None else (best[1], best[2])


def _json_response(status: int, message: str, request_id: str) -> Response:
    response = Response(json.dumps({"message": message}), status=status, content_type="application/json")
    response.headers["apigw-requestid"] = request_id
    return response


def _request_id() -> str:
    return base64.b64encode(secrets.token_bytes(10)).decode()


def build_event(
    request: Request, route: Route, path_params: dict[str, str], request_id: str
) -> dict[str, Any]:
    """The HttpApi payload-2.0 event for this request."""
    environ = request.environ
    raw_uri = str(environ.get("REQUEST_URI") or environ.get("RAW_URI") or request.path)
    raw_path = raw_uri.split("?", 1)[0]
    raw_query = str(environ.get("QUERY_STRING", ""))
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in request.headers.items():
        lowered = name.lower()
        if lowered == "cookie":
            # Cookie pairs never contain ";" or "," (RFC 6265), and repeated Cookie headers arrive
            # comma-joined, so both separate cookies.
            cookies.extend(part.strip() for part in re.split(r"[;,]", value) if part.strip())
            continue
        headers[lowered] = f"{headers[lowered]},{value}" if lowered in headers else value
    source_ip = str(environ.get("REMOTE_ADDR", "127.0.0.1"))
    host = headers.get("host", f"{environ.get('SERVER_NAME')}:{environ.get('SERVER_PORT')}")
    headers.setdefault("x-forwarded-for", source_ip)
    headers.setdefault("x-forwarded-port", str(environ.get("SERVER_PORT", "")))
    headers.setdefault("x-forwarded-proto", "http")
    headers.setdefault("x-amzn-trace-id", f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}")
    now = datetime.now(UTC)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": host,
            "domainPrefix": host.split(".", 1)[0],
            "http": {
                "method": request.method,
                "path": raw_path,
                "protocol": str(environ.get("SERVER_PROTOCOL", "HTTP/1.1")),
                "sourceIp": source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": route.route_key,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if raw_query:
        query: dict[str, str] = {}
        for key, value in parse_qsl(raw_query, keep_blank_values=True):
            query[key] = f"{query[key]},{value}" if key in query else value
        event["queryStringParameters"] = query
    if path_params:
        event["pathParameters"] = path_params
    body = request.get_data(cache=False)
    if body:
        if is_text_content_type(request.headers.get("content-type")):
            event["body"] = body.decode("utf-8", errors="replace")
        else:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
    return event


def build_response(result: Any, request_id: str) -> Response:
    """The HTTP answer for a function's payload-2.0 result (raises ValueError when malformed)."""
    if not isinstance(result, dict) or "statusCode" not in result:
        body = result if isinstance(result, str) else json.dumps(result)
        response = Response(body, status=200, content_type="application/json")
        response.headers["apigw-requestid"] = request_id
        return response
    status = result["statusCode"]
    if isinstance(status, bool) or not isinstance(status, int | str) or not str(status).isdigit():
        raise ValueError("statusCode is not an integer")
    raw_body = result.get("body")
    if raw_body is None:
        payload = b""
    elif result.get("isBase64Encoded"):
        payload = base64.b64decode(str(raw_body))
    else:
        payload = (raw_body if isinstance(raw_body, str) else json.dumps(raw_body)).encode()
    response = Response(payload, status=int(status))
    response.headers.remove("content-type")
    for name, value in (result.get("headers") or {}).items():
        response.headers[str(name)] = _header_value(value)
    if result.get("multiValueHeaders"):
        _log.warning("multiValueHeaders is ignored by HttpApi payload format 2.0 (use headers/cookies)")
    for cookie in result.get("cookies") or []:
        response.headers.add("Set-Cookie", str(cookie))
    response.headers["apigw-requestid"] = request_id
    return response


def _header_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class HttpApiFront:
    """The WSGI app: route, build the event, invoke, map the result back."""

    def __init__(
        self, routes: Iterable[Route], invoke: Invoke, local_handler: LocalHandler | None = None
    ) -> None:
        self.routes = RouteTable(routes)
        self.invoke = invoke
        self.local_handler = local_handler

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        response = self.handle(request)
        return response(environ, start_response)

    def handle(self, request: Request) -> Response:  # noqa: PLR0911 - one answer per API Gateway outcome
        """Answer one request the way API Gateway would."""
        request_id = _request_id()
        if self.local_handler is not None and request.path.startswith("/_local/"):
            local = self.local_handler(request)
            if local is not None:
                return local
        if (request.content_length or 0) > PAYLOAD_LIMIT_BYTES:
            return _json_response(413, "Request Entity Too Large", request_id)
        matched = self.routes.match(request.method, request.path)
        if matched is None:
            return _json_response(404, "Not Found", request_id)
        route, params = matched
        request.max_content_length = PAYLOAD_LIMIT_BYTES
        try:
            event = build_event(request, route, params, request_id)
        except Exception:  # werkzeug's RequestEntityTooLarge for chunked bodies over the limit
            return _json_response(413, "Request Entity Too Large", request_id)
        if len(json.dumps(event)) > SYNC_REQUEST_LIMIT_BYTES:
            return _json_response(413, "Request Entity Too Large", request_id)
        outcome = self.invoke(route.function, event)
        if outcome.function_error:
            return _json_response(500, "Internal Server Error", request_id)
        try:
            return build_response(outcome.json(), request_id)
        except (ValueError, TypeError, AttributeError):
            _log.warning("%s answered a malformed HttpApi response", route.function)
            return _json_response(500, "Internal Server Error", request_id)
