"""Client-side request pacing, so we stay inside the portal's leaky bucket instead of hitting 503.

The bucket is docs/bitrix24-facts.md#f-limit-1. LocalTokenBucket paces one process; the bucket every
instance shares is b24connector.shared_pacing.DynamoTokenBucket (the same Pacer protocol).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from b24connector.bitrix24.errors import QueryLimitExceeded

_EPSILON = 1e-6


class Pacer(Protocol):
    """Grants permission to send one HTTP request to the portal identified by `key`."""

    def acquire(self, key: str, deadline: float | None) -> None:
        """Block until a request may be sent; raise QueryLimitExceeded if that is after `deadline` (monotonic)."""
        ...


@runtime_checkable
class PlanningPacer(Protocol):
    """A Pacer that can be told how many requests are about to start at once (to reserve them together)."""

    def expect(self, key: str, requests: int) -> None:
        """The next `requests` acquires for `key` come together (a planned read's windows)."""
        ...


class LocalTokenBucket:
    """Per-key token bucket inside one process: `rate` requests/s sustained, `burst` at once. Thread-safe."""

    def __init__(
        self,
        rate: float = 2.0,
        burst: int = 50,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)

    def __repr__(self) -> str:
        return f"LocalTokenBucket(rate={self.rate}, burst={self.burst})"

    def _take(self, key: str) -> float:
        """Take a token and return 0, or return how long to wait for one."""
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            # The epsilon absorbs float rounding: after sleeping exactly the computed wait, the
            # refill can land a hair under 1.0, and a 1e-14 s wait would never move the clock.
            if tokens >= 1.0 - _EPSILON:
                self._buckets[key] = (max(0.0, tokens - 1.0), now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def acquire(self, key: str, deadline: float | None) -> None:
        """Take one token for `key`, sleeping while the bucket is empty."""
        while True:
            wait = self._take(key)
            if wait <= 0:
                return
            if deadline is not None and self._clock() + wait > deadline:
                raise QueryLimitExceeded(
                    "CLIENT_RATE_LIMIT", "the request budget ends before the pacing allows another request"
                )
            self._sleep(wait)
