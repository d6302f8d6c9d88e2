"""Lead deliveries (ONCRMLEADADD / ONCRMLEADUPDATE / ONCRMLEADDELETE) accepted for publishing.

What arrives (docs/bitrix24-facts.md#f-events-1, #f-events-7, #f-events-8, #f-events-12): a form POST
with `event`, `event_handler_id`, `data[FIELDS][ID]`, `ts` and `auth[...]`, which always holds
`member_id` and `application_token` and, when a user caused the change, that user's `access_token`.
Bitrix24 sends it once per bound row and never again (#f-events-3, #f-events-9).

How far it is trusted: the application token is compared, in constant time, with the verifier stored
with the portal's administrator or system grant. A mismatch, a portal without a verifier or an
inactive portal is refused (403) and nothing is recorded. The employee's access token in `auth` is
never read, stored or published. The token proves the delivery came from the app's context on that
portal; since employees can read it from the app frame (#f-app-6), a Lead* event is a "changed,
re-read it" notice and says nothing but the lead id (and, optionally, fields the connector itself read
from Bitrix24). Copies of one event (same portal, event, lead and `ts`) are recorded once.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from b24connector.events.outbox import OutboxItem
from b24connector.identifiers import is_member_id
from b24connector.numbers import ascii_int
from b24connector.problems import forbidden, invalid, unavailable
from b24connector.settings import LEAD_EVENT_NAMES
from b24connector.vault.errors import VaultUnavailable
from b24connector.vault.hashing import hash_secret
from b24connector.vault.models import HEALTH_ACTIVE

_OPAQUE = re.compile(r"[\x21-\x7e]{1,512}\Z")
_MAX_TS = 2**40  # far beyond any plausible Unix time; keeps the key bounded


@dataclass(frozen=True, slots=True)
class LeadDelivery:
    """One lead event's claims (the token only for the comparison; never kept)."""

    event: str
    member_id: str
    lead_id: int
    portal_ts: int
    application_token: str = field(repr=False)


class LeadOutcome(StrEnum):
    """How a delivery ended (also the answer's status)."""

    ACCEPTED = "accepted"  # recorded; its stream publishes it
    DUPLICATE = "duplicate"  # a copy of a recorded delivery: nothing new
    IGNORED = "ignored"  # authentic, but LEAD_EVENTS does not publish this event


class PortalReader(Protocol):
    """The portal records (vault.PortalStore)."""

    def get(self, member_id: str, *, consistent: bool = False) -> Any:
        """The record (vault.Portal) or None."""
        ...


class Outbox(Protocol):
    """LeadEventsTable (events.outbox.LeadEventOutbox)."""

    def record(self, item: OutboxItem, *, now: float, ttl_seconds: int) -> bool:
        """Write unless present; False for a duplicate."""
        ...


def is_lead_event(name: str) -> bool:
    """True for the CRM lead events this module handles."""
    return name.upper() in LEAD_EVENT_NAMES


def parse_lead_delivery(payload: Mapping[str, Any]) -> LeadDelivery:
    """The form (nested `data[...]`/`auth[...]`) as a LeadDelivery; Problem(INVALID) when malformed."""
    name = str(payload.get("event") or "").upper()
    if not is_lead_event(name):
        raise invalid("event_unsupported", "This event is not handled here.")
    auth = payload.get("auth")
    if not isinstance(auth, Mapping):
        raise invalid("auth_missing", "The event has no auth block.")
    member_id = auth.get("member_id")
    if not is_member_id(member_id):
        raise invalid("member_id_invalid", "Field auth[member_id] is missing or malformed.")
    token = auth.get("application_token")
    if not isinstance(token, str) or not _OPAQUE.match(token):
        raise invalid("application_token_invalid", "Field auth[application_token] is missing or malformed.")
    data = payload.get("data")
    fields = data.get("FIELDS") if isinstance(data, Mapping) else None
    lead_id = ascii_int(fields.get("ID"), minimum=1) if isinstance(fields, Mapping) else None
    if lead_id is None:
        raise invalid("lead_id_invalid", "Field data[FIELDS][ID] must be a lead id.")
    portal_ts = ascii_int(payload.get("ts"), minimum=1, maximum=_MAX_TS)
    if portal_ts is None:
        raise invalid("ts_invalid", "Field ts must be a Unix time.")
    return LeadDelivery(name, member_id, lead_id, portal_ts, token)


class LeadDeliveryDesk:
    """Authenticates lead deliveries and records each portal event once."""

    def __init__(
        self,
        portals: PortalReader,
        outbox: Outbox,
        *,
        published: tuple[str, ...],
        dedup_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._portals = portals
        self._outbox = outbox
        self._published = frozenset(published)
        self._dedup_seconds = dedup_seconds
        self._clock = clock

    def accept(self, delivery: LeadDelivery) -> LeadOutcome:
        """Record an authentic delivery once; Problem(FORBIDDEN) when it is not proven, nothing recorded."""
        try:
            portal = self._portals.get(delivery.member_id)
        except VaultUnavailable:
            raise unavailable("storage_unavailable", "Please try again.") from None
        stored = getattr(portal, "application_token_hash", None) if portal is not None else None
        # Compared as fixed-length SHA-256 hex digests, in constant time, before anything else is told.
        offered = hash_secret(delivery.application_token).encode("ascii")
        proven = hmac.compare_digest((stored or "\0" * 64).encode("ascii", "replace"), offered)
        if portal is None or not stored or not proven or getattr(portal, "health", None) != HEALTH_ACTIVE:
            raise forbidden("event_unauthenticated", "The event is not proven to come from this app.")
        if delivery.event not in self._published:
            return LeadOutcome.IGNORED
        item = OutboxItem(
            delivery.member_id, portal.domain, delivery.event, delivery.lead_id, delivery.portal_ts
        )
        try:
            fresh = self._outbox.record(item, now=self._clock(), ttl_seconds=self._dedup_seconds)
        except VaultUnavailable:
            raise unavailable("storage_unavailable", "The event could not be accepted.") from None
        return LeadOutcome.ACCEPTED if fresh else LeadOutcome.DUPLICATE
