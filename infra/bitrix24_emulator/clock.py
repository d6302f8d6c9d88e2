"""Wall clock with an adjustable offset, so tests can age codes and drain limits without sleeping."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone


class Clock:
    """Unix time plus an offset that only moves forward; can be frozen so that only `advance` moves it."""

    def __init__(self, offset_seconds: float = 0.0, *, frozen: bool = False) -> None:
        self._offset = offset_seconds
        self._frozen_at: float | None = time.time() if frozen else None
        self._lock = threading.Lock()

    def now(self) -> float:
        """Current emulated Unix time."""
        base = self._frozen_at if self._frozen_at is not None else time.time()
        return base + self._offset

    def freeze(self) -> float:
        """Stop the clock at the current emulated time (it moves only by `advance`); return that time."""
        with self._lock:
            if self._frozen_at is None:
                self._frozen_at = time.time()
        return self.now()

    def unfreeze(self) -> float:
        """Let the clock run again from where it stands; return the time."""
        with self._lock:
            if self._frozen_at is not None:
                self._offset += self._frozen_at - time.time()
                self._frozen_at = None
        return self.now()

    def advance(self, seconds: float) -> float:
        """Move the clock forward by `seconds`; return the new time."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += seconds
        return self.now()

    @property
    def frozen(self) -> bool:
        """Whether only `advance` moves the clock."""
        return self._frozen_at is not None

    @property
    def offset(self) -> float:
        """Seconds the emulated clock runs ahead of the real one."""
        return self._offset


def parse_utc_offset(text: str) -> timezone:
    """Turn '+03:00' into a fixed-offset tzinfo."""
    sign = -1 if text.startswith("-") else 1
    hours, _, minutes = text.lstrip("+-").partition(":")
    return timezone(sign * timedelta(hours=int(hours), minutes=int(minutes or 0)))


def iso_local(unix_time: float, tz: timezone) -> str:
    """Bitrix24's date format: ISO 8601 in the portal's zone, whole seconds, e.g. 2026-05-14T10:26:32+03:00."""
    return datetime.fromtimestamp(int(unix_time), UTC).astimezone(tz).isoformat()
