"""RefreshSweep, RefreshWorker and RescueWorker with fakes: batching, budgets, partial batch failures."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from botocore.exceptions import ClientError

from b24connector.token_refresh.outcomes import RefreshOutcome, RescueOutcome
from b24connector.token_refresh.rescue import RescueWorker
from b24connector.token_refresh.scheduled import RefreshSweep, RefreshWorker, SqsBatchSender, refresh_message
from b24connector.vault.errors import TokenDecryptError, TokenRescueFailed, VaultUnavailable
from tests.support.aws_events import sqs_event


class FakeDue:
    def __init__(self, count: int) -> None:
        self.count = count
        self.asked: list[tuple[float, int]] = []
        self.yielded = 0

    def due_portals(self, now: float, limit: int) -> Iterator[tuple[str, int]]:
        self.asked.append((now, limit))
        for i in range(min(self.count, limit)):
            self.yielded += 1
            yield f"m{i}", i + 1


class FakeSender:
    def __init__(self, *, fail_every: int = 0, raise_on: int | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail_every = fail_every
        self.raise_on = raise_on

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        if self.raise_on is not None and len(self.batches) == self.raise_on:
            self.batches.append([])
            raise ClientError({"Error": {"Code": "ServiceUnavailable"}}, "SendMessageBatch")
        self.batches.append(list(bodies))
        return list(bodies[:1]) if self.fail_every and len(self.batches) % self.fail_every == 0 else []


def test_sweep_sends_ten_per_batch_and_counts() -> None:
    due, sender = FakeDue(23), FakeSender()
    report = RefreshSweep(due, sender, clock=lambda: 1000.0).run(lambda: 60_000)
    assert [len(b) for b in sender.batches] == [10, 10, 3]
    assert (report.due, report.queued, report.failed, report.out_of_time) == (23, 23, 0, False)
    assert json.loads(sender.batches[0][0]) == {"member_id": "m0", "version": 1}
    assert due.asked == [(1000.0, 10_000)]


def test_sweep_stops_when_time_runs_out() -> None:
    due, sender = FakeDue(50), FakeSender()
    budget = iter([60_000, 60_000, 1_000, 1_000, 1_000])
    report = RefreshSweep(due, sender).run(lambda: next(budget))
    assert len(sender.batches) == 2
    assert (report.queued, report.out_of_time) == (20, True)
    assert due.yielded <= 30  # it stopped reading the index too


def test_sweep_counts_failed_entries_and_failed_calls() -> None:
    due, sender = FakeDue(30), FakeSender(fail_every=2, raise_on=2)
    report = RefreshSweep(due, sender).run(lambda: 60_000)
    # batch 1: all ten queued; batch 2: one entry refused; batch 3: the call itself failed
    assert (report.due, report.queued, report.failed) == (30, 19, 11)


def test_sweep_honours_its_cap() -> None:
    due, sender = FakeDue(100), FakeSender()
    RefreshSweep(due, sender, max_per_sweep=25).run(lambda: 60_000)
    assert due.asked[0][1] == 25
    assert sum(len(b) for b in sender.batches) == 25


class FakeSqs:
    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers
        self.calls: list[dict[str, Any]] = []

    def send_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return self.answers.pop(0)


def test_sqs_sender_retries_server_side_failures_once() -> None:
    sqs = FakeSqs(
        [
            {
                "Successful": [],
                "Failed": [{"Id": "0", "SenderFault": False}, {"Id": "1", "SenderFault": True}],
            },
            {"Successful": [], "Failed": [{"Id": "0", "SenderFault": False}]},
        ]
    )
    failed = SqsBatchSender(sqs, "https://sqs/q").send_batch(["a", "b", "c"])  # type: ignore[arg-type]
    assert sorted(failed) == ["a", "b"]
    assert [len(c["Entries"]) for c in sqs.calls] == [3, 1]
    assert sqs.calls[1]["Entries"] == [{"Id": "0", "MessageBody": "a"}]


def test_sqs_sender_stops_when_the_retry_lands() -> None:
    sqs = FakeSqs([{"Failed": [{"Id": "1", "SenderFault": False}]}, {"Failed": []}])
    assert SqsBatchSender(sqs, "q").send_batch(["a", "b"]) == []  # type: ignore[arg-type]


class FakeCoordinator:
    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.calls: list[tuple[str, int]] = []

    def refresh_if_due(
        self, member_id: str, expected_version: int, *, remaining_ms: Any = None
    ) -> RefreshOutcome:
        self.calls.append((member_id, expected_version))
        result = self.results[member_id]
        if isinstance(result, Exception):
            raise result
        assert isinstance(result, RefreshOutcome)
        return result

    def apply_rescue(self, body: Any) -> RescueOutcome:
        result = self.results[json.loads(body)["member_id"]]
        if isinstance(result, Exception):
            raise result
        assert isinstance(result, RescueOutcome)
        return result


def test_worker_retries_only_transient_outcomes() -> None:
    results: dict[str, Any] = {
        "ok": RefreshOutcome.REFRESHED,
        "recent": RefreshOutcome.SKIPPED_RECENT,
        "moved": RefreshOutcome.SKIPPED_VERSION_MOVED,
        "busy": RefreshOutcome.BUSY,
        "dead": RefreshOutcome.NEEDS_REAUTH,
        "flaky": RefreshOutcome.TRANSIENT_FAILURE,
        "late": RefreshOutcome.NOT_ENOUGH_TIME,
        "ddb": VaultUnavailable("UpdateItem"),
        "key": TokenDecryptError("key", "wrong key"),
        "lost": TokenRescueFailed("x"),
        "bug": RuntimeError("boom"),
    }
    errors: list[tuple[str, str]] = []
    worker = RefreshWorker(
        FakeCoordinator(results), on_error=lambda who, exc: errors.append((who, type(exc).__name__))
    )
    event = sqs_event([refresh_message(member_id, 3) for member_id in results])
    ids = {json.loads(r["body"])["member_id"]: r["messageId"] for r in event["Records"]}
    report = worker.handle(event["Records"], lambda: 60_000)
    assert sorted(report.retry) == sorted(ids[m] for m in ("flaky", "late", "ddb", "bug"))
    assert report.answer()["batchItemFailures"][0].keys() == {"itemIdentifier"}
    assert ("key", "TokenDecryptError") in errors
    assert ("bug", "RuntimeError") in errors
    assert report.outcomes["refreshed"] == 1


def test_worker_acknowledges_deferred_portals() -> None:
    # A refresh whose request may have reached Bitrix24 is deferred past the minimum interval:
    # redelivering the message could only end in a skip, so it is final, and counted
    worker = RefreshWorker(
        FakeCoordinator({"late": RefreshOutcome.DEFERRED, "flaky": RefreshOutcome.TRANSIENT_FAILURE}),
        on_error=lambda who, exc: None,
    )
    event = sqs_event([refresh_message("late", 3), refresh_message("flaky", 3)])
    report = worker.handle(event["Records"], lambda: 60_000)
    assert report.retry == [event["Records"][1]["messageId"]]
    assert (report.deferred, report.outcomes["deferred"]) == (1, 1)


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[]",
        '{"member_id": 5, "version": 1}',
        '{"member_id": "m"}',
        '{"member_id": "m", "version": true}',
    ],
)
def test_worker_drops_malformed_messages(body: str) -> None:
    coordinator = FakeCoordinator({})
    worker = RefreshWorker(coordinator, on_error=lambda who, exc: None)
    report = worker.handle(sqs_event([body])["Records"], lambda: 60_000)
    assert report.retry == []
    assert report.outcomes == {"malformed": 1}
    assert coordinator.calls == []


def test_worker_passes_member_and_version() -> None:
    coordinator = FakeCoordinator({"m1": RefreshOutcome.REFRESHED})
    RefreshWorker(coordinator, on_error=lambda who, exc: None).handle(
        sqs_event([{"member_id": "m1", "version": 7}])["Records"], lambda: 60_000
    )
    assert coordinator.calls == [("m1", 7)]


def test_rescue_worker_keeps_every_failure() -> None:
    results: dict[str, Any] = {
        "a": RescueOutcome.APPLIED,
        "s": RescueOutcome.STALE,
        "bad": ValueError("not a rescue message"),
        "ddb": VaultUnavailable("x"),
    }
    worker = RescueWorker(FakeCoordinator(results), on_error=lambda who, exc: None)
    event = sqs_event([{"member_id": m} for m in results])
    ids = {json.loads(r["body"])["member_id"]: r["messageId"] for r in event["Records"]}
    report = worker.handle(event["Records"])
    assert sorted(report.retry) == sorted([ids["bad"], ids["ddb"]])
    assert report.outcomes["applied"] == 1
    assert report.outcomes["stale"] == 1
