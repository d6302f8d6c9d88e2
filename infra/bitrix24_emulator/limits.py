"""Bitrix24's two REST limits: the per-portal leaky bucket and the per-method operating time."""

from __future__ import annotations

import math
from collections import defaultdict


class LeakyBucket:
    """Each request adds 1; the level drains continuously; a request that would overflow is refused."""

    def __init__(self) -> None:
        self._levels: dict[str, tuple[float, float]] = {}

    def try_acquire(self, key: str, now: float, drain_per_second: float, burst: int) -> bool:
        """Count one request for `key`; False means answer 503 QUERY_LIMIT_EXCEEDED (not counted)."""
        level, last = self._levels.get(key, (0.0, now))
        level = max(0.0, level - max(0.0, now - last) * drain_per_second)
        if level + 1 > burst:
            self._levels[key] = (level, now)
            return False
        self._levels[key] = (level + 1, now)
        return True

    def level(self, key: str, now: float, drain_per_second: float) -> float:
        """Current fill level of `key`'s bucket."""
        level, last = self._levels.get(key, (0.0, now))
        return max(0.0, level - max(0.0, now - last) * drain_per_second)

    def clear(self) -> None:
        """Empty every bucket."""
        self._levels.clear()


class OperatingLimiter:
    """Execution time per (app, method) summed in one-minute buckets over a sliding window of minutes."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)

    def _live(self, key: tuple[str, str], now: float, window_minutes: int) -> dict[int, float]:
        buckets = self._buckets[key]
        current = int(now // 60)
        for minute in [m for m in buckets if m <= current - window_minutes]:
            del buckets[minute]
        return buckets

    def add(self, key: tuple[str, str], now: float, seconds: float, window_minutes: int) -> None:
        """Charge `seconds` of execution to the current minute."""
        buckets = self._live(key, now, window_minutes)
        minute = int(now // 60)
        buckets[minute] = buckets.get(minute, 0.0) + seconds

    def operating(self, key: tuple[str, str], now: float, window_minutes: int) -> tuple[float, int]:
        """(seconds used in the window, Unix time the oldest live minute drops off)."""
        buckets = self._live(key, now, window_minutes)
        if not buckets:
            return 0.0, (int(now // 60) + window_minutes) * 60
        oldest = min(buckets)
        return sum(buckets.values()), (oldest + window_minutes) * 60

    def blocked_until(
        self, key: tuple[str, str], now: float, limit: float, window_minutes: int
    ) -> int | None:
        """When the method is over its limit: the Unix time enough minutes drop off to unblock it."""
        if limit <= 0:
            return None
        buckets = self._live(key, now, window_minutes)
        total = sum(buckets.values())
        if total < limit:
            return None
        for minute in sorted(buckets):
            total -= buckets[minute]
            if total < limit:
                return (minute + window_minutes) * 60
        return math.ceil(now)  # unreachable: removing every minute leaves 0 < limit

    def clear(self) -> None:
        """Forget all charged time."""
        self._buckets.clear()

    def snapshot(self, now: float, window_minutes: int) -> dict[str, dict[str, float]]:
        """Per app and method: seconds in the window."""
        view: dict[str, dict[str, float]] = {}
        for (app, method), _ in list(self._buckets.items()):
            used, _reset = self.operating((app, method), now, window_minutes)
            if used:
                view.setdefault(app, {})[method] = round(used, 6)
        return view
