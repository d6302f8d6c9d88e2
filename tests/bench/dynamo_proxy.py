"""A loopback proxy in front of moto's server: per-item atomic DynamoDB writes, and call counting.

moto evaluates a ConditionExpression and applies the update in separate Python steps, so concurrent
requests on one item can both pass a condition or lose an increment (infra/local_stack/moto_process.py
measured it for conditional writes). The local stack runs plain moto; functions that hammer one
item from many processes (the shared pacing bucket) would then be judged on moto's races, not on
their own logic. (The local stack now serialises all DynamoDB calls itself; this proxy does it per
item.) Pointed at by AWS_ENDPOINT_URL[_DYNAMODB] of the functions: DynamoDB requests on the same
table and key run one at a time, everything else passes straight through.

With `serialize=False` it only counts: every AWS API call the functions make (by X-Amz-Target, e.g.
`DynamoDB_20120810.Query`, `TrentService.Decrypt`), and the items each Query/Scan read (ScannedCount)
per table, which is how the bench measures processes it cannot hook.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from werkzeug.wrappers import Request, Response

from tests.bench.loopback import LoopbackForwarder

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def _query_action(request: Request, body: bytes) -> str:
    # Query-protocol services name the operation in the form body (Action=...), not in a header.
    if request.mimetype != "application/x-www-form-urlencoded":
        return ""
    action = parse_qs(body.decode("utf-8", "replace")).get("Action", [""])[0]
    return f"query.{action}" if action else ""


class DynamoSerializingProxy(LoopbackForwarder):
    """Forwards to `upstream` (set after start when the upstream port is not known yet)."""

    def __init__(self, upstream: str | None = None, *, serialize: bool = True) -> None:
        self.upstream = upstream
        self.serialize = serialize
        self.calls: Counter[str] = Counter()
        self.items_read: Counter[str] = Counter()  # table -> ScannedCount summed over Query/Scan
        self._count_lock = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        super().__init__("dynamo-proxy", pool_connections=4)

    def reset_counts(self) -> None:
        """Forget what was counted so far."""
        with self._count_lock:
            self.calls.clear()
            self.items_read.clear()

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Calls by X-Amz-Target and items read by table, since the last reset."""
        with self._count_lock:
            return {"calls": dict(self.calls), "items_read": dict(self.items_read)}

    def _count(self, target: str, body: bytes, answer: bytes) -> None:
        operation = target.rsplit(".", 1)[-1]
        scanned = 0
        table = ""
        if target.startswith("DynamoDB_") and operation in {"Query", "Scan"}:
            try:
                table = str(json.loads(body or b"{}").get("TableName", ""))
                scanned = int(json.loads(answer or b"{}").get("ScannedCount", 0))
            except (ValueError, AttributeError):
                pass
        with self._count_lock:
            self.calls[target or "unknown"] += 1
            if table:
                self.items_read[table] += scanned

    def _lock_for(self, body: bytes) -> threading.Lock:
        try:
            document: Any = json.loads(body or b"{}")
        except ValueError:
            document = {}
        table = str(document.get("TableName", "")) if isinstance(document, dict) else ""
        key = json.dumps(document.get("Key"), sort_keys=True) if isinstance(document, dict) else ""
        with self._locks_guard:
            return self._locks.setdefault((table, key), threading.Lock())

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        body = request.get_data()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in {"host", "content-length"}}
        url = f"{self.upstream}{request.full_path.rstrip('?')}"
        target = request.headers.get("X-Amz-Target", "") or _query_action(request, body)
        if self.serialize and target.startswith("DynamoDB_"):
            with self._lock_for(body):
                upstream = self._http.request(request.method, url, data=body, headers=headers, timeout=60)
        else:
            upstream = self._http.request(request.method, url, data=body, headers=headers, timeout=60)
        self._count(target, body, upstream.content)
        response = Response(
            upstream.content,
            status=upstream.status_code,
            headers=[(k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP],
        )
        return response(environ, start_response)
