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


def shaped(event: dict[str, Any], context: Any) -> Any:
    """Answer in the shape named by ?case=..."""
    case = (event.get("queryStringParameters") or {}).get("case")
    if case == "redirect":
        return {
            "statusCode": 302,
            "headers": {"Location": "https://example.invalid/next?x=1", "Cache-Control": "no-store"},
            "cookies": ["a=1; Path=/; HttpOnly", "__Host-b24-oauth=xyz; Secure; Path=/; SameSite=Lax"],
        }
    if case == "binary":
        return {
            "statusCode": 201,
            "headers": {"content-type": "application/octet-stream"},
            "body": base64.b64encode(bytes(range(256))).decode(),
            "isBase64Encoded": True,
        }
    if case == "string":
        return "plain words"
    if case == "dict":
        return {"hello": "world"}
    if case == "teapot":
        return {"statusCode": 418, "body": "short and stout", "headers": {"X-Count": 3}}
    if case == "malformed":
        return {"statusCode": "two hundred"}
    if case == "boom":
        refresh_token = "rt-SECRET-do-not-leak"  # noqa: S105 - the test checks it never reaches the client
        raise RuntimeError(f"upstream refused {len(refresh_token)}")
    return {"statusCode": 204}
