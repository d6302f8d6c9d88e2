"""HttpApi handlers: echo the event, or answer in the shape the query asks for."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

CALLS = {"count": 0}


def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Answer the received event as JSON, plus what the runtime told us."""
    CALLS["count"] += 1
    body = {
        "event": event,
        "function_name": context.function_name,
        "calls": CALLS["count"],
        "env": {
            key: os.environ.get(key) for key in ("LOCAL_MODE", "APP_ENV", "FAKE_TABLE", "AWS_ENDPOINT_URL")
        },
    }
    return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": json.dumps(body)}


ANSWERS: dict[str, Any] = {
    "redirect": {
        "statusCode": 302,
        "headers": {"Location": "https://example.invalid/next?x=1", "Cache-Control": "no-store"},
        "cookies": ["a=1; Path=/; HttpOnly", "__Host-b24-oauth=xyz; Secure; Path=/; SameSite=Lax"],
    },
    "binary": {
        "statusCode": 201,
        "headers": {"content-type": "application/octet-stream"},
        "body": base64.b64encode(bytes(range(256))).decode(),
        "isBase64Encoded": True,
    },
    "string": "plain words",
    "dict": {"hello": "world"},
    "teapot": {"statusCode": 418, "body": "short and stout", "headers": {"X-Count": 3}},
    "malformed": {"statusCode": "two hundred"},
    "multi": {"statusCode": 200, "body": "", "multiValueHeaders": {"X-Multi": ["a", "b"]}},
}


def shaped(event: dict[str, Any], context: Any) -> Any:
    """Answer in the shape named by ?case=... (or fail with a token in a local variable)."""
    case = (event.get("queryStringParameters") or {}).get("case", "")
    if case == "boom":
        refresh_token = "rt-SECRET-do-not-leak"
        raise RuntimeError(f"upstream refused {len(refresh_token)}")
    return ANSWERS.get(case, {"statusCode": 204})
