"""Socket-free fakes for the Bitrix24 protocol tests: a scripted requests adapter and a fake CRM portal.

The fakes answer the way the fact sheet says Bitrix24 does (envelopes of 4.2, errors of 4.3, batch
containers as PHP arrays in 5.3, `$result[..]` references to a missing row substituted by "").
"""

from __future__ import annotations

import bisect
import json
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, parse_qsl

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from b24connector.bitrix24.portal_context import PortalContext
from b24connector.bitrix24.rest import RestClient
from b24connector.portals import PortalPolicy
from b24connector.settings import DEFAULT_PORTAL_SUFFIXES
from tests.support.pacing import NoPacing

PORTAL = "acme.bitrix24.com"
ENDPOINT = f"https://{PORTAL}/rest/"
ACCESS_TOKEN = "ydtj8pho532wydb5ixk78ol7uqlb7sch"
FRESH_TOKEN = "fr35h4cc355t0k3nfr35h4cc355t0k3n"


@dataclass
class Sent:
    """One request the fake transport received."""

    method: str
    url: str
    body: bytes
    headers: Mapping[str, str]
    timeout: Any

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}


Handler = Callable[[Sent], "Reply"]


@dataclass
class Reply:
    """A scripted answer: status, JSON (or raw body) and headers; or an exception to raise."""

    status: int = 200
    payload: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    raises: BaseException | None = None
    raw: Any = None  # a file-like body read as a stream (read1/read), instead of payload/body


class FakeTransport(BaseAdapter):
    """A requests adapter that records every request and answers from a script or a handler."""

    def __init__(self, handler: Handler | None = None) -> None:
        super().__init__()
        self.script: deque[Reply] = deque()
        self.handler = handler
        self.sent: list[Sent] = []

    def queue(self, *replies: Reply) -> FakeTransport:
        self.script.extend(replies)
        return self

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        raw = request.body or b""
        body = raw.encode() if isinstance(raw, str) else raw
        sent = Sent(
            method=request.method or "",
            url=request.url or "",
            body=body,
            headers=dict(request.headers),
            timeout=kwargs.get("timeout"),
        )
        self.sent.append(sent)
        if self.script:
            reply = self.script.popleft()
        elif self.handler is not None:
            reply = self.handler(sent)
        else:
            raise AssertionError(f"unexpected request to {sent.url}")
        if reply.raises is not None:
            raise reply.raises
        response = requests.Response()
        response.status_code = reply.status
        if reply.raw is not None:
            response.raw = reply.raw
        elif reply.body is not None:
            response._content = reply.body
        elif reply.payload is not None:
            response._content = json.dumps(reply.payload).encode()
            reply.headers.setdefault("Content-Type", "application/json")
        else:
            response._content = b""
        response.headers = CaseInsensitiveDict(reply.headers)
        response.url = sent.url
        response.request = request
        return response

    def close(self) -> None:
        """Nothing to release."""


def session_with(transport: FakeTransport) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.mount("https://", transport)
    session.mount("http://", transport)
    return session


@dataclass
class FakeTime:
    """A deterministic clock: sleep advances both the monotonic and the wall clock."""

    now: float = 1_780_000_000.0
    mono: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.mono += seconds
        self.now += seconds


def make_client(
    transport: FakeTransport, fake_time: FakeTime, *, rand: Callable[[], float] = lambda: 1.0, **kwargs: Any
) -> RestClient:
    return RestClient(
        PortalPolicy(DEFAULT_PORTAL_SUFFIXES),
        session=session_with(transport),
        pacer=kwargs.pop("pacer", NoPacing()),
        sleep=fake_time.sleep,
        rand=rand,
        monotonic=fake_time.monotonic,
        clock=fake_time.time,
        **kwargs,
    )


def make_portal(**kwargs: Any) -> PortalContext:
    return PortalContext(
        kwargs.pop("client_endpoint", ENDPOINT), kwargs.pop("access_token", ACCESS_TOKEN), **kwargs
    )


def time_block(now: float, reset_at: float | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {
        "start": now,
        "finish": now + 0.01,
        "duration": 0.01,
        "processing": 0.005,
        "date_start": "2026-05-14T10:26:32+02:00",
        "date_finish": "2026-05-14T10:26:33+02:00",
        "operating": 0.01,
    }
    if reset_at is not None:
        block["operating_reset_at"] = reset_at
    return block


# --- a fake CRM portal that understands list and batch calls ----------------------------------------

_SEGMENT = re.compile(r"\[([^\]]*)\]")


def php_parse(query: str) -> dict[str, Any]:
    """Nested params from a PHP-style query (enough of parse_str for these tests)."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        base, _, rest = key.partition("[")
        path = [base, *_SEGMENT.findall("[" + rest)] if rest else [base]
        node = root
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _lists(v) for k, v in node.items()}
    if converted and list(converted) == [str(i) for i in range(len(converted))]:
        return list(converted.values())
    return converted


_REFERENCE = re.compile(r"^\$result\[([^\]]+)\]((?:\[[^\]]*\])+)$")


class FakeCrm:
    """Leads with given IDs behind crm.lead.list / crm.item.list / batch, counting requests and pages.

    `sub_errors` maps (batch number, command id) to an error envelope that sub-call answers with;
    with halt=1 the batch stops there, as Bitrix24 does.
    """

    def __init__(self, ids: list[int], *, missing_reference: str = "") -> None:
        self.ids = sorted(ids)
        self.requests = 0
        self.count_pages = 0
        self.pages = 0
        self.batches: list[dict[str, str]] = []
        self.missing_reference = missing_reference
        self.sub_errors: dict[tuple[int, str], dict[str, str]] = {}
        self.replies: deque[Reply] = deque()  # whole-request answers to give before serving normally
        self.junk_rows = 0  # rows served to sub-calls whose reference pointed at a missing row
        self.transport = FakeTransport(self.handle)
        self._lock = threading.Lock()

    def rows(self, method: str, params: Mapping[str, Any]) -> Any:
        self.pages += 1
        start = int(params.get("start", 0))
        if start >= 0:
            self.count_pages += 1
        id_field = "id" if method == "crm.item.list" else "ID"
        order = params.get("order", {})
        descending = str(order.get(id_field, "ASC")).upper() == "DESC"
        low, high = 0, len(self.ids)
        for key, raw in dict(params.get("filter", {})).items():
            if raw == "" or key not in {f">{id_field}", f"<{id_field}"}:
                # An empty value drops the condition (the emulator's strictest reading); other fields
                # match every fake lead.
                continue
            if key == f">{id_field}":
                low = max(low, bisect.bisect_right(self.ids, int(raw)))
            else:
                high = min(high, bisect.bisect_left(self.ids, int(raw)))
        selected = self.ids[low:high] if low < high else []
        if descending:
            selected = selected[::-1]
        page = selected[max(start, 0) : max(start, 0) + 50]
        if method == "crm.item.list":
            return {"items": [{"id": i, "title": f"Lead {i}"} for i in page]}
        return [{"ID": str(i), "TITLE": f"Lead {i}"} for i in page]

    def _resolve(self, value: Any, results: Mapping[str, Any]) -> tuple[Any, bool]:
        if isinstance(value, dict):
            pairs = {k: self._resolve(v, results) for k, v in value.items()}
            return {k: v for k, (v, _) in pairs.items()}, any(m for _, m in pairs.values())
        if isinstance(value, list):
            items = [self._resolve(v, results) for v in value]
            return [v for v, _ in items], any(m for _, m in items)
        match = _REFERENCE.match(value) if isinstance(value, str) else None
        if not match:
            return value, False
        node: Any = results.get(match.group(1))
        for part in _SEGMENT.findall(match.group(2)):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                return self.missing_reference, True
        return node, False

    def handle(self, sent: Sent) -> Reply:
        with self._lock:
            self.requests += 1
            number = self.requests
            if self.replies:
                return self.replies.popleft()
        method = sent.url.rsplit("/", 1)[1]
        body = sent.json()
        assert body.pop("auth") == ACCESS_TOKEN
        if method != "batch":
            return Reply(payload={"result": self.rows(method, body), "time": time_block(0)})
        with self._lock:
            self.batches.append(dict(body["cmd"]))
        assert len(body["cmd"]) <= 50
        results: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for key, command in body["cmd"].items():
            error = self.sub_errors.get((number, key))
            if error is not None:
                errors[key] = error
                if body.get("halt"):
                    break
                continue
            sub_method, _, query = command.partition("?")
            params, missing = self._resolve(php_parse(query), results)
            results[key] = self.rows(sub_method, params)
            if missing:
                page = results[key]
                self.junk_rows += len(page["items"] if isinstance(page, dict) else page)
        return Reply(
            payload={
                "result": {
                    "result": results,
                    "result_error": errors or [],
                    "result_total": [],
                    "result_next": [],
                    "result_time": {k: time_block(0) for k in results} or [],
                },
                "time": time_block(0),
            }
        )


def drain(iterator: Iterator[Any]) -> list[Any]:
    return list(iterator)
