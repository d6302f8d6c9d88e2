"""Small deterministic stand-ins for the vault's collaborators (a clock, a rescue sink) and a reader."""

from __future__ import annotations

import threading

from b24connector.token_refresh.rescue import RescueMessage
from b24connector.tokens import TokenSet
from b24connector.vault.errors import GrantNeedsReauth, PortalNotStored, VaultUnavailable
from b24connector.vault.store import PortalStore


def current_tokens(store: PortalStore, member_id: str) -> TokenSet:
    """The stored pair of an active portal, read as a container would (no KMS call once it saw the version)."""
    portal = store.get(member_id)
    if portal is None:
        raise PortalNotStored(f"no portal {member_id}")
    if not portal.is_active:
        raise GrantNeedsReauth(member_id, portal.health)
    return store.tokens(portal)


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
