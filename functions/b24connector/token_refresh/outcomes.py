"""How a refresh or a rescue ended: the outcome names, and the one log line and metric each gets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from b24connector.observability import count, logger

RemainingMs = Callable[[], int]

# The `path` field of the log lines: which entry point a refresh came through.
LAZY = "lazy"  # coordinator.fresh_access_token, after expired_token
RELOAD = "reload"  # coordinator.stored_if_newer, after invalid_token (never refreshes)
SCHEDULED = "scheduled"  # scheduled.ScheduledRefresh, from the sweep's queue
RESCUE = "rescue"  # rescue.apply_rescue


class RefreshOutcome(StrEnum):
    """How one refresh attempt ended; the value is the `outcome` field of its log line."""

    REFRESHED = "refreshed"
    RESCUED = "rescued"  # Bitrix24 answered, the commit did not land, the ciphertext is queued
    ADOPTED = "adopted"  # another worker's newer pair is stored and was used instead
    ALREADY_FRESH = "already_fresh"  # the rejected access token had been replaced meanwhile
    NEEDS_REAUTH = "needs_reauth"
    TRANSIENT_FAILURE = "transient_failure"  # worth retrying soon (scheduled: nothing reached Bitrix24)
    # The failed request may have reached the token endpoint: not again before the interval. Only
    # returned: the failure itself is recorded as TRANSIENT_FAILURE, the worker counts the deferral.
    DEFERRED = "deferred"
    CLIENT_REJECTED = "client_rejected"
    NOT_ENOUGH_TIME = "not_enough_time"
    BUSY = "busy"
    THROTTLED = "throttled"  # lazy: the last refresh is too recent (LAZY_REFRESH_MIN_INTERVAL_SECONDS)
    # A lease lapsed without being released (a rescue may be pending): no refresh within the window.
    UNSETTLED = "unsettled"
    LEASE_TIMEOUT = "lease_timeout"
    RESCUE_FAILED = "rescue_failed"
    SKIPPED_VERSION_MOVED = "skipped_version_moved"
    SKIPPED_NOT_DUE = "skipped_not_due"
    SKIPPED_RECENT = "skipped_recent"
    SKIPPED_INACTIVE = "skipped_inactive"
    MISSING = "missing"


class RescueOutcome(StrEnum):
    """How applying one rescue message ended."""

    APPLIED = "applied"
    STALE = "stale"  # the version moved on (newer grant or refresh): the rescued pair is obsolete


METRIC = {
    RefreshOutcome.REFRESHED: "TokenRefreshed",
    RefreshOutcome.RESCUED: "TokenRescueQueued",
    RefreshOutcome.ADOPTED: "TokenAdopted",
    RefreshOutcome.ALREADY_FRESH: "TokenAlreadyFresh",
    RefreshOutcome.NEEDS_REAUTH: "PortalNeedsReauth",
    RefreshOutcome.TRANSIENT_FAILURE: "TokenRefreshTransientFailure",
    RefreshOutcome.CLIENT_REJECTED: "TokenRefreshRejected",
    RefreshOutcome.NOT_ENOUGH_TIME: "TokenRefreshNoTime",
    RefreshOutcome.BUSY: "TokenRefreshBusy",
    RefreshOutcome.THROTTLED: "TokenRefreshThrottled",
    RefreshOutcome.UNSETTLED: "TokenRefreshUnsettled",
    RefreshOutcome.LEASE_TIMEOUT: "TokenRefreshLeaseTimeout",
    RefreshOutcome.RESCUE_FAILED: "TokenRescueFailed",
    RefreshOutcome.SKIPPED_VERSION_MOVED: "TokenRefreshSkipped",
    RefreshOutcome.SKIPPED_NOT_DUE: "TokenRefreshSkipped",
    RefreshOutcome.SKIPPED_RECENT: "TokenRefreshSkipped",
    RefreshOutcome.SKIPPED_INACTIVE: "TokenRefreshSkipped",
    RefreshOutcome.MISSING: "TokenRefreshSkipped",
    RescueOutcome.APPLIED: "TokenRescueApplied",
    RescueOutcome.STALE: "TokenRescueStale",
}

_WARNINGS = frozenset(
    {
        RefreshOutcome.NEEDS_REAUTH,
        RefreshOutcome.TRANSIENT_FAILURE,
        RefreshOutcome.CLIENT_REJECTED,
        RefreshOutcome.LEASE_TIMEOUT,
        RefreshOutcome.THROTTLED,
        RefreshOutcome.UNSETTLED,
        RefreshOutcome.RESCUED,
        RescueOutcome.STALE,
    }
)


def record(
    outcome: RefreshOutcome | RescueOutcome, member_id: str, version: int | None, **extra: Any
) -> None:
    """Log one `token refresh` line (never a token) and count the outcome's metric."""
    fields = {"member_id": member_id, "version": version, "outcome": outcome.value, **extra}
    if outcome is RefreshOutcome.RESCUE_FAILED:
        logger.error("token refresh", extra=fields)
    elif outcome in _WARNINGS:
        logger.warning("token refresh", extra=fields)
    else:
        logger.info("token refresh", extra=fields)
    count(METRIC[outcome])


@dataclass(slots=True)
class BatchReport:
    """What a batch of SQS messages came to: message ids to retry, and counts by outcome."""

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
