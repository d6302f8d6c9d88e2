"""Scheduled token upkeep: the sweep finds due portals, the workers refresh each one once.

A refresh token lives 180 days, and Bitrix24 asks apps not to refresh on a timer or "just in case"
(docs/bitrix24-facts.md#f-oauth-11): the sweep queues only portals whose refresh is due (refresh after
REFRESH_AFTER_DAYS, at most once per MIN_REFRESH_INTERVAL_HOURS).

RefreshSweep (RefreshFunction) only reads the sparse due index (no Scan) and queues `{member_id,
version}`; it never calls Bitrix24. RefreshWorker (RefreshWorkerFunction) hands each message to the
coordinator's refresh_if_due, which is ScheduledRefresh below: one conditional write
(PortalStore.take_due_lease) checks the version, the due time and the interval and takes the lease, and
lease_holder.LeaseHolder spends the token. SQS partial batch failures send back only messages worth
retrying:

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
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from b24connector.identifiers import is_member_id
from b24connector.token_refresh.lease_holder import LeaseHolder
from b24connector.token_refresh.outcomes import SCHEDULED, BatchReport, RefreshOutcome, RemainingMs, record
from b24connector.vault.errors import (
    GrantNeedsReauth,
    NotEnoughTime,
    PortalNotStored,
    RefreshDeferred,
    RefreshRejected,
    RefreshUnavailable,
    VaultError,
)
from b24connector.vault.portal import Portal

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

_HOUR = 3600
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
    """What the worker needs (coordinator.RefreshCoordinator fits; its refresh_if_due is ScheduledRefresh's)."""

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


class RefreshWorker:
    """Refreshes the portals of one SQS batch through the coordinator."""

    def __init__(self, coordinator: Refresher, *, on_error: Callable[[str, BaseException], None]) -> None:
        self._coordinator = coordinator
        self._on_error = on_error

    def handle(self, records: Sequence[Mapping[str, Any]], remaining_ms: RemainingMs) -> BatchReport:
        """Process every record; retryable failures go back to the queue, the rest (deferred too) are final."""
        report = BatchReport()
        for message in records:
            message_id = str(message.get("messageId", ""))
            try:
                request = RefreshRequest.parse(str(message.get("body", "")))
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


# --- the refresh of one due portal ----------------------------------------------------------------

_OUTCOME_OF: dict[type[Exception], RefreshOutcome] = {
    NotEnoughTime: RefreshOutcome.NOT_ENOUGH_TIME,
    RefreshUnavailable: RefreshOutcome.TRANSIENT_FAILURE,
    RefreshDeferred: RefreshOutcome.DEFERRED,
    RefreshRejected: RefreshOutcome.CLIENT_REJECTED,
    GrantNeedsReauth: RefreshOutcome.NEEDS_REAUTH,
    PortalNotStored: RefreshOutcome.MISSING,
}


class ScheduledRefresh:
    """Refreshes one portal the sweep found due, unless anything says it should not be touched now."""

    def __init__(self, holder: LeaseHolder, *, clock: Callable[[], float] = time.time) -> None:
        self._holder = holder
        self._store = holder.store
        self._policy = holder.policy
        self._clock = clock

    def refresh_if_due(
        self, member_id: str, expected_version: int, *, remaining_ms: RemainingMs | None = None
    ) -> RefreshOutcome:
        """Refresh a portal the sweep found due, unless anything says it should not be touched now.

        Taking the lease records the attempt and moves the due time out by MIN_REFRESH_INTERVAL_HOURS
        before the token endpoint is called, so a worker that dies mid-call cannot cause a second spend
        of the (single-use) refresh token. How a failure ends decides what happens next:

        - DynamoDB or KMS failing before the token call (VaultUnavailable raised; a lease already
          taken is released with its attempt undone), too little time (NOT_ENOUGH_TIME): nothing was
          recorded; the message is worth another delivery.
        - The token request provably never reached Bitrix24 (connection refused, DNS, TLS handshake,
          connect timeout; or the client secret could not be read): the attempt record is undone and
          the outcome is TRANSIENT_FAILURE, so the queue's redelivery refreshes soon.
        - The request may have reached Bitrix24 (read timeout, 5xx, a broken answer): the refresh
          token may be spent, so nothing retries it before the interval is over. The outcome is
          DEFERRED (final: redelivering could only end in SKIPPED_RECENT); the sweep after the interval
          tries again, and if the token was spent that attempt flags the portal needs_reauth (metric).
        """
        now = self._clock()
        min_gap = self._policy.min_refresh_interval_hours * _HOUR
        left = self._policy.budget_short(remaining_ms)
        if left is not None:
            # A portal that would be skipped anyway keeps its skip outcome, as when the read came first.
            skipped = self._skip_of(member_id, expected_version, now, min_gap)
            if skipped is not None:
                return skipped
            record(RefreshOutcome.NOT_ENOUGH_TIME, member_id, expected_version, path=SCHEDULED, left_ms=left)
            return RefreshOutcome.NOT_ENOUGH_TIME
        try:
            return self._refresh(member_id, expected_version, now, min_gap, remaining_ms)
        except (
            NotEnoughTime,
            RefreshUnavailable,
            RefreshDeferred,
            RefreshRejected,
            GrantNeedsReauth,
            PortalNotStored,
        ) as exc:
            # Already logged and counted where it happened; the sweep only needs the outcome.
            return _OUTCOME_OF[type(exc)]

    def _refresh(
        self,
        member_id: str,
        expected_version: int,
        now: float,
        min_gap: float,
        remaining_ms: RemainingMs | None,
    ) -> RefreshOutcome:
        owner = uuid.uuid4().hex
        # One conditional write checks everything _skip does and takes the lease; only a refusal costs a
        # read (to name the skip), so a refresh is UpdateItem, Decrypt, GenerateDataKey, the token call
        # and the commit.
        lease_until = self._clock() + self._policy.lease_seconds
        portal = self._store.take_due_lease(
            member_id,
            expected_version,
            owner,
            lease_seconds=self._policy.lease_seconds,
            now=now,
            min_gap_seconds=min_gap,
            settle_seconds=self._policy.rescue_window_seconds,
        )
        if portal is None:
            skipped = self._skip_of(member_id, expected_version, now, min_gap)
            if skipped is not None:
                return skipped
            # Every check passes on the re-read: another writer moved the record in between.
            record(RefreshOutcome.BUSY, member_id, expected_version, path=SCHEDULED)
            return RefreshOutcome.BUSY
        try:
            stored = self._store.tokens(portal)
        except BaseException:
            # Nothing reached the token endpoint: the attempt must not count (as before the lease).
            self._holder.release(member_id, owner, undo_attempt=portal)
            raise
        return self._holder.spend(
            portal, stored, owner, remaining_ms, lease_until=lease_until, path=SCHEDULED
        )[0]

    def _skip_of(
        self, member_id: str, expected_version: int, now: float, min_gap: float
    ) -> RefreshOutcome | None:
        """Read the record once: the skip outcome it calls for (recorded), or None when none applies."""
        portal = self._store.get(member_id, consistent=True)
        if portal is None:
            record(RefreshOutcome.MISSING, member_id, None, path=SCHEDULED)
            return RefreshOutcome.MISSING
        skip = _skip(portal, expected_version, now, min_gap, self._policy.rescue_window_seconds)
        if skip is not None:
            record(skip, member_id, portal.version, path=SCHEDULED)
        return skip


def _skip(
    portal: Portal, expected_version: int, now: float, min_gap: float, settle: float
) -> RefreshOutcome | None:
    if portal.version != expected_version:
        return RefreshOutcome.SKIPPED_VERSION_MOVED
    if not portal.is_active:
        return RefreshOutcome.SKIPPED_INACTIVE
    if portal.refresh_due_at is None or portal.refresh_due_at > now:
        return RefreshOutcome.SKIPPED_NOT_DUE
    if portal.lease_held(now) or portal.lease_unsettled(now, settle):
        return RefreshOutcome.BUSY
    # Bitrix24 may block apps that refresh too often (docs/bitrix24-facts.md#f-oauth-11): one refresh
    # per portal per gap.
    if any(
        t is not None and now - t < min_gap
        for t in (portal.refresh_obtained_at, portal.last_refresh_attempt_at)
    ):
        return RefreshOutcome.SKIPPED_RECENT
    return None
