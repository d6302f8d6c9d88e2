"""Events shaped exactly as AWS delivers them to the handlers, and a Lambda context stand-in."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

API_ID = "a1b2c3d4e5"
REGION = "eu-central-1"
ACCOUNT = "123456789012"


def http_event(
    method: str,
    path: str,
    *,
    query: Sequence[tuple[str, str]] | str = (),
    headers: Mapping[str, str] | None = None,
    cookies: Sequence[str] = (),
    body: bytes | str | None = None,
    base64_body: bool = True,
    source_ip: str = "203.0.113.7",
) -> dict[str, Any]:
    """An HTTP API payload format 2.0 event, as API Gateway builds it.

    Header names are lower-case, cookies move into `cookies`, duplicate query parameters are comma-joined
    in `queryStringParameters` (the raw string keeps them apart), and form bodies arrive base64-encoded.
    """
    raw_query = query if isinstance(query, str) else urlencode(list(query), quote_via=quote)
    parsed: dict[str, list[str]] = {}
    for part in raw_query.split("&") if raw_query else []:
        name, _, value = part.partition("=")
        parsed.setdefault(_unquote(name), []).append(_unquote(value))
    all_headers = {
        "accept": "*/*",
        "host": f"{API_ID}.execute-api.{REGION}.amazonaws.com",
        "user-agent": "Mozilla/5.0",
        "x-amzn-trace-id": "Root=1-65f0a1b2-0123456789abcdef01234567",
        "x-forwarded-for": source_ip,
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
    }
    all_headers.update({k.lower(): v for k, v in (headers or {}).items()})
    request_id = base64.b32encode(uuid.uuid4().bytes).decode()[:16]
    now = int(time.time() * 1000)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": all_headers,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": API_ID,
            "domainName": f"{API_ID}.execute-api.{REGION}.amazonaws.com",
            "domainPrefix": API_ID,
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": all_headers["user-agent"],
            },
            "requestId": request_id,
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
            "timeEpoch": now,
        },
        "isBase64Encoded": False,
    }
    if parsed:
        event["queryStringParameters"] = {k: ",".join(v) for k, v in parsed.items()}
    if cookies:
        event["cookies"] = list(cookies)
    if body is not None:
        raw = body.encode("utf-8") if isinstance(body, str) else body
        if base64_body:
            event["body"] = base64.b64encode(raw).decode("ascii")
            event["isBase64Encoded"] = True
        else:
            event["body"] = raw.decode("utf-8")
    return event


def _unquote(text: str) -> str:
    from urllib.parse import unquote_plus

    return unquote_plus(text, errors="replace")


def form_body(fields: Iterable[tuple[str, str]], *, encoding: str = "utf-8") -> bytes:
    """An application/x-www-form-urlencoded body, percent-encoded in `encoding`."""
    return urlencode(list(fields), encoding=encoding).encode("ascii")


def form_post(
    path: str,
    fields: Iterable[tuple[str, str]],
    *,
    query: Sequence[tuple[str, str]] = (),
    charset: str | None = None,
    encoding: str = "utf-8",
) -> dict[str, Any]:
    """A browser or Bitrix24 form POST as API Gateway delivers it (base64 body)."""
    content_type = "application/x-www-form-urlencoded" + (f"; charset={charset}" if charset else "")
    body = form_body(fields, encoding=encoding)
    return http_event(
        "POST",
        path,
        query=query,
        headers={"content-type": content_type, "content-length": str(len(body))},
        body=body,
    )


def sqs_event(bodies: Sequence[str | Mapping[str, Any]], *, queue: str = "RefreshQueue") -> dict[str, Any]:
    """An SQS batch as Lambda's event source mapping delivers it."""
    records = []
    for body in bodies:
        text = body if isinstance(body, str) else json.dumps(body)
        records.append(
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": "AQEB" + uuid.uuid4().hex,
                "body": text,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": str(int(time.time() * 1000)),
                    "SenderId": "AROAEXAMPLE:RefreshFunction",
                    "ApproximateFirstReceiveTimestamp": str(int(time.time() * 1000)),
                },
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}",
                "awsRegion": REGION,
            }
        )
    return {"Records": records}


def scheduler_event() -> dict[str, Any]:
    """What EventBridge Scheduler (SAM ScheduleV2 without Input) passes: an empty JSON object."""
    return {}


@dataclass
class FakeContext:
    """The attributes of the Lambda context object the handlers and Powertools read."""

    function_name: str = "TestFunction"
    memory_limit_in_mb: int = 512
    remaining_ms: int = 60_000
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"

    @property
    def invoked_function_arn(self) -> str:
        """The ARN the function was invoked by."""
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left in this invocation."""
        return self.remaining_ms
