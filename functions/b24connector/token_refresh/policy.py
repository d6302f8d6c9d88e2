"""Timing of a refresh: how long a lease lasts, how long callers wait, how often a portal may refresh."""

from __future__ import annotations

from dataclasses import dataclass

from b24connector.settings import Settings
from b24connector.token_refresh.outcomes import RemainingMs


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """Timing of leases, waits and retries; `from_settings` derives them from the HTTP timeout."""

    lease_seconds: float = 30.0
    max_wait_seconds: float = 20.0
    poll_initial_seconds: float = 0.05
    poll_max_seconds: float = 0.5
    refresh_budget_ms: int = 15_000  # the holder needs: KMS data key + token call + commit (+ retries)
    token_call_seconds: float = 12.0  # lease time a token call needs; less left after the data key: no call
    wait_reserve_ms: int = 3_000  # a waiting caller keeps this much for its own REST call afterwards
    commit_attempts: int = 4
    commit_backoff_seconds: float = 0.2
    min_refresh_interval_hours: int = 24
    lazy_min_interval_seconds: float = 300.0  # one lazy refresh per portal per this, across containers
    rescue_window_seconds: float = 900.0  # a lapsed, unreleased lease blocks refreshes this long after

    @classmethod
    def from_settings(cls, settings: Settings) -> RefreshPolicy:
        """Lease outlives the slowest token call; waiting stops before the lease would expire."""
        http = settings.http_timeout_seconds
        return cls(
            lease_seconds=2 * http + 10,
            max_wait_seconds=http + 10,
            refresh_budget_ms=int((http + 5) * 1000),
            token_call_seconds=http + 2,
            min_refresh_interval_hours=settings.min_refresh_interval_hours,
            lazy_min_interval_seconds=settings.lazy_refresh_min_interval_seconds,
            rescue_window_seconds=settings.rescue_window_seconds,
        )

    def budget_short(self, remaining_ms: RemainingMs | None) -> int | None:
        """The milliseconds left when they are too few for a refresh, else None."""
        if remaining_ms is None:
            return None
        left = remaining_ms()
        return left if left < self.refresh_budget_ms else None
