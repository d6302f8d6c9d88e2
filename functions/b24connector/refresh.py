"""Scheduled token upkeep: the sweep finds due portals, workers refresh them, rescues get applied.

The sweep only reads the sparse due index (no Scan) and queues `{member_id, version}`; it never calls
Bitrix24. The worker hands each message to the vault's RefreshCoordinator, which enforces everything
that makes a refresh safe (version check, lease, at most one refresh per portal per
MIN_REFRESH_INTERVAL_HOURS). SQS partial batch failures send back only messages worth retrying:

- infrastructure failures before any token call (DynamoDB, KMS, Secrets Manager), a token request
  that provably never reached Bitrix24 (refused, DNS, TLS handshake), too little time: retried by SQS
  (and after maxReceiveCount they reach the DLQ and its alarm, which such an outage deserves);
- a token request that may have reached Bitrix24 (timeout, 5xx): DEFERRED, acknowledged and counted
  (RefreshDeferred). The refresh token may be spent, so no retry may come within
  MIN_REFRESH_INTERVAL_HOURS; the coordinator already moved the portal's due time out, and the first
  sweep after it tries again (ending in needs_reauth with a metric if the token was spent).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from b24connector.identifiers import is_member_id
from b24connector.vault.errors import VaultError
from b24connector.vault.refresh import RefreshOutcome

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

RemainingMs = Callable[[], int]
SQS_BATCH_SIZE = 10
DEFAULT_MAX_PER_SWEEP = 10_000
# Stop queueing while this much invocation time is left: a SendMessageBatch plus the final log line.
SWEEP_RESERVE_MS = 5_000

# Outcomes after which the same message is worth another delivery; every other outcome is final
# (done, skipped, deferred past the minimum interval, flagged needs_reauth, or being handled by the
# worker that holds the lease).
RETRY_OUTCOMES = frozenset(
    {
        RefreshOutcome.TRANSIENT_FAILURE,
        RefreshOutcome.NOT_ENOUGH_TIME,
        RefreshOutcome.LEASE_TIMEOUT,
    }
)


class DueIndex(Protocol):
    """Portals whose refresh is due (vault.PortalStore.due_portals)."""

    def due_portals(self, now: float, limit: int) -> Iterator[tuple[str, int]]:
        """(member_id, version) pairs, from every shard of the due index."""
        ...


class BatchSender(Protocol):
    """Sends up to ten message bodies at once; returns the bodies that did not go."""

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        """Send; raise only when nothing could be sent."""
        ...


class SqsBatchSender:
    """BatchSender over SQS SendMessageBatch (retries the entries SQS failed once, then reports them)."""

    def __init__(self, sqs: SQSClient, queue_url: str) -> None:
        self._sqs = sqs
        self._queue_url = queue_url

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        """Send up to ten bodies; return the ones SQS would not take."""
        pending = {str(i): body for i, body in enumerate(bodies)}
        given_up: list[str] = []
        for attempt in range(2):
            answer = self._sqs.send_message_batch(
                QueueUrl=self._queue_url,
                Entries=[{"Id": key, "MessageBody": body} for key, body in pending.items()],
            )
            retry: dict[str, str] = {}
            for failure in answer.get("Failed", []):
                body = pending.get(failure["Id"])
                if body is None:
                    continue
                if failure.get("SenderFault") or attempt == 1:
                    given_up.append(body)
                else:
                    retry[failure["Id"]] = body
            pending = retry
            if not pending:
                break
        return given_up


@dataclass(slots=True)
class SweepReport:
    """What one sweep did (logged as one line)."""

    due: int = 0
    queued: int = 0
    failed: int = 0
    out_of_time: bool = False

    def as_log(self) -> dict[str, Any]:
        """Fields for the log line."""
        return {
            "due": self.due,
            "queued": self.queued,
            "failed": self.failed,
            "out_of_time": self.out_of_time,
        }


def refresh_message(member_id: str, version: int) -> str:
    """The RefreshQueue message body."""
    return json.dumps({"member_id": member_id, "version": version}, separators=(",", ":"))


def _chunks(items: Iterable[tuple[str, int]], size: int) -> Iterator[list[tuple[str, int]]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class RefreshSweep:
    """Queues every due portal, ten per SendMessageBatch, while the invocation has time."""

    def __init__(
        self,
        due: DueIndex,
        sender: BatchSender,
        *,
        max_per_sweep: int = DEFAULT_MAX_PER_SWEEP,
        reserve_ms: int = SWEEP_RESERVE_MS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._due = due
        self._sender = sender
        self._max = max_per_sweep
        self._reserve_ms = reserve_ms
        self._clock = clock

    def run(self, remaining_ms: RemainingMs) -> SweepReport:
        """Query the due index once (paged by the store) and queue what it yields."""
        report = SweepReport()
        for chunk in _chunks(self._due.due_portals(self._clock(), self._max), SQS_BATCH_SIZE):
            report.due += len(chunk)
            if remaining_ms() < self._reserve_ms:
                # The next sweep finds these again: queueing is the only state, and it did not happen.
                report.out_of_time = True
                report.failed += len(chunk)
                break
            bodies = [refresh_message(member_id, version) for member_id, version in chunk]
            try:
                failed = self._sender.send_batch(bodies)
            except (ClientError, BotoCoreError):
                failed = bodies
            report.queued += len(bodies) - len(failed)
            report.failed += len(failed)
        return report


# --- worker -------------------------------------------------------------------------------------


class Refresher(Protocol):
    """The vault's RefreshCoordinator as the workers need it."""

    def refresh_if_due(
        self, member_id: str, expected_version: int, *, remaining_ms: RemainingMs | None = None
    ) -> RefreshOutcome:
        """Refresh one portal the sweep found due, unless anything says not now."""
        ...


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    """One RefreshQueue message."""

    member_id: str
    version: int

    @classmethod
    def parse(cls, body: str) -> RefreshRequest:
        """Parse a message body; ValueError when it is not one of ours."""
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        member_id, version = data.get("member_id"), data.get("version")
        if not is_member_id(member_id):
            raise ValueError("member_id missing")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError("version missing")
        return cls(member_id, version)


@dataclass(slots=True)
class BatchReport:
    """What a batch of messages came to: message ids to retry, and counts by outcome."""

    retry: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: str) -> None:
        """Count one message under `outcome`."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    @property
    def deferred(self) -> int:
        """Messages acknowledged because their portal's refresh was deferred past the minimum interval."""
        return self.outcomes.get(RefreshOutcome.DEFERRED.value, 0)

    def answer(self) -> dict[str, Any]:
        """The SQS partial batch response."""
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in self.retry]}


class RefreshWorker:
    """Refreshes the portals of one SQS batch through the coordinator."""

    def __init__(self, coordinator: Refresher, *, on_error: Callable[[str, BaseException], None]) -> None:
        self._coordinator = coordinator
        self._on_error = on_error

    def handle(self, records: Sequence[Mapping[str, Any]], remaining_ms: RemainingMs) -> BatchReport:
        """Process every record; retryable failures go back to the queue, the rest (deferred too) are final."""
        report = BatchReport()
        for record in records:
            message_id = str(record.get("messageId", ""))
            try:
                request = RefreshRequest.parse(str(record.get("body", "")))
            except ValueError:
                # A malformed message will never parse; retrying it only delays the DLQ alarm.
                report.count("malformed")
                continue
            try:
                outcome = self._coordinator.refresh_if_due(
                    request.member_id, request.version, remaining_ms=remaining_ms
                )
            except VaultError as exc:
                report.count(type(exc).__name__)
                if exc.retryable:
                    report.retry.append(message_id)
                else:
                    self._on_error(request.member_id, exc)
                continue
            except Exception as exc:
                # Unknown failures go back to the queue, and after maxReceiveCount to the DLQ,
                # where an operator sees them; dropping them would hide a bug.
                self._on_error(request.member_id, exc)
                report.count("error")
                report.retry.append(message_id)
                continue
            report.count(outcome.value)
            if outcome in RETRY_OUTCOMES:
                report.retry.append(message_id)
        return report


class RescueApplier(Protocol):
    """The vault's RefreshCoordinator as the rescue worker needs it."""

    def apply_rescue(self, body: str | bytes | Mapping[str, Any]) -> object:
        """Commit one rescued pair on its base version (or drop it as stale)."""
        ...


class RescueWorker:
    """Applies TokenRescueQueue messages; any failure keeps the message (it holds the only live pair)."""

    def __init__(self, coordinator: RescueApplier, *, on_error: Callable[[str, BaseException], None]) -> None:
        self._coordinator = coordinator
        self._on_error = on_error

    def handle(self, records: Sequence[Mapping[str, Any]]) -> BatchReport:
        """Apply each message; failures are retried and finally land in the DLQ for an operator."""
        report = BatchReport()
        for record in records:
            message_id = str(record.get("messageId", ""))
            try:
                outcome = self._coordinator.apply_rescue(str(record.get("body", "")))
            except Exception as exc:
                self._on_error(message_id, exc)
                report.count(type(exc).__name__)
                report.retry.append(message_id)
                continue
            report.count(str(getattr(outcome, "value", outcome)))
        return report
