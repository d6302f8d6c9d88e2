"""Helpers of the end-to-end tests: emulator admin calls and raw DynamoDB reads against the local stack."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import boto3
import requests

from local_stack import LocalStack
from local_stack.demo import plain_item

HTTP_TIMEOUT = 30.0


def admin(stack: LocalStack, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call the emulator's admin API (GET /stats, POST /reset, POST /send-install, ...); its JSON."""
    response = requests.request(method, f"{stack.emulator_admin_url}{path}", json=body, timeout=HTTP_TIMEOUT)
    response.raise_for_status()
    return response.json()


def reset_emulator_stats(stack: LocalStack) -> None:
    """Zero the emulator's counters (REST requests, COUNT pages, token calls) and its rate bucket."""
    admin(stack, "POST", "/reset")


def emulator_stats(stack: LocalStack) -> dict[str, Any]:
    """The emulator's counters since the last reset."""
    stats: dict[str, Any] = admin(stack, "GET", "/stats")
    return stats


def dynamodb(stack: LocalStack) -> Any:
    """A boto3 DynamoDB client on the stack's moto server."""
    return boto3.client(
        "dynamodb",
        endpoint_url=stack.aws_endpoint_url,
        region_name=stack.aws_region,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def portals_table(stack: LocalStack) -> str:
    """The physical name of PortalsTable."""
    return stack.running_info().tables["PortalsTable"]


def raw_portal_item(stack: LocalStack, member_id: str | None = None) -> dict[str, Any] | None:
    """The portal's item exactly as DynamoDB returns it (consistent read), or None."""
    answer = dynamodb(stack).get_item(
        TableName=portals_table(stack),
        Key={"member_id": {"S": member_id or stack.member_id}},
        ConsistentRead=True,
    )
    item = answer.get("Item")
    return dict(item) if item is not None else None


def portal_item(stack: LocalStack, member_id: str | None = None) -> dict[str, Any] | None:
    """The portal's item as plain Python values (N -> int, B -> bytes), or None."""
    raw = raw_portal_item(stack, member_id)
    return plain_item(raw) if raw is not None else None


def all_portal_items(stack: LocalStack) -> list[dict[str, Any]]:
    """Every item of PortalsTable, raw, sorted by member_id (to compare before/after)."""
    client = dynamodb(stack)
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": portals_table(stack), "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        items.extend(page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return sorted(items, key=lambda item: item["member_id"]["S"])


def install_app(stack: LocalStack) -> dict[str, Any]:
    """Install the app as the portal does for an API-only app (ONAPPINSTALL), applied from the journal."""
    answer = admin(stack, "POST", "/send-install", {"url": f"{stack.api_url}/events", "kind": "event"})
    assert answer["status"] == 200, answer["body"][:300]
    drain = stack.drain_queues()  # LifecycleFunction, as the SQS event source would run it
    assert drain.failed == 0, drain.as_dict()
    item = portal_item(stack)
    assert item is not None
    assert item["health"] == "active"
    return item


CHROMIUM_MISSING = (
    "Chromium is missing: the browser tests need Debian's chromium package "
    "(apt-get install -y chromium, or set CHROMIUM_PATH); .ci/run installs it."
)


def find_chromium(
    env: Mapping[str, str],
    which: Callable[[str], str | None] = shutil.which,
    default: str = "/usr/bin/chromium",
) -> str | None:
    """CHROMIUM_PATH when set (and then only it), else `chromium` on PATH, else Debian's path; None if absent."""
    explicit = env.get("CHROMIUM_PATH")
    candidates = [explicit] if explicit else [which("chromium"), default]
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def chromium_missing_means_failure(env: Mapping[str, str]) -> bool:
    """In CI (CI set to anything but false/0) a missing Chromium fails the browser tests; locally they skip."""
    return env.get("CI", "").strip().lower() not in ("", "0", "false", "no")
