"""b24connector_client: paging through cursors over Lambda Invoke and typed errors."""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import pytest

import b24connector_client as client
from b24connector.leads import CursorCodec, LeadsReader, LeadsRefusal, parse_request
from b24connector_client import fetch_leads, fetch_leads_page, parse_answer
from tests.leads.test_leads_reader import KEY, FakeLister, FakePortals


class FakeLambda:
    """Answers Invoke calls from a script of payloads, recording what was asked."""

    def __init__(self, answers: list[Any], *, function_error: str | None = None) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []
        self.function_error = function_error

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.requests.append({**kwargs, "Payload": json.loads(kwargs["Payload"])})
        answer = self.answers.pop(0)
        raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        response: dict[str, Any] = {"StatusCode": 200, "Payload": io.BytesIO(raw)}
        if self.function_error:
            response["FunctionError"] = self.function_error
        return response


def test_fetch_leads_follows_cursors_until_the_end() -> None:
    fake = FakeLambda(
        [
            {"leads": [{"ID": "1"}, {"ID": "2"}], "count": 2, "next_cursor": "c1"},
            {"leads": [{"ID": "3"}], "count": 1, "next_cursor": None},
        ]
    )
    leads = list(
        fetch_leads(
            domain="acme.bitrix24.com",
            select=["TITLE"],
            filter={"STATUS_ID": "NEW"},
            limit=2,
            lambda_client=fake,  # type: ignore[arg-type]
            parallel=1,
        )
    )
    assert [lead["ID"] for lead in leads] == ["1", "2", "3"]
    first, second = (r["Payload"] for r in fake.requests)
    assert first == {
        "domain": "acme.bitrix24.com",
        "select": ["TITLE"],
        "filter": {"STATUS_ID": "NEW"},
        "limit": 2,
    }
    assert second == {**first, "cursor": "c1"}
    assert all(
        r["FunctionName"] == "LeadsFunction" and r["InvocationType"] == "RequestResponse"
        for r in fake.requests
    )


def test_fetch_leads_is_lazy() -> None:
    fake = FakeLambda([{"leads": [{"ID": "1"}], "count": 1, "next_cursor": "c1"}])
    iterator = fetch_leads(member_id="m", lambda_client=fake)  # type: ignore[arg-type]
    assert next(iterator) == {"ID": "1"}
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        ("INVALID_REQUEST", client.InvalidRequest),
        ("PORTAL_NOT_FOUND", client.PortalNotFound),
        ("REAUTH_REQUIRED", client.ReauthRequired),
        ("RATE_LIMITED", client.RateLimited),
        ("UPSTREAM_ERROR", client.UpstreamError),
    ],
)
def test_error_codes_raise_typed_errors(code: str, error_class: type[client.LeadsError]) -> None:
    fake = FakeLambda([{"error": {"code": code, "message": "because"}}])
    with pytest.raises(error_class) as caught:
        fetch_leads_page(member_id="m", lambda_client=fake)  # type: ignore[arg-type]
    assert caught.value.code == code
    assert caught.value.message == "because"
    assert isinstance(caught.value, client.LeadsError)


def test_unknown_codes_raise_the_base_error() -> None:
    with pytest.raises(client.LeadsError) as caught:
        parse_answer({"error": {"code": "NEW_CODE", "message": "m"}})
    assert type(caught.value) is client.LeadsError
    assert caught.value.code == "NEW_CODE"


def test_function_errors_raise_an_invocation_error() -> None:
    fake = FakeLambda([{"errorType": "Runtime.ExitError", "errorMessage": "x"}], function_error="Unhandled")
    with pytest.raises(client.InvocationError, match=r"Runtime\.ExitError"):
        fetch_leads_page(member_id="m", lambda_client=fake)  # type: ignore[arg-type]


@pytest.mark.parametrize("answer", [b"not json", [], {"leads": "x"}, {"leads": [], "next_cursor": 5}])
def test_malformed_answers_raise_an_invocation_error(answer: Any) -> None:
    fake = FakeLambda([answer])
    with pytest.raises(client.InvocationError):
        fetch_leads_page(member_id="m", lambda_client=fake)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{}, {"member_id": "m", "domain": "d.bitrix24.com"}])
def test_exactly_one_portal_key(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        fetch_leads_page(lambda_client=FakeLambda([]), **kwargs)  # type: ignore[arg-type]


# --- parallel export ---------------------------------------------------------------------------------


class ReaderLambda:
    """LeadsFunction in memory: every Invoke runs the real request parser and LeadsReader (thread-safe)."""

    def __init__(self, rows: list[dict[str, Any]], *, fail_cursor_calls_after: int | None = None) -> None:
        self.lister = FakeLister(rows)
        self.reader = LeadsReader(
            FakePortals({"m1": "one.bitrix24.com"}), self.lister, CursorCodec(lambda: KEY)
        )
        self.payloads: list[dict[str, Any]] = []
        self.threads: set[str] = set()
        self.fail_cursor_calls_after = fail_cursor_calls_after
        self._lock = threading.Lock()

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        payload = json.loads(kwargs["Payload"])
        with self._lock:
            self.payloads.append(payload)
            self.threads.add(threading.current_thread().name)
            calls = len(self.payloads)
        try:
            if self.fail_cursor_calls_after is not None and calls > self.fail_cursor_calls_after:
                raise LeadsRefusal("RATE_LIMITED", "slow down")
            answer = self.reader.read(parse_request(payload, str.lower)).answer()
        except LeadsRefusal as exc:
            answer = exc.answer()
        return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(answer).encode())}


def test_parallel_export_reads_signed_parts_concurrently_in_id_order() -> None:
    # Given 30,000 leads with gaps
    rows = [{"ID": str(i), "TITLE": f"Lead {i}"} for i in range(1, 40_000) if i % 4]
    fake = ReaderLambda(rows)
    # When they are exported on four concurrent invocations of 5,000 leads
    leads = list(
        fetch_leads(member_id="m1", select=["TITLE"], limit=5_000, parallel=4, lambda_client=fake)  # type: ignore[arg-type]
    )
    # Then every lead arrives once, in ascending ID order
    assert [lead["ID"] for lead in leads] == [row["ID"] for row in rows]
    # The first invocation asked for four parts; every other one followed a signed cursor
    first, *rest = fake.payloads
    assert first == {"member_id": "m1", "select": ["TITLE"], "limit": 5_000, "split": 4}
    assert rest
    assert all(set(p) == {"member_id", "select", "limit", "cursor"} for p in rest)
    assert len([t for t in fake.threads if t.startswith("leads-part")]) > 1


def test_without_parallel_the_first_answer_chooses_the_parts() -> None:
    # Given 75,000 leads, far more than one invocation's worth of 20,000
    rows = [{"ID": str(i)} for i in range(1, 100_001) if i % 4]
    fake = ReaderLambda(rows)
    # When they are exported without saying how
    leads = list(fetch_leads(member_id="m1", limit=20_000, lambda_client=fake))  # type: ignore[arg-type]
    # Then the first invocation asked for parts, LeadsFunction planned them from the density it saw
    # (never below one batch each), and the client read all of them at once, in ID order
    assert [lead["ID"] for lead in leads] == [row["ID"] for row in rows]
    first, *rest = fake.payloads
    assert first == {"member_id": "m1", "limit": 20_000, "split": client.MAX_PARALLEL}
    parts = {p["cursor"] for p in rest}
    assert len(parts) == len(rest) == client.MAX_PARALLEL  # 73,000 rows left: 16 parts of one invocation
    assert len({t for t in fake.threads if t.startswith("leads-part")}) > 1


def test_parts_ahead_of_the_caller_hold_one_page_each() -> None:
    # Given 40,000 leads read as 4 parts of about 10 pages of 1,000 each
    rows = [{"ID": str(i)} for i in range(1, 40_001)]
    consumed = 0
    high_water = 0
    reader = ReaderLambda(rows)
    lock = threading.Lock()

    class Watching:
        def invoke(self, **kwargs: Any) -> dict[str, Any]:
            nonlocal high_water
            with lock:
                started = len(reader.payloads) + 1
                high_water = max(high_water, started - consumed // 1_000)
            return reader.invoke(**kwargs)

    # When a caller streams them
    for lead in fetch_leads(member_id="m1", limit=1_000, parallel=4, lambda_client=Watching()):  # type: ignore[arg-type]
        with lock:
            consumed += 1
        assert lead["ID"] == str(consumed)
    # Then pages invoked but not yet taken never exceed about one per part (not whole parts in memory)
    assert consumed == 40_000
    assert len(reader.payloads) > 30
    assert high_water <= 4 + 4


def test_without_parallel_a_short_list_is_one_invocation() -> None:
    fake = ReaderLambda([{"ID": str(i)} for i in range(1, 1_001)])
    leads = list(fetch_leads(member_id="m1", limit=20_000, lambda_client=fake))  # type: ignore[arg-type]
    assert len(leads) == 1_000
    assert len(fake.payloads) == 1


def test_parallel_export_of_a_short_list_is_one_invocation() -> None:
    fake = ReaderLambda([{"ID": str(i)} for i in range(1, 101)])
    leads = list(fetch_leads(member_id="m1", limit=20_000, parallel=8, lambda_client=fake))  # type: ignore[arg-type]
    assert len(leads) == 100
    assert len(fake.payloads) == 1


def test_parallel_export_falls_back_to_next_cursor_without_parts() -> None:
    fake = FakeLambda(
        [
            {"leads": [{"ID": "1"}], "count": 1, "next_cursor": "c1", "split_cursors": []},
            {"leads": [{"ID": "2"}], "count": 1, "next_cursor": None},
        ]
    )
    leads = list(fetch_leads(member_id="m", parallel=4, lambda_client=fake))  # type: ignore[arg-type]
    assert [lead["ID"] for lead in leads] == ["1", "2"]
    assert fake.requests[1]["Payload"]["cursor"] == "c1"


def test_a_failing_part_raises_its_typed_error() -> None:
    rows = [{"ID": str(i)} for i in range(1, 20_001)]
    fake = ReaderLambda(rows, fail_cursor_calls_after=2)
    with pytest.raises(client.RateLimited):
        list(fetch_leads(member_id="m1", limit=1_000, parallel=4, lambda_client=fake))  # type: ignore[arg-type]


@pytest.mark.parametrize("parallel", [0, 17])
def test_parallel_is_bounded(parallel: int) -> None:
    with pytest.raises(ValueError, match="parallel"):
        fetch_leads(member_id="m", parallel=parallel, lambda_client=FakeLambda([]))  # type: ignore[arg-type]


def test_split_cursors_must_be_strings() -> None:
    with pytest.raises(client.InvocationError):
        parse_answer({"leads": [], "count": 0, "next_cursor": None, "split_cursors": [1]})
