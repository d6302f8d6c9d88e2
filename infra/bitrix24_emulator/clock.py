"""Wall clock with an adjustable offset, so tests can age codes and drain limits without sleeping."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone


class Clock:
    """Unix time plus an offset that only moves forward."""

    def __init__(self, offset_seconds: float = 0.0) -> None:
        self._offset = offset_seconds
        self._lock = threading.Lock()

    def now(self) -> float:
        """Current emulated Unix time."""
        return time.time() + self._offset

    def advance(self, seconds: float) -> float:
        """Move the clock forward by `seconds`; return the new time."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += seconds
        return self.now()

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
