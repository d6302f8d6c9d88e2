"""Counters the benchmarks read: requests, COUNT pages, modeled operating time, concurrency, rate."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

# Enough for long benchmark runs; older timestamps roll off (the per-second histogram keeps counting).
_MAX_TIMESTAMPS = 200_000


@dataclass
class MethodStats:
    """Per REST method (batch sub-calls counted under their own method)."""

    calls: int = 0
    errors: int = 0
    count_queries: int = 0
    rows: int = 0
    operating_seconds: float = 0.0


@dataclass
class Stats:
    """Everything counted since the last reset. The caller holds the emulator lock."""

    requests: int = 0
    rest_calls: int = 0
    batch_requests: int = 0
    batch_commands: int = 0
    list_calls: int = 0
    count_queries: int = 0
    rows_returned: int = 0
    operating_seconds: float = 0.0
    token_requests: int = 0
    token_grants: Counter[str] = field(default_factory=Counter)
    token_errors: Counter[str] = field(default_factory=Counter)
    oauth_app_info_requests: int = 0
    http_status: Counter[int] = field(default_factory=Counter)
    rest_errors: Counter[str] = field(default_factory=Counter)
    batch_errors: Counter[str] = field(default_factory=Counter)
    methods: dict[str, MethodStats] = field(default_factory=lambda: defaultdict(MethodStats))
    concurrent_requests: int = 0
    max_concurrent_requests: int = 0
    per_second: Counter[int] = field(default_factory=Counter)
    request_timestamps: list[float] = field(default_factory=list)
    first_request_at: float | None = None
    last_request_at: float | None = None
    # Authenticated REST requests per user id (the token's user).
    requests_by_user: Counter[int] = field(default_factory=Counter)

    def request_started(self, now: float) -> None:
        """A portal REST request arrived."""
        self.requests += 1
        self.concurrent_requests += 1
        self.max_concurrent_requests = max(self.max_concurrent_requests, self.concurrent_requests)
        self.per_second[int(now)] += 1
        self.request_timestamps.append(round(now, 4))
        if len(self.request_timestamps) > _MAX_TIMESTAMPS:
            del self.request_timestamps[: len(self.request_timestamps) - _MAX_TIMESTAMPS]
        if self.first_request_at is None:
            self.first_request_at = now
        self.last_request_at = now

    def request_finished(self, status: int, error: str | None) -> None:
        """A portal REST request was answered."""
        self.concurrent_requests -= 1
        self.http_status[status] += 1
        if error:
            self.rest_errors[error] += 1

    def call(
        self, method: str, *, cost: float, counted: bool, rows: int, listing: bool, failed: bool
    ) -> None:
        """One method execution (top level or inside a batch)."""
        self.rest_calls += 1
        entry = self.methods[method]
        entry.calls += 1
        entry.operating_seconds += cost
        self.operating_seconds += cost
        if failed:
            entry.errors += 1
        if listing:
            self.list_calls += 1
        if counted:
            entry.count_queries += 1
            self.count_queries += 1
        entry.rows += rows
        self.rows_returned += rows

    def as_json(self) -> dict[str, Any]:
        """The admin `GET /_emulator/stats` answer."""
        return {
            "requests": self.requests,
            "rest_calls": self.rest_calls,
            "batch_requests": self.batch_requests,
            "batch_commands": self.batch_commands,
            "list_calls": self.list_calls,
            "count_queries": self.count_queries,
            "rows_returned": self.rows_returned,
            "operating_seconds": round(self.operating_seconds, 6),
            "token_requests": self.token_requests,
            "token_grants": dict(self.token_grants),
            "token_errors": dict(self.token_errors),
            "oauth_app_info_requests": self.oauth_app_info_requests,
            "http_status": {str(k): v for k, v in sorted(self.http_status.items())},
            "http_503": self.http_status.get(503, 0),
            "http_429": self.http_status.get(429, 0),
            "http_401": self.http_status.get(401, 0),
            "http_302": self.http_status.get(302, 0),
            "rest_errors": dict(self.rest_errors),
            "batch_errors": dict(self.batch_errors),
            "methods": {
                name: {
                    "calls": m.calls,
                    "errors": m.errors,
                    "count_queries": m.count_queries,
                    "rows": m.rows,
                    "operating_seconds": round(m.operating_seconds, 6),
                }
                for name, m in sorted(self.methods.items())
            },
            "concurrent_requests": self.concurrent_requests,
            "max_concurrent_requests": self.max_concurrent_requests,
            "per_second": [[second, count] for second, count in sorted(self.per_second.items())],
            "max_requests_per_second": max(self.per_second.values(), default=0),
            "request_timestamps": list(self.request_timestamps),
            "first_request_at": self.first_request_at,
            "last_request_at": self.last_request_at,
            "requests_by_user": {str(k): v for k, v in sorted(self.requests_by_user.items())},
        }
