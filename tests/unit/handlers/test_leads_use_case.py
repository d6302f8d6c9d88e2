"""LeadsReader: request validation, signed cursors, paging, size cap, error mapping (in-memory fakes)."""

from __future__ import annotations

import base64
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
from b24connector.leads import (
    MAX_LIMIT,
    CursorCodec,
    CursorPosition,
    LeadsError,
    LeadsReader,
    LeadsRequest,
    OpenPortal,
    parse_request,
    row_bytes,
)
from b24connector.portals import InvalidPortal
from b24connector.vault.errors import PortalNotFound, ReauthRequired, RefreshUnavailable

KEY = b"k" * 32


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
        after = kwargs.get("after_id", 0)
        flt: Mapping[str, Any] = kwargs.get("filter") or {}
        if ">ID" in flt:
            after = max(after, int(flt[">ID"]))
        before = int(flt["<ID"]) if "<ID" in flt else None
        produced = 0
        for row in self.rows:
            rid = int(row["ID"])
            if rid <= after or (before is not None and rid >= before):
                continue
            if any(k not in {">ID", "<ID"} and row.get(k) != v for k, v in flt.items()):
                continue
            if self.fail_after is not None and produced >= self.fail_after:
                assert self.error is not None
                raise self.error
            if kwargs.get("limit") is not None and produced >= kwargs["limit"]:
                return
            produced += 1
            yield row
        if self.error is not None and self.fail_after is None:
            raise self.error

    def iter_list(self, portal: Any, method: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        return self._iter(portal, method, parallel=False, **kwargs)

    def iter_list_parallel(self, portal: Any, method: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        return self._iter(portal, method, parallel=True, **kwargs)


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
        raise PortalNotFound("no such portal")


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
    ],
)
def test_malformed_requests_are_invalid_request(payload: object) -> None:
    with pytest.raises(LeadsError) as caught:
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
    with pytest.raises(LeadsError) as caught:
        codec.decode(mangle(cursor))
    assert caught.value.code == "INVALID_REQUEST"


def test_a_cursor_signed_with_another_key_is_rejected() -> None:
    cursor = CursorCodec(lambda: b"other-key").encode(CursorPosition("m1", b"q" * 16, 1))
    with pytest.raises(LeadsError):
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


def test_large_limits_use_the_parallel_reader() -> None:
    service, lister, _ = reader(leads(3))
    service.read(request(member_id="m1", limit=MAX_LIMIT))
    service.read(request(member_id="m1", limit=100))
    assert [call["parallel"] for call in lister.calls] == [True, False]


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
    with pytest.raises(LeadsError) as caught:
        service.read(request(member_id="m2", limit=10, cursor=first.next_cursor))
    assert caught.value.code == "INVALID_REQUEST"


def test_cursor_of_another_filter_is_rejected() -> None:
    service, lister, _ = reader(leads(30))
    first = service.read(request(member_id="m1", limit=10, filter={"<ID": 25}))
    assert first.next_cursor
    with pytest.raises(LeadsError):
        service.read(request(member_id="m1", limit=10, filter={"<ID": 99}, cursor=first.next_cursor))
    assert len(lister.calls) == 1


def test_a_forged_cursor_costs_no_portal_lookup() -> None:
    service, lister, portals = reader(leads(3))
    with pytest.raises(LeadsError):
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
    with pytest.raises(LeadsError) as caught:
        service.read(request(member_id="m1"))
    assert caught.value.code == "UPSTREAM_ERROR"


# --- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (PortalNotFound("x"), "PORTAL_NOT_FOUND"),
        (ReauthRequired("m1", "uninstalled"), "REAUTH_REQUIRED"),
        (RefreshUnavailable("later"), "UPSTREAM_ERROR"),
    ],
)
def test_portal_failures(error: Exception, code: str) -> None:
    service = LeadsReader(FakePortals({}, error=error), FakeLister([]), CursorCodec(lambda: KEY))
    with pytest.raises(LeadsError) as caught:
        service.read(request(member_id="m1"))
    assert caught.value.code == code


def test_unknown_portal() -> None:
    service, _, _ = reader([])
    with pytest.raises(LeadsError) as caught:
        service.read(request(member_id="nobody"))
    assert caught.value.code == "PORTAL_NOT_FOUND"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidGrant("invalid_grant"), "REAUTH_REQUIRED"),
        (ReauthRequired("m1", "needs_reauth"), "REAUTH_REQUIRED"),
        (QueryLimitExceeded("QUERY_LIMIT_EXCEEDED", http_status=503), "RATE_LIMITED"),
        (OperationTimeLimit("OPERATION_TIME_LIMIT", http_status=429), "RATE_LIMITED"),
        (ServerError("INTERNAL_SERVER_ERROR", http_status=500), "UPSTREAM_ERROR"),
        (AccessDenied("insufficient_scope", http_status=403), "UPSTREAM_ERROR"),
    ],
)
def test_reader_failures_before_any_row(error: Exception, code: str) -> None:
    lister = FakeLister(leads(5), fail_after=0, error=error)
    service = LeadsReader(FakePortals({"m1": "one.bitrix24.com"}), lister, CursorCodec(lambda: KEY))
    with pytest.raises(LeadsError) as caught:
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
    with pytest.raises(LeadsError) as caught:
        service.read(request(member_id="m1", limit=20))
    assert caught.value.code == "REAUTH_REQUIRED"


class RawLister(FakeLister):
    """Yields rows as given, without looking at them."""

    def _iter(self, portal: Any, method: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        yield from self.rows


def test_rows_without_an_id_are_an_upstream_error() -> None:
    portals = FakePortals({"m1": "one.bitrix24.com"})
    service = LeadsReader(portals, RawLister([{"TITLE": "no id"}]), CursorCodec(lambda: KEY))
    with pytest.raises(LeadsError) as caught:
        service.read(request(member_id="m1"))
    assert caught.value.code == "UPSTREAM_ERROR"
