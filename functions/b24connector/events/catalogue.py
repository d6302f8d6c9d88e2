"""The event catalogue: what the connector publishes, and the only way a bus event is built.

Every detail is assembled here from named, typed values (member_id, domain, times, ids, codes, a
lead's CRM fields). No token, code, application token or secret is ever among them: nothing in this
module takes one, and tests/leak_canary.py checks the published details.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SOURCE = "b24connector"

PORTAL_CONNECTED = "PortalConnected"
PORTAL_NEEDS_REAUTH = "PortalNeedsReauth"
PORTAL_UNINSTALLED = "PortalUninstalled"
PORTAL_MOVED = "PortalMoved"
LEAD_CREATED = "LeadCreated"
LEAD_UPDATED = "LeadUpdated"
LEAD_DELETED = "LeadDeleted"

# Bitrix24 event name -> detail-type (docs/bitrix24-facts.md#f-events-8).
LEAD_DETAIL_TYPES = {
    "ONCRMLEADADD": LEAD_CREATED,
    "ONCRMLEADUPDATE": LEAD_UPDATED,
    "ONCRMLEADDELETE": LEAD_DELETED,
}

# EventBridge refuses an entry over 256 KB; a detail this large drops its lead fields instead.
MAX_DETAIL_BYTES = 200_000


@dataclass(frozen=True, slots=True)
class BusEvent:
    """One event for the bus: its detail-type and JSON detail."""

    detail_type: str
    detail: dict[str, Any] = field(hash=False)

    def detail_json(self) -> str:
        """The detail as EventBridge takes it (compact JSON)."""
        return json.dumps(self.detail, separators=(",", ":"), sort_keys=True, default=str)


def iso_time(epoch_seconds: float) -> str:
    """UTC ISO 8601 with seconds, e.g. 2026-12-06T07:49:00Z."""
    return datetime.fromtimestamp(int(epoch_seconds), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_id(*parts: object) -> str:
    """A stable id for one change (the same change published twice has the same id: subscribers dedupe)."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()[:32]


def _base(detail_type: str, member_id: str, domain: str | None, at: float, ident: str) -> dict[str, Any]:
    return {"event_id": ident, "member_id": member_id, "domain": domain, "time": iso_time(at)}


def portal_connected(
    member_id: str, domain: str | None, at: float, *, grant_role: str, previous_state: str, version: int
) -> BusEvent:
    """A new or replaced grant was stored; `grant_role` says whose (system, admin or user)."""
    detail = _base(PORTAL_CONNECTED, member_id, domain, at, event_id(PORTAL_CONNECTED, member_id, version))
    detail.update(grant_role=grant_role, previous_state=previous_state, version=version)
    return BusEvent(PORTAL_CONNECTED, detail)


def portal_needs_reauth(
    member_id: str, domain: str | None, at: float, *, reason: str, version: int
) -> BusEvent:
    """Bitrix24 refused the portal's grant for good; an administrator must authorize the app again."""
    ident = event_id(PORTAL_NEEDS_REAUTH, member_id, version, int(at))
    detail = _base(PORTAL_NEEDS_REAUTH, member_id, domain, at, ident)
    detail.update(reason=reason, version=version)
    return BusEvent(PORTAL_NEEDS_REAUTH, detail)


def portal_uninstalled(
    member_id: str, domain: str | None, at: float, *, clean: bool, version: int
) -> BusEvent:
    """The app was removed from the portal (confirmed with Bitrix24); `clean`: its data was forgotten."""
    detail = _base(
        PORTAL_UNINSTALLED, member_id, domain, at, event_id(PORTAL_UNINSTALLED, member_id, version)
    )
    detail.update(clean=clean, version=version)
    return BusEvent(PORTAL_UNINSTALLED, detail)


def portal_moved(member_id: str, at: float, *, old_domain: str, new_domain: str) -> BusEvent:
    """The portal answers at a new address (a followed rename)."""
    ident = event_id(PORTAL_MOVED, member_id, old_domain, new_domain, int(at))
    detail = _base(PORTAL_MOVED, member_id, new_domain, at, ident)
    detail.update(old_domain=old_domain, new_domain=new_domain)
    return BusEvent(PORTAL_MOVED, detail)


def lead_changed(
    bitrix_event: str, member_id: str, domain: str | None, *, lead_id: int, portal_ts: int, key: str
) -> BusEvent:
    """A lead was created, updated or deleted on the portal (`portal_ts`: when the portal queued it)."""
    detail_type = LEAD_DETAIL_TYPES[bitrix_event]
    detail = _base(detail_type, member_id, domain, portal_ts, event_id(detail_type, key))
    detail["lead_id"] = lead_id
    return BusEvent(detail_type, detail)


def with_fields(event: BusEvent, fields: dict[str, Any] | None, status: str) -> BusEvent:
    """`event` with the lead's fields (`status`: "ok", "not_found", "unavailable" or "too_large")."""
    detail = dict(event.detail)
    if fields is not None and status == "ok":
        detail["fields"] = fields
        if len(json.dumps(detail, default=str)) > MAX_DETAIL_BYTES:
            detail.pop("fields")
            status = "too_large"
    detail["fields_status"] = status
    return BusEvent(event.detail_type, detail)
