"""Small deterministic stand-ins for the vault's collaborators: a clock and a rescue sink."""

from __future__ import annotations

import threading

from b24connector.vault.errors import VaultUnavailable
from b24connector.vault.rescue import RescueMessage


class FakeClock:
    """A settable clock whose sleep() advances time instead of waiting."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        with self._lock:
            self.now += seconds

    def sleep(self, seconds: float) -> None:
        """Record the wait and move time forward by it."""
        self.sleeps.append(seconds)
        self.advance(seconds)


class RecordingRescueSink:
    """RescueSink keeping messages in a list; `fail` makes send raise like an SQS outage."""

    def __init__(self) -> None:
        self.messages: list[RescueMessage] = []
        self.fail = False

    def send(self, message: RescueMessage) -> None:
        """Keep the message, or fail as SQS would."""
        if self.fail:
            raise VaultUnavailable("SQS SendMessage to the rescue queue failed (InternalError)")
        self.messages.append(message)
