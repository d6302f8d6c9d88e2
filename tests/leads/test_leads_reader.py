"""LeadsReader: request validation, signed cursors, paging, size cap, error mapping (in-memory fakes)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from b24connector.bitrix24.errors import (
    AccessDenied,
    Bitrix24Error,
    InvalidGrant,
    OperationTimeLimit,
    QueryLimitExceeded,
    ServerError,
)
from b24connector.bitrix24.list_query import ListQuery, window_span
from b24connector.bitrix24.listing import FastLister, ListHead, ListPage
from b24connector.leads import (
    BATCH_ROWS,
    MAX_LIMIT,
    MAX_SPLIT,
    CursorCodec,
    CursorPosition,
    LeadsReader,
    LeadsRefusal,
    LeadsRequest,
    OpenPortal,
    ReadPlan,
    parse_request,
    row_bytes,
    split_points,
)
from b24connector.leads.cursor import MAC_LABEL
from b24connector.portals import InvalidPortal
from b24connector.vault.errors import (
    GrantNeedsReauth,
    PortalNotStored,
    RefreshThrottled,
    RefreshUnavailable,
    RefreshUnsettled,
)

KEY = b"k" * 32


def _signed(body: str) -> str:
    """The MAC a cursor body carries, computed as leads/cursor.py documents it (HMAC-SHA256 under KEY)."""
    mac = hmac.new(KEY, MAC_LABEL + body.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


HEAD_ROWS = 2_450


def normalize(raw: str) -> str:
    if not raw.endswith(".bitrix24.com"):
        raise InvalidPortal("not_allowed")
    return raw.lower()


class FakeLister:
    """Serves rows from memory with the fast list's contract: ID window, ascending IDs, limit."""

    def __init__(
        self, rows: list[dict[str, Any]], *, fail_after: int | None = None, error: Exception | None = None
    ):
        self.rows = rows
        self.calls: list[dict[str, Any]] = []
        self.fail_after = fail_after
        self.error = error

    def _iter(self, portal: Any, method: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.calls.append({"portal": portal, "method": method, **kwargs})
        for produced, row in enumerate(self._matching(kwargs)):
            if self.fail_after is not None and produced >= self.fail_after:
                assert self.error is not None
                raise self.error
            if kwargs.get("limit") is not None and produced >= kwargs["limit"]:
                return
            yield row
        if self.error is not None and self.fail_after is None:
            raise self.error

    def _matching(self, kwargs: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        after = kwargs.get("after_id", 0)
        flt: Mapping[str, Any] = kwargs.get("filter") or {}
        if ">ID" in flt:
            after = max(after, int(flt[">ID"]))
        before = kwargs.get("before_id")
        if "<ID" in flt:
            before = int(flt["<ID"]) if before is None else min(before, int(flt["<ID"]))
        for row in self.rows:
            rid = int(row["ID"])
            if rid <= after or (before is not None and rid >= before):
                continue
            if any(k not in {">ID", "<ID"} and row.get(k) != v for k, v in flt.items()):
                continue
            yield row

    def iter_list(self, portal: Any, query: ListQuery) -> Iterator[dict[str, Any]]:
        return self._iter(portal, query.method, parallel=False, **_keywords(query))

    def read_head(self, portal: Any, query: ListQuery) -> ListHead:
        """Like FastLister.read_head: one batch (at most 2,450 rows, at most `limit`) and the top ID."""
        kwargs = _keywords(query)
        self.calls.append({"portal": portal, "method": query.method, "head": True, **kwargs})
        if self.error is not None:
            raise self.error
        after = kwargs.get("after_id", 0)
        matching = list(self._matching(kwargs))
        head = matching[: min(kwargs.get("limit") or HEAD_ROWS, HEAD_ROWS)]
        exhausted = len(head) == len(matching)
        last = int(head[-1]["ID"]) if head else after
        density = len(head) / (last - after) if last > after else 1.0
        top = None if exhausted else int(matching[-1]["ID"])
        return ListHead(head, top, exhausted, density, last)

    def iter_list_parallel(self, portal: Any, query: ListQuery) -> Iterator[dict[str, Any]]:
        return self._iter(portal, query.method, parallel=True, **_keywords(query))

    def read_windows(self, portal: Any, query: ListQuery, **plan: Any) -> ListPage:
        """Like FastLister.read_windows: `batches` windows of window_span(density) IDs, an open tail."""
        kwargs = {**_keywords(query), **plan}
        self.calls.append({"portal": portal, "method": query.method, "windows": True, **kwargs})
        after, before, top = kwargs["after_id"], kwargs.get("before_id"), kwargs["top"]
        end = before - 1 if before is not None else top
        stop = max(after, min(end, after + kwargs["batches"] * window_span(kwargs["density"])))
        tail = before is None and stop >= end
        matching = list(self._matching({**kwargs, "before_id": None if tail else stop + 1}))
        limit = kwargs.get("limit")
        rows = matching if limit is None else matching[:limit]
        if self.fail_after is not None and len(rows) > self.fail_after:
            assert self.error is not None
            raise self.error
        seen = max(len([r for r in rows if int(r["ID"]) <= stop]), 1)
        density = seen / (stop - after) if stop > after else kwargs["density"]
        if len(rows) < len(matching):
            return ListPage(rows, int(rows[-1]["ID"]), False, density)
        exhausted = tail or (before is not None and stop >= before - 1)
        return ListPage(rows, max([stop] + [int(r["ID"]) for r in rows]), exhausted, density)


def _keywords(query: ListQuery) -> dict[str, Any]:
    """The query as the keywords the fake records and matches on."""
    return {
        "select": query.select,
        "filter": query.filter,
        "after_id": query.after_id,
        "before_id": query.before_id,
        "limit": query.limit,
    }


class FakePortals:
    def __init__(self, portals: dict[str, str], *, error: Exception | None = None) -> None:
        self.by_member = portals  # member_id -> domain
        self.error = error
        self.opened: list[tuple[str | None, str | None]] = []

    def open(self, *, member_id: str | None, domain: str | None, deadline: float | None) -> OpenPortal:
        self.opened.append((member_id, domain))
        if self.error is not None:
            raise self.error
        for mid, dom in self.by_member.items():
            if member_id == mid or domain == dom:
                return OpenPortal(mid, context=f"ctx:{mid}")
        raise PortalNotStored("no such portal")


def leads(n: int, start: int = 1, **extra: str) -> list[dict[str, Any]]:
    return [{"ID": str(i), "TITLE": f"Lead {i}", **extra} for i in range(start, start + n)]


def reader(rows: list[dict[str, Any]], **kwargs: Any) -> tuple[LeadsReader, FakeLister, FakePortals]:
    lister = FakeLister(rows)
    portals = FakePortals({"m1": "one.bitrix24.com", "m2": "two.bitrix24.com"})
    return LeadsReader(portals, lister, CursorCodec(lambda: KEY), **kwargs), lister, portals


def request(**payload: Any) -> LeadsRequest:
    return parse_request(payload, normalize)


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "member_id",
        {},
        {"member_id": "m1", "domain": "one.bitrix24.com"},
        {"member_id": ""},
        {"member_id": 5},
        {"member_id": "m 1"},
        {"domain": "evil.example.com"},
        {"domain": 7},
        {"member_id": "m1", "bogus": 1},
        {"member_id": "m1", "select": "TITLE"},
        {"member_id": "m1", "select": ["TITLE; DROP"]},
        {"member_id": "m1", "select": [1]},
        {"member_id": "m1", "select": ["F"] * 201},
        {"member_id": "m1", "filter": []},
        {"member_id": "m1", "filter": {"TITLE LIKE": "x"}},
        {"member_id": "m1", "filter": {"TITLE": {"nested": 1}}},
        {"member_id": "m1", "filter": {"TITLE": [{"a": 1}]}},
        {"member_id": "m1", "filter": {"TITLE": "x" * 1001}},
        {"member_id": "m1", "filter": {">ID": -1}},
        {"member_id": "m1", "filter": {">ID": "abc"}},
        {"member_id": "m1", "filter": {"<=ID": 1.5}},
        {"member_id": "m1", "filter": {"TITLE": float("nan")}},
        # PHP drops null keys (http_build_query): refused rather than silently widening the answer
        {"member_id": "m1", "filter": {"STATUS_ID": None}},
        {"member_id": "m1", "filter": {"@SOURCE_ID": ["WEB", None]}},
        {"member_id": "m1", "filter": {"!%=": "x"}},
        {"member_id": "m1", "filter": {f"F{i}": 1 for i in range(51)}},
        {"member_id": "m1", "order": {"ID": "DESC"}},
        {"member_id": "m1", "order": {"TITLE": "ASC"}},
        {"member_id": "m1", "order": {"ID": "ASC", "TITLE": "ASC"}},
        {"member_id": "m1", "order": "ID"},
        {"member_id": "m1", "limit": 0},
        {"member_id": "m1", "limit": MAX_LIMIT + 1},
        {"member_id": "m1", "limit": "10"},
        {"member_id": "m1", "limit": True},
        {"member_id": "m1", "limit": 10.0},
        {"member_id": "m1", "cursor": 5},
        {"member_id": "m1", "cursor": ""},
        {"member_id": "m1", "cursor": "x" * 2000},
        {"member_id": "m1", "split": 0},
        {"member_id": "m1", "split": MAX_SPLIT + 1},
        {"member_id": "m1", "split": True},
        {"member_id": "m1", "split": "4"},
        {"member_id": "m1", "split": 2.0},
    ],
)
def test_malformed_requests_are_invalid_request(payload: object) -> None:
    with pytest.raises(LeadsRefusal) as caught:
        parse_request(payload, normalize)
    assert caught.value.code == "INVALID_REQUEST"
    assert caught.value.answer()["error"]["code"] == "INVALID_REQUEST"


def test_a_full_request_is_normalized() -> None:
    parsed = request(
        domain="One.bitrix24.com",
        select=["TITLE", "TITLE", "STATUS_ID"],
        filter={"STATUS_ID": "NEW", ">=ID": "10", "@SOURCE_ID": ["WEB", "CALL"]},
        order={"id": "asc"},
        limit=MAX_LIMIT,
    )
    assert parsed.domain == "one.bitrix24.com"
    assert parsed.member_id is None
    assert parsed.select == ("ID", "TITLE", "STATUS_ID")  # ID added for the cursor, duplicates gone
    assert parsed.limit == MAX_LIMIT


@pytest.mark.parametrize(
    "key",
    [
        "!%=TITLE",
        "!%TITLE",
        "%=TITLE",
        "=%TITLE",
        "%TITLE",
        "!@STATUS_ID",
        "@STATUS_ID",
        "!=STATUS_ID",
        "!STATUS_ID",
    ],
)
def test_every_documented_filter_operator_is_accepted_and_passed_on(key: str) -> None:
    # crm.lead.list documents !%= (NOT LIKE) alongside the others
    value: Any = ["NEW"] if "@" in key else "Acme"
    parsed = request(member_id="m1", filter={key: value})
    assert dict(parsed.filter) == {key: value}
    lister = FakeLister(leads(3))
    service = LeadsReader(FakePortals({"m1": "one.bitrix24.com"}), lister, CursorCodec(lambda: KEY))
    service.read(parsed)
    assert lister.calls[-1]["filter"] == {key: value}


def test_null_filter_values_are_refused_with_a_clear_message() -> None:
    with pytest.raises(LeadsRefusal) as caught:
        request(member_id="m1", filter={"STATUS_ID": None})
    assert caught.value.code == "INVALID_REQUEST"
    assert "null" in caught.value.message


def test_defaults() -> None:
    parsed = request(member_id="m1")
    assert (parsed.select, dict(parsed.filter), parsed.limit, parsed.cursor) == ((), {}, 1000, None)


def test_query_digest_ignores_paging_but_not_the_query() -> None:
    base = request(member_id="m1", filter={"A": 1}).query_digest()
    assert request(member_id="m1", filter={"A": 1}, limit=5).query_digest() == base
    assert request(member_id="m1", filter={"A": 2}).query_digest() != base
    assert request(member_id="m1", filter={"A": 1}, select=["TITLE"]).query_digest() != base


# --- cursor -------------------------------------------------------------------------------------


def test_cursor_round_trip() -> None:
    codec = CursorCodec(lambda: KEY)
    position = CursorPosition("m1", b"q" * 16, 42)
    assert codec.decode(codec.encode(position)) == position


def _tamper(cursor: str, **changes: Any) -> str:
    body, _, mac = cursor.partition(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(changes)
    new_body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{new_body}.{mac}"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda c: _tamper(c, a=10_000),
        lambda c: _tamper(c, m="m2"),
        lambda c: c[:-2] + ("AA" if not c.endswith("AA") else "BB"),
        lambda c: c.replace(".", ""),
        lambda c: c + "=",
        lambda c: "!" + c,
        lambda c: c.partition(".")[0] + ".",
    ],
)
def test_edited_cursors_are_rejected(mangle: Any) -> None:
    codec = CursorCodec(lambda: KEY)
    cursor = codec.encode(CursorPosition("m1", b"q" * 16, 42))
    with pytest.raises(LeadsRefusal) as caught:
        codec.decode(mangle(cursor))
    assert caught.value.code == "INVALID_REQUEST"


def test_a_bounded_cursor_round_trip() -> None:
    codec = CursorCodec(lambda: KEY)
    position = CursorPosition("m1", b"q" * 16, 42, before_id=5_001)
    cursor = codec.encode(position)
    assert codec.decode(cursor) == position
    assert json.loads(base64.urlsafe_b64decode(cursor.partition(".")[0] + "==="))["v"] == 2


# Signed under b"k" * 32 by the codec as it was before the leads package (commit 9c8e01c): cursors
# callers hold must keep working across the restructure (same payload formats, same MAC label).
_EARLIER_CURSORS = {
    "eyJhIjo0MjAwLCJtIjoiYTIyM2M2YjM3MTBmODVkZjIyZTkzNzdkNmM0Zjc1NTMiLCJxIjoiQUFFQ0F3UUZCZ2NJQ1FvTERBME9EdyIsInYiOjF9"
    ".OvlzQdYTG43h7cSxDzcQq06hRnQ3L_IKNPnnWU3BiN4": None,
    "eyJhIjo0MjAwLCJiIjo5MDAxLCJtIjoiYTIyM2M2YjM3MTBmODVkZjIyZTkzNzdkNmM0Zjc1NTMiLCJxIjoiQUFFQ0F3UUZCZ2NJQ1FvTERBME9EdyIsInYiOjJ9"
    ".EwLl7_S0Vz7GPmV4040rMcWv-sU8wAH-RxiGP0zmQ5o": 9001,
}


@pytest.mark.parametrize(("cursor", "before_id"), list(_EARLIER_CURSORS.items()))
def test_cursors_issued_before_the_restructure_still_decode(cursor: str, before_id: int | None) -> None:
    codec = CursorCodec(lambda: b"k" * 32)
    expected = CursorPosition("a223c6b3710f85df22e9377d6c4f7553", bytes(range(16)), 4200, before_id)
    assert codec.decode(cursor) == expected
    assert codec.encode(expected) == cursor


@pytest.mark.parametrize(
    "mangle",
    [
        lambda c: _tamper(c, b=10**9),  # widen the part
        lambda c: _tamper(c, b=None),  # drop the bound
        lambda c: _tamper(c, v=1),  # pass it off as an unbounded cursor
    ],
)
def test_the_upper_bound_of_a_part_cannot_be_edited(mangle: Any) -> None:
    codec = CursorCodec(lambda: KEY)
    cursor = codec.encode(CursorPosition("m1", b"q" * 16, 42, before_id=5_001))
    with pytest.raises(LeadsRefusal) as caught:
        codec.decode(mangle(cursor))
    assert caught.value.code == "INVALID_REQUEST"


@pytest.mark.parametrize(
    "payload",
    [
        {"v": 1, "m": "m1", "q": "cXFxcXFxcXFxcXFxcXFxcQ", "a": 1, "b": 9},  # a bound the version denies
        {"v": 2, "m": "m1", "q": "cXFxcXFxcXFxcXFxcXFxcQ", "a": 1},  # a bounded version without a bound
        {"v": 2, "m": "m1", "q": "cXFxcXFxcXFxcXFxcXFxcQ", "a": 1, "b": -1},
        {"v": 2, "m": "m1", "q": "cXFxcXFxcXFxcXFxcXFxcQ", "a": 1, "b": True},
        {"v": 3, "m": "m1", "q": "cXFxcXFxcXFxcXFxcXFxcQ", "a": 1},
    ],
)
def test_correctly_signed_but_inconsistent_cursors_are_rejected(payload: dict[str, Any]) -> None:
    codec = CursorCodec(lambda: KEY)
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    mac = _signed(body)
    with pytest.raises(LeadsRefusal):
        codec.decode(f"{body}.{mac}")


def test_a_cursor_signed_with_another_key_is_rejected() -> None:
    cursor = CursorCodec(lambda: b"other-key").encode(CursorPosition("m1", b"q" * 16, 1))
    with pytest.raises(LeadsRefusal):
        CursorCodec(lambda: KEY).decode(cursor)


# --- paging -------------------------------------------------------------------------------------


def test_pages_cover_every_lead_once_in_order() -> None:
    # Given 23 leads and pages of 10
    rows = leads(23)
    service, lister, _ = reader(rows)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = service.read(request(member_id="m1", limit=10, **({"cursor": cursor} if cursor else {})))
        seen.extend(row["ID"] for row in page.leads)
        answer = page.answer()
        assert answer["count"] == len(page.leads)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    # Then every lead came once, in ID order, in three pages
    assert seen == [str(i) for i in range(1, 24)]
    assert pages == 3
    assert [call["after_id"] for call in lister.calls] == [0, 10, 20]
    assert all(call["limit"] == 11 for call in lister.calls)  # one extra row tells whether more follow


def test_exact_fit_ends_without_a_cursor() -> None:
    service, _, _ = reader(leads(10))
    page = service.read(request(member_id="m1", limit=10))
    assert len(page.leads) == 10
    assert page.next_cursor is None


def test_large_limits_read_whole_windows_and_small_ones_the_sequential_list() -> None:
    service, lister, _ = reader(leads(3))
    service.read(request(member_id="m1", limit=MAX_LIMIT))
    service.read(request(member_id="m1", limit=100))
    assert [(call.get("head"), call.get("parallel")) for call in lister.calls] == [
        (True, None),
        (None, False),
    ]


def test_a_large_page_ends_on_a_window_and_the_next_one_needs_no_head() -> None:
    # Given 100,000 leads with every tenth ID missing, read page by page at the largest limit
    rows = [row for row in leads(111_112) if int(row["ID"]) % 10][:100_000]
    service, lister, _ = reader(rows)
    first = service.read(request(member_id="m1", limit=MAX_LIMIT))
    # Then the first page is a head plus seven windows: whole batches, never more than the limit
    assert [("head" in call, call.get("batches")) for call in lister.calls] == [(True, None), (False, 7)]
    assert 8 * 2_400 <= len(first.leads) <= MAX_LIMIT
    # And the cursor carries the plan: the next pages are eight windows each, without a head
    seen = [row["ID"] for row in first.leads] + _follow(
        service, first.next_cursor, member_id="m1", limit=MAX_LIMIT
    )
    assert seen == [row["ID"] for row in rows]
    later = lister.calls[2:]
    assert later
    assert all(call.get("windows") and call["batches"] == MAX_LIMIT // BATCH_ROWS for call in later)
    # five pages' worth of rows in six reads: nothing read twice, no part-filled page per limit
    assert len(later) <= 5


def test_a_plan_in_the_cursor_is_signed_and_old_cursors_still_work() -> None:
    codec = CursorCodec(lambda: KEY)
    planned = CursorPosition("m1", b"q" * 16, 10, 5_000, ReadPlan(9_000, 0.9))
    decoded = codec.decode(codec.encode(planned))
    assert decoded.plan == ReadPlan(9_000, 0.9)
    assert codec.decode(codec.encode(CursorPosition("m1", b"q" * 16, 10))).plan is None
    body = json.loads(base64.urlsafe_b64decode(codec.encode(planned).split(".")[0] + "=="))
    assert (body["t"], body["d"]) == (9_000, 900_000)


@pytest.mark.parametrize(
    "plan", [{"t": -1, "d": 5}, {"t": 5, "d": 0}, {"t": 5, "d": 1_000_001}, {"t": 5}, {"d": 9}]
)
def test_a_malformed_plan_in_a_signed_cursor_is_rejected(plan: dict[str, Any]) -> None:
    codec = CursorCodec(lambda: KEY)
    payload = {"v": 1, "m": "m1", "q": "cXFxcXFxcXFxcXFxcXFxcQ", "a": 3, **plan}
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    with pytest.raises(LeadsRefusal):
        codec.decode(f"{body}.{_signed(body)}")


def test_the_filter_and_select_reach_the_lister() -> None:
    service, lister, _ = reader(leads(5))
    service.read(request(domain="one.bitrix24.com", select=["TITLE"], filter={"TITLE": "Lead 3"}))
    call = lister.calls[0]
    assert (call["method"], call["select"], call["filter"]) == (
        "crm.lead.list",
        ("ID", "TITLE"),
        {"TITLE": "Lead 3"},
    )
    assert call["portal"] == "ctx:m1"


def test_cursor_of_another_tenant_is_rejected() -> None:
    service, _, _ = reader(leads(30))
    first = service.read(request(member_id="m1", limit=10))
    assert first.next_cursor
    with pytest.raises(LeadsRefusal) as caught:
        service.read(request(member_id="m2", limit=10, cursor=first.next_cursor))
    assert caught.value.code == "INVALID_REQUEST"


def test_cursor_of_another_filter_is_rejected() -> None:
    service, lister, _ = reader(leads(30))
    first = service.read(request(member_id="m1", limit=10, filter={"<ID": 25}))
    assert first.next_cursor
    with pytest.raises(LeadsRefusal):
        service.read(request(member_id="m1", limit=10, filter={"<ID": 99}, cursor=first.next_cursor))
    assert len(lister.calls) == 1


def test_a_forged_cursor_costs_no_portal_lookup() -> None:
    service, lister, portals = reader(leads(3))
    with pytest.raises(LeadsRefusal):
        service.read(request(member_id="m1", cursor="Zm9v.YmFy"))
    assert portals.opened == []
    assert lister.calls == []


def test_domain_and_member_id_cursors_are_interchangeable() -> None:
    service, _, _ = reader(leads(15))
    first = service.read(request(member_id="m1", limit=10))
    second = service.read(request(domain="one.bitrix24.com", limit=10, cursor=first.next_cursor))
    assert [row["ID"] for row in second.leads] == [str(i) for i in range(11, 16)]


def test_answers_stop_before_the_size_cap() -> None:
    # Given leads of about 1 kB each and a cap of 10 kB
    rows = leads(30, NOTE="x" * 1000)
    service, _, _ = reader(rows, max_answer_bytes=10_000)
    page = service.read(request(member_id="m1", limit=30))
    # Then the page holds what fits, and the cursor continues after its last lead
    size = len(json.dumps(page.answer()))
    assert size <= 10_000
    assert 5 <= len(page.leads) < 30
    assert page.next_cursor is not None
    assert sum(row_bytes(r) for r in page.leads) <= 10_000
    rest = service.read(request(member_id="m1", limit=30, cursor=page.next_cursor))
    assert rest.leads[0]["ID"] == str(len(page.leads) + 1)


def test_a_single_oversized_lead_is_an_upstream_error() -> None:
    service, _, _ = reader(leads(1, NOTE="x" * 5000), max_answer_bytes=1000)
    with pytest.raises(LeadsRefusal) as caught:
        service.read(request(member_id="m1"))
    assert caught.value.code == "UPSTREAM_ERROR"


# --- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (PortalNotStored("x"), "PORTAL_NOT_FOUND"),
        (GrantNeedsReauth("m1", "uninstalled"), "REAUTH_REQUIRED"),
        (RefreshUnavailable("later"), "UPSTREAM_ERROR"),
        (RefreshThrottled("m1", 42), "RATE_LIMITED"),
        (RefreshUnsettled("m1", 600), "UPSTREAM_ERROR"),
    ],
)
def test_portal_failures(error: Exception, code: str) -> None:
    service = LeadsReader(FakePortals({}, error=error), FakeLister([]), CursorCodec(lambda: KEY))
    with pytest.raises(LeadsRefusal) as caught:
        service.read(request(member_id="m1"))
    assert caught.value.code == code
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:  # the refresh limits say when to come back, never "re-authorize"
        assert f"retry in {retry_after} s" in caught.value.message


def test_unknown_portal() -> None:
    service, _, _ = reader([])
    with pytest.raises(LeadsRefusal) as caught:
        service.read(request(member_id="nobody"))
    assert caught.value.code == "PORTAL_NOT_FOUND"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidGrant("invalid_grant"), "REAUTH_REQUIRED"),
        (GrantNeedsReauth("m1", "needs_reauth"), "REAUTH_REQUIRED"),
        (QueryLimitExceeded("QUERY_LIMIT_EXCEEDED", http_status=503), "RATE_LIMITED"),
        (OperationTimeLimit("OPERATION_TIME_LIMIT", http_status=429), "RATE_LIMITED"),
        (ServerError("INTERNAL_SERVER_ERROR", http_status=500), "UPSTREAM_ERROR"),
        (AccessDenied("insufficient_scope", http_status=403), "UPSTREAM_ERROR"),
    ],
)
def test_reader_failures_before_any_row(error: Exception, code: str) -> None:
    lister = FakeLister(leads(5), fail_after=0, error=error)
    service = LeadsReader(FakePortals({"m1": "one.bitrix24.com"}), lister, CursorCodec(lambda: KEY))
    with pytest.raises(LeadsRefusal) as caught:
        service.read(request(member_id="m1"))
    assert caught.value.code == code


@pytest.mark.parametrize(
    "error",
    [QueryLimitExceeded("QUERY_LIMIT_EXCEEDED", http_status=503), ServerError("X", http_status=502)],
)
def test_transient_failures_after_some_rows_answer_them_with_a_cursor(error: Bitrix24Error) -> None:
    lister = FakeLister(leads(20), fail_after=7, error=error)
    service = LeadsReader(FakePortals({"m1": "one.bitrix24.com"}), lister, CursorCodec(lambda: KEY))
    page = service.read(request(member_id="m1", limit=20))
    assert [row["ID"] for row in page.leads] == [str(i) for i in range(1, 8)]
    assert page.next_cursor is not None


def test_permanent_failures_after_some_rows_are_still_errors() -> None:
    lister = FakeLister(leads(20), fail_after=7, error=InvalidGrant("invalid_grant"))
    service = LeadsReader(FakePortals({"m1": "one.bitrix24.com"}), lister, CursorCodec(lambda: KEY))
    with pytest.raises(LeadsRefusal) as caught:
        service.read(request(member_id="m1", limit=20))
    assert caught.value.code == "REAUTH_REQUIRED"


class RawLister(FakeLister):
    """Yields rows as given, without looking at them."""

    def _iter(self, portal: Any, method: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        yield from self.rows


def test_rows_without_an_id_are_an_upstream_error() -> None:
    portals = FakePortals({"m1": "one.bitrix24.com"})
    service = LeadsReader(portals, RawLister([{"TITLE": "no id"}]), CursorCodec(lambda: KEY))
    with pytest.raises(LeadsRefusal) as caught:
        service.read(request(member_id="m1"))
    assert caught.value.code == "UPSTREAM_ERROR"


# --- split: signed parts for concurrent readers -----------------------------------------------------


def _follow(service: LeadsReader, cursor: str | None, **payload: Any) -> list[str]:
    seen: list[str] = []
    while cursor is not None:
        page = service.read(request(**payload, cursor=cursor))
        seen.extend(row["ID"] for row in page.leads)
        cursor = page.next_cursor
    return seen


def test_split_answers_one_batch_and_parts_that_cover_the_rest_exactly() -> None:
    # Given 30,000 leads with every third ID missing
    rows = [row for row in leads(45_000) if int(row["ID"]) % 3]
    service, lister, _ = reader(rows)
    # When the first page asks for four parts
    page = service.read(request(member_id="m1", limit=MAX_LIMIT, split=4))
    # Then it holds one batch, read with one head request, and four signed parts
    assert len(page.leads) == HEAD_ROWS
    assert [call.get("head") for call in lister.calls] == [True]
    assert page.split_cursors is not None
    assert len(page.split_cursors) == 4
    answer = page.answer()
    assert set(answer) == {"leads", "count", "next_cursor", "split_cursors"}
    codec = CursorCodec(lambda: KEY)
    positions = [codec.decode(c) for c in page.split_cursors]
    # consecutive: each part starts where the previous one ends; the last one stays open
    assert positions[0].last_id == int(page.leads[-1]["ID"])
    for left, right in itertools.pairwise(positions):
        assert left.before_id == right.last_id + 1
    assert positions[-1].before_id is None
    # And reading every part (as concurrent invocations would) yields each remaining lead once
    parts = [_follow(service, c, member_id="m1", limit=3_000) for c in page.split_cursors]
    assert all(3_000 <= len(part) <= 8_000 for part in parts)
    seen = [row["ID"] for row in page.leads] + [i for part in parts for i in part]
    assert seen == [row["ID"] for row in rows]
    # as does following next_cursor instead
    assert _follow(service, page.next_cursor, member_id="m1", limit=MAX_LIMIT) == seen[HEAD_ROWS:]


def test_a_part_keeps_its_bound_from_page_to_page() -> None:
    service, lister, _ = reader(leads(20_000))
    page = service.read(request(member_id="m1", limit=MAX_LIMIT, split=2))
    assert page.split_cursors is not None
    first_part = page.split_cursors[0]
    bound = CursorCodec(lambda: KEY).decode(first_part).before_id
    assert bound is not None
    part_page = service.read(request(member_id="m1", limit=100, cursor=first_part))
    assert lister.calls[-1]["before_id"] == bound
    assert part_page.next_cursor is not None
    assert CursorCodec(lambda: KEY).decode(part_page.next_cursor).before_id == bound
    assert "split_cursors" not in part_page.answer()


def test_a_part_is_bound_to_its_tenant_and_query() -> None:
    service, _, _ = reader(leads(20_000))
    page = service.read(request(member_id="m1", limit=MAX_LIMIT, split=2, filter={"<ID": 19_000}))
    assert page.split_cursors
    part = page.split_cursors[0]
    for other in ({"member_id": "m2"}, {"member_id": "m1", "filter": {"<ID": 20_001}}):
        with pytest.raises(LeadsRefusal) as caught:
            service.read(request(**other, cursor=part))
        assert caught.value.code == "INVALID_REQUEST"


def test_split_of_a_short_list_ends_without_cursors() -> None:
    service, _, _ = reader(leads(100))
    page = service.read(request(member_id="m1", limit=MAX_LIMIT, split=8))
    assert len(page.leads) == 100
    assert (page.next_cursor, page.split_cursors) == (None, [])
    assert page.answer()["split_cursors"] == []


def test_split_never_plans_parts_below_one_batch() -> None:
    service, _, _ = reader(leads(7_000))
    page = service.read(request(member_id="m1", limit=MAX_LIMIT, split=16))
    assert page.split_cursors is not None
    assert len(page.split_cursors) == 2  # 4,550 leads left: two parts, not sixteen


def test_split_honours_a_small_limit_and_the_size_cap() -> None:
    service, _, _ = reader(leads(10_000, NOTE="x" * 100), max_answer_bytes=20_000)
    page = service.read(request(member_id="m1", limit=500, split=3))
    assert 0 < len(page.leads) < 500
    assert sum(row_bytes(r) for r in page.leads) <= 20_000
    assert page.split_cursors is not None
    seen = [row["ID"] for row in page.leads]
    for part in page.split_cursors:
        seen += _follow(service, part, member_id="m1", limit=MAX_LIMIT)
    assert seen == [str(i) for i in range(1, 10_001)]


def test_split_failures_are_the_contract_errors() -> None:
    lister = FakeLister(leads(5), error=QueryLimitExceeded("QUERY_LIMIT_EXCEEDED", http_status=503))
    service = LeadsReader(FakePortals({"m1": "one.bitrix24.com"}), lister, CursorCodec(lambda: KEY))
    with pytest.raises(LeadsRefusal) as caught:
        service.read(request(member_id="m1", split=2))
    assert caught.value.code == "RATE_LIMITED"


@pytest.mark.parametrize(
    ("last", "top", "density", "parts", "points"),
    [
        (0, 100_000, 1.0, 4, [0, 25_000, 50_000, 75_000]),
        # windows of 4,900 IDs (2,450 rows at density 0.5): 21 of them, 5 + 5 + 5 + 6
        (1_000, 101_000, 0.5, 4, [1_000, 25_500, 50_000, 74_500]),
        (0, 5_000, 1.0, 8, [0, 2_500]),  # 5,000 rows: two parts of one whole window each
        (0, 100_000, 0.9, 16, [2_722 * (37 * i // 16) for i in range(16)]),  # 37 windows: 2 or 3 a part
        (0, 100_000, 0.01, 8, [0]),  # 1,000 rows: one part
        (10, 13, 1.0, 16, [10]),
        (0, 100_000, 1.0, 1, [0]),
    ],
)
def test_split_points(last: int, top: int, density: float, parts: int, points: list[int]) -> None:
    assert split_points(last, top, density, parts) == points


@pytest.mark.parametrize("cap", [3_000, 50_000, 123_457, 400_000])
def test_chunked_sizing_cuts_exactly_where_row_by_row_sizing_would(cap: int) -> None:
    # Given 1,000 leads of uneven sizes (some non-ASCII: escaped to \\uXXXX in the answer)
    rows = [
        {"ID": str(i), "TITLE": ("Лид " if i % 7 == 0 else "Lead ") + "x" * (i * 37 % 300)}
        for i in range(1, 1_001)
    ]
    service, _, _ = reader(rows, max_answer_bytes=cap)
    # The expected cut: every row whose running row_bytes total (from the 2 bytes of "[]") fits
    expected, size = [], 2
    for row in rows:
        size += row_bytes(row)
        if size > cap:
            break
        expected.append(row["ID"])
    for payload in ({"limit": 1_000}, {"limit": 1_000, "split": 2}):
        page = service.read(request(member_id="m1", **payload))
        assert [row["ID"] for row in page.leads] == expected
        assert len(json.dumps(page.leads, separators=(", ", ": "))) <= cap
        assert page.next_cursor is not None or len(expected) == len(rows)


def test_a_split_export_over_the_real_lister_costs_one_request_per_window() -> None:
    # Given 100,000 leads with one ID in ten missing, behind the real FastLister (fake transport)
    from tests.bitrix24.fakes import FakeCrm, FakeTime, make_client, make_portal
    from tests.bitrix24.test_fast_list import with_gaps

    ids = with_gaps(100_000)
    crm, clock = FakeCrm(ids), FakeTime()
    lister = FastLister(make_client(crm.transport, clock), sleep=clock.sleep, rand=lambda: 0.5)

    class OnePortal:
        def open(self, *, member_id: str | None, domain: str | None, deadline: float | None) -> OpenPortal:
            return OpenPortal("m1", make_portal())

    service = LeadsReader(OnePortal(), lister, CursorCodec(lambda: KEY))
    # When the first page splits 16 ways and every part is read to its end
    first = service.read(request(member_id="m1", limit=MAX_LIMIT, split=16))
    assert first.split_cursors is not None
    seen = [row["ID"] for row in first.leads]
    for part in first.split_cursors:
        seen += _follow(service, part, member_id="m1", limit=MAX_LIMIT)
    # Then every lead came once, in order, for one head, one request per window and the open tail:
    # the parts are cut on the windows' own grid, so none ends in a sliver of a window
    assert seen == [str(i) for i in ids]
    assert crm.requests <= -(-len(ids) // 2_450) + 2
