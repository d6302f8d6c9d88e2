"""Containers and faults for the fault tests: a cold start, botocore errors injected per operation, and a
child process standing in for another Lambda container."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.support.rig import invoke


def cold_start() -> None:
    """Forget every per-container cache (wiring, decrypted tokens, secrets): the next call is a cold start."""
    from aws_lambda_powertools.utilities import parameters

    from b24connector import wiring

    wiring.reset()
    parameters.clear_caches()


class _Body:
    """The `raw` of a botocore AWSResponse built in a test."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


@dataclass
class InjectedFault:
    """Answers matching requests of one botocore client with an error until `remaining` runs out."""

    status: int
    error_code: str
    remaining: int = 1_000_000
    body_contains: bytes = b""
    seen: int = 0

    def __call__(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        body = request.body if isinstance(request.body, bytes) else str(request.body or "").encode()
        if self.remaining <= 0 or self.body_contains not in body:
            return None
        self.remaining -= 1
        self.seen += 1
        payload = json.dumps({"__type": self.error_code, "message": "injected by the test"}).encode()
        headers = {"x-amzn-requestid": "injected", "content-type": "application/x-amz-json-1.0"}
        return AWSResponse(request.url, self.status, headers, _Body(payload))


def inject(client: Any, operation: str, fault: InjectedFault) -> InjectedFault:
    """Register `fault` on a botocore client's before-send event for `operation` (e.g. dynamodb.UpdateItem)."""
    client.meta.events.register_first(f"before-send.{operation}", fault)
    return fault


def leads_process(payload: dict[str, Any], callers: int, ready: Any, go: Any, results: Any) -> None:
    """Child-process entry (a separate Lambda container): `callers` threads invoke LeadsFunction together."""
    outcomes: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def call() -> None:
        answer = invoke("LeadsFunction", payload)
        entry = ("ok", answer["count"]) if "leads" in answer else ("error", answer["error"]["code"])
        with lock:
            outcomes.append(entry)

    ready.put(True)
    go.wait(120)
    pool = [threading.Thread(target=call) for _ in range(callers)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(120)
    results.put(outcomes)
