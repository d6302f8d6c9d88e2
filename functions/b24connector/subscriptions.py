"""The portal's event subscriptions: what must be bound with event.bind, checked after every grant.

Bitrix24 registers the install URL only for ONAPPINSTALL (API-only apps) and ONAPPUSERREADY (Market
apps); every other event, ONAPPUNINSTALL included, reaches an app only through event.bind
(docs/bitrix24-facts.md#f-app-1, #f-app-3). So after a grant is stored, LifecycleFunction reads event.get
and binds what is missing to the stack's /events URL. A duplicate bind answers ERROR_CORE "Handler
already binded", which means the work is done. Bindings are per user for non-administrators, so a
binding made with an employee's grant delivers through that employee's row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from b24connector.bitrix24.errors import AccessDenied, Bitrix24Error, RestError, TransientError
from b24connector.observability import count, logger
from b24connector.vault.errors import GrantNeedsReauth, PortalNotStored
from b24connector.vault.models import SUBSCRIPTION_BOUND, SUBSCRIPTION_FAILED

_ALREADY_BOUND = "already binded"  # Bitrix24's own spelling (docs/bitrix24-facts.md#f-bind-7)
_WORK_SECONDS = 20.0


class SubscriptionState(StrEnum):
    """How one check ended."""

    BOUND = "bound"  # every configured event is bound to our handler
    SKIPPED = "skipped"  # the portal is gone or not active: nothing to bind with
    FAILED = "failed"  # Bitrix24 refused for good (e.g. no right to bind): recorded, not retried


@dataclass(frozen=True, slots=True)
class SubscriptionResult:
    """What a check found and did."""

    state: SubscriptionState
    bound_now: tuple[str, ...] = ()
    error: str | None = None


class _Opened(Protocol):
    @property
    def context(self) -> Any: ...


class Opener(Protocol):
    """Opens a portal's REST context with renewing tokens (leads.VaultPortalOpener)."""

    def open(self, *, member_id: str | None, domain: str | None, deadline: float | None) -> _Opened:
        """The portal's REST context."""
        ...


class RestCaller(Protocol):
    """The REST client (bitrix24.rest.RestClient)."""

    def call(self, portal: Any, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """One REST method; its response has `.result`."""
        ...


class SubscriptionStore(Protocol):
    """Where the subscription state is recorded (vault.PortalStore)."""

    def record_subscription(
        self, member_id: str, *, state: str, events: tuple[str, ...], error: str | None = None
    ) -> bool:
        """Record the state; False when the portal is gone."""
        ...


def bound_events(answer: object, handler: str) -> set[str]:
    """Upper-cased names of the events event.get lists as bound to `handler`."""
    rows = answer if isinstance(answer, list) else []
    found = set()
    for row in rows:
        if not isinstance(row, Mapping) or str(row.get("offline", "0")) not in ("0", "", "False"):
            continue
        if str(row.get("handler", "")).strip() == handler and isinstance(row.get("event"), str):
            found.add(str(row["event"]).upper())
    return found


class Subscriber:
    """Makes sure a portal has the configured events bound to the stack's events URL."""

    def __init__(
        self,
        opener: Opener,
        rest: RestCaller,
        store: SubscriptionStore,
        *,
        events_url: str,
        events: Iterable[str],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._opener = opener
        self._rest = rest
        self._store = store
        self._events_url = events_url
        self._events = tuple(dict.fromkeys(e.upper() for e in events))
        self._monotonic = monotonic

    def ensure(self, member_id: str) -> SubscriptionResult:
        """Bind what is missing; TransientError or VaultUnavailable when worth another try."""
        if not self._events_url:
            return self._fail(member_id, (), "events_url_missing")
        try:
            opened = self._opener.open(
                member_id=member_id, domain=None, deadline=self._monotonic() + _WORK_SECONDS
            )
        except (PortalNotStored, GrantNeedsReauth):
            return SubscriptionResult(SubscriptionState.SKIPPED)
        portal = opened.context
        try:
            present = bound_events(self._rest.call(portal, "event.get").result, self._events_url)
            bound_now = []
            for event in self._events:
                if event in present:
                    continue
                self._bind(portal, event)
                bound_now.append(event)
                present.add(event)
        except TransientError:
            raise
        except AccessDenied as exc:
            return self._fail(member_id, tuple(sorted(present & set(self._events))), _code(exc))
        except Bitrix24Error as exc:
            return self._fail(member_id, (), _code(exc))
        events = tuple(sorted(present & set(self._events)))
        self._store.record_subscription(member_id, state=SUBSCRIPTION_BOUND, events=events)
        if bound_now:
            count("EventsBound", len(bound_now))
        logger.info("subscriptions checked", extra={"member_id": member_id, "bound_now": bound_now})
        return SubscriptionResult(SubscriptionState.BOUND, tuple(bound_now))

    def _bind(self, portal: Any, event: str) -> None:
        try:
            self._rest.call(portal, "event.bind", {"event": event, "handler": self._events_url})
        except RestError as exc:
            if _ALREADY_BOUND in exc.description.lower():
                return  # bound in the meantime (another check, or a row event.get did not show us)
            raise

    def _fail(self, member_id: str, events: tuple[str, ...], error: str) -> SubscriptionResult:
        self._store.record_subscription(member_id, state=SUBSCRIPTION_FAILED, events=events, error=error)
        logger.warning("subscriptions failed", extra={"member_id": member_id, "error": error})
        count("SubscriptionFailed")
        return SubscriptionResult(SubscriptionState.FAILED, error=error)


def _code(exc: Bitrix24Error) -> str:
    """A short, safe code for the record (server texts are never stored)."""
    return "".join(ch for ch in exc.code if ch.isascii() and (ch.isalnum() or ch == "_"))[:64] or "ERROR"
