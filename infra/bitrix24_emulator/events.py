"""Event handlers bound with event.bind, the install-URL registrations, and one-shot delivery.

Bitrix24 (docs/bitrix24-facts.md F-APP-1..3, F-EVENTS-2/3): the install URL is registered only for ONAPPINSTALL (API-only
apps) and ONAPPUSERREADY (Market apps); every other event reaches an app only through `event.bind`.
An event is POSTed once, form-encoded, and never retried, whatever the handler answers.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

# Events the emulated portal knows, with the scope an app needs to bind them (rest `_events` lists).
KNOWN_EVENTS: dict[str, str | None] = {
    "ONAPPINSTALL": None,
    "ONAPPUNINSTALL": None,
    "ONAPPUPDATE": None,
    "ONAPPUSERREADY": None,
    "ONCRMLEADADD": "crm",
    "ONCRMLEADUPDATE": "crm",
    "ONCRMLEADDELETE": "crm",
}

# The delivery log keeps the newest entries only.
_MAX_LOG = 10_000


@dataclass(frozen=True)
class Binding:
    """One row of the app's event table: event, handler URL and the user whose auth it carries (0 = actor)."""

    binding_id: int
    event: str
    handler: str
    user_id: int

    def public(self) -> dict[str, Any]:
        """The event.get row (docs/bitrix24-facts.md F-BIND-8)."""
        if not self.handler:
            return {"event": self.event, "connector_id": "", "offline": 1}
        return {"event": self.event, "handler": self.handler, "auth_type": str(self.user_id), "offline": 0}


@dataclass
class Delivery:
    """One POST the portal makes to a handler; carries the form fields until it is sent."""

    event: str
    handler: str
    fields: list[tuple[str, str]] = field(repr=False)
    binding_id: int | None = None
    auth_user_id: int | None = None


class BindingTable:
    """The one app's bound handlers. Not locked: the caller holds the state lock."""

    def __init__(self) -> None:
        self._rows: list[Binding] = []
        self._ids = itertools.count(1)

    def add(self, event: str, handler: str, user_id: int) -> Binding:
        """Add a row; ValueError when the same (event, handler, user) row exists (checkUniq)."""
        for row in self._rows:
            if (row.event, row.handler, row.user_id) == (event, handler, user_id):
                raise ValueError("Handler already binded")
        row = Binding(next(self._ids), event, handler, user_id)
        self._rows.append(row)
        return row

    def remove(self, event: str, handler: str, user_id: int | None) -> int:
        """Delete matching rows (user_id None = any user); return how many."""
        keep, gone = [], 0
        for row in self._rows:
            if row.event == event and row.handler == handler and (user_id is None or row.user_id == user_id):
                gone += 1
            else:
                keep.append(row)
        self._rows = keep
        return gone

    def rows(self, *, user_id: int | None = None) -> list[Binding]:
        """Rows in id order (user_id given: only that user's rows)."""
        return [r for r in self._rows if user_id is None or r.user_id == user_id]

    def for_event(self, event: str) -> list[Binding]:
        """Online rows that receive `event` (offline rows have no handler)."""
        return [r for r in self._rows if r.event == event and r.handler]

    def clear(self) -> None:
        """Drop every row (the app was uninstalled: EventTable::deleteByApp)."""
        self._rows.clear()


class DeliveryLog:
    """What was sent to whom and what came back (no tokens). Not locked: the caller holds the state lock."""

    def __init__(self) -> None:
        self.entries: deque[dict[str, Any]] = deque(maxlen=_MAX_LOG)

    def record(self, delivery: Delivery, outcome: dict[str, Any], sent_at: float) -> dict[str, Any]:
        """Log one attempt; returns the public entry."""
        entry = {
            "event": delivery.event,
            "handler": delivery.handler,
            "binding_id": delivery.binding_id,
            "auth_user_id": delivery.auth_user_id,
            "status": outcome.get("status"),
            "error": outcome.get("error"),
            "sent_at": sent_at,
            "elapsed_seconds": outcome.get("elapsed_seconds"),
            "sent_fields": [name for name, _ in delivery.fields],
        }
        self.entries.append(entry)
        return entry


class Dispatcher:
    """A background sender for events raised inside REST calls (the portal's event queue): one try each."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._queue: deque[Delivery] = deque()
        self._busy = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def submit(self, deliveries: list[Delivery]) -> None:
        """Queue deliveries; they are sent in order, once."""
        if not deliveries:
            return
        with self._cond:
            if self._stopped:
                return
            self._queue.extend(deliveries)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="b24-emulator-events", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                delivery = self._queue.popleft()
                self._busy += 1
            try:
                self._send(delivery)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until every queued delivery was sent (True) or `timeout` passed (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def pending(self) -> int:
        """Deliveries queued or being sent."""
        with self._cond:
            return len(self._queue) + self._busy

    def stop(self) -> None:
        """Stop the sender; queued deliveries are dropped."""
        with self._cond:
            self._stopped = True
            self._queue.clear()
            self._cond.notify_all()
