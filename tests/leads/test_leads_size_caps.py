"""Size caps on a lead read (issue 12 point 4): the query a caller sends and the batch body built from it.

A lead filter is repeated in each of the 50 chained commands of a batch and URL-encoded there (a list
item `"a"` becomes `filter[@F][123]=a&`), so a query grows about 260 times on its way to Bitrix24: a
4.8 MB payload became one 230 MiB batch request with a 689 MiB peak. The query is capped before any
I/O, and the REST client refuses a body over its cap without sending it.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from typing import Any

import pytest

from b24connector.bitrix24.errors import RequestTooLarge
from b24connector.bitrix24.listing import FastLister
from b24connector.bitrix24.rest import MAX_REQUEST_BYTES
from b24connector.leads import (
    MAX_QUERY_BYTES,
    CursorCodec,
    LeadsReader,
    LeadsRefusal,
    OpenPortal,
    error_for,
    parse_request,
)
from tests.bitrix24.fakes import FakeCrm, FakeTime, make_client, make_portal

MEMBER = "a223c6b3710f85df22e9377d6c4f7553"


def _normalize(domain: str) -> str:
    return domain


def _query_bytes(select: list[str], filter_: dict[str, Any]) -> int:
    query = {"select": select, "filter": filter_}
    return len(json.dumps(query, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _shapes(budget: int) -> dict[str, dict[str, Any]]:
    """Filters of about `budget` bytes in the shapes that grow most once URL-encoded into a batch."""
    items = max(1, budget // 4 // 8)
    chars = max(1, budget // 8 // 3)
    return {
        "short list items": {f"@UF_CRM_{k}": ["a"] * min(items, 500) for k in range(8)},
        "three-byte text": {f"%UF_CRM_{k}": "€" * min(chars, 1000) for k in range(8)},
        "quotes": {f"%UF_CRM_{k}": '"' * min(budget // 16, 1000) for k in range(8)},
    }


class _Portals:
    def open(self, *, member_id: str | None, domain: str | None, deadline: float | None) -> OpenPortal:
        return OpenPortal(MEMBER, make_portal())


def _read(payload: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    """(answer, peak traced bytes, largest body sent) of one read through the real lister and client."""
    crm = FakeCrm(list(range(1, 30)))
    fake_time = FakeTime()
    reader = LeadsReader(
        _Portals(),
        FastLister(make_client(crm.transport, fake_time), sleep=fake_time.sleep, rand=lambda: 0.5),
        CursorCodec(lambda: b"k" * 32),
    )
    tracemalloc.start()
    try:
        try:
            answer = reader.read(parse_request(payload, _normalize)).answer()
        except LeadsRefusal as exc:
            answer = exc.answer()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    sent = max((len(s.body) for s in crm.transport.sent), default=0)
    return answer, peak, sent


def test_an_oversized_query_is_refused_quickly_in_bounded_memory() -> None:
    # 200 KB of short list items: about 50 MB of batch body before the cap (4.8 MB made 230 MiB)
    filter_ = {f"@UF_CRM_{k}": ["a"] * 500 for k in range(50)}
    payload = {"member_id": MEMBER, "filter": filter_, "select": ["*"], "limit": 20_000}
    assert _query_bytes(["*"], filter_) > MAX_QUERY_BYTES
    started = time.perf_counter()
    answer, peak, sent = _read(payload)
    elapsed = time.perf_counter() - started
    assert answer["error"]["code"] == "INVALID_REQUEST", answer
    assert sent == 0  # nothing reached Bitrix24
    assert peak < 4 * 1024 * 1024, peak
    assert elapsed < 2.0


def test_the_issue_payload_is_refused_with_a_small_peak() -> None:
    # The hostile review's 4.8 MB payload: 50 keys of 500 strings of ~190 characters.
    filter_ = {f"%UF_CRM_{k}": ["x" * 190] * 500 for k in range(50)}
    assert _query_bytes([], filter_) > 4_800_000
    answer, peak, sent = _read({"member_id": MEMBER, "filter": filter_})
    assert answer["error"]["code"] == "INVALID_REQUEST"
    assert (sent, peak < 16 * 1024 * 1024) == (0, True), peak


@pytest.mark.parametrize("shape", ["short list items", "three-byte text", "quotes"])
def test_a_query_at_the_cap_builds_batches_under_the_body_cap(shape: str) -> None:
    filter_ = _shapes(MAX_QUERY_BYTES - 200)[shape]
    assert MAX_QUERY_BYTES // 2 < _query_bytes(["*"], filter_) <= MAX_QUERY_BYTES
    answer, _, sent = _read({"member_id": MEMBER, "filter": filter_, "select": ["*"], "limit": 20_000})
    assert "leads" in answer, answer
    assert 0 < sent <= MAX_REQUEST_BYTES


def test_the_rest_client_refuses_a_body_over_its_cap_without_sending() -> None:
    crm = FakeCrm([1])
    client = make_client(crm.transport, FakeTime(), max_request_bytes=64 * 1024)
    with pytest.raises(RequestTooLarge):
        client.call(make_portal(), "crm.lead.list", {"filter": {"%TITLE": "x" * 70_000}})
    assert crm.transport.sent == []


def test_a_batch_too_large_for_the_client_is_the_callers_invalid_request() -> None:
    answer = error_for(RequestTooLarge("REQUEST_TOO_LARGE", "too large")).answer()
    assert answer["error"]["code"] == "INVALID_REQUEST"
