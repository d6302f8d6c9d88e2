"""Lifecycle events from PortalsTable's stream: each committed change of a portal record, old vs new.

The stream is an outbox: an event is published exactly when its change was committed, by whichever
function made it (install page, callback, LifecycleFunction, a refresh, a followed rename), and a
failed publish is retried by the stream, never lost. Refresh commits, leases and subscription updates
change neither the grant, the health nor the domain, so they publish nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from b24connector.events import catalogue
from b24connector.events.catalogue import BusEvent

_ACTIVE = "active"
_NEEDS_REAUTH = "needs_reauth"
_UNINSTALLED = "uninstalled"
_REASON_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _text(image: Mapping[str, Any] | None, name: str) -> str | None:
    value = (image or {}).get(name)
    return value if isinstance(value, str) and value else None


def _newest_grant(image: Mapping[str, Any] | None) -> str | None:
    digests = (image or {}).get("grant_digests")
    return str(digests[0]) if isinstance(digests, list | tuple) and digests else None


def _reason(image: Mapping[str, Any]) -> str:
    raw = _text(image, "reauth_reason") or "unknown"
    return "".join(ch for ch in raw if ch in _REASON_CHARS)[:64] or "unknown"


def portal_events(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[BusEvent]:
    """The catalogue events one committed change of a portal record means (often none)."""
    if new is None:
        return []  # a deleted item: the connector never deletes portal records (uninstall keeps a tombstone)
    member_id = _text(new, "member_id") or _text(old, "member_id")
    if member_id is None:
        return []
    health, before = _text(new, "health"), _text(old, "health")
    version = _int(new.get("version"))
    at = _int(new.get("updated_at")) or _int(new.get("uninstalled_at"))
    domain = _text(new, "domain") or _text(old, "domain")
    events: list[BusEvent] = []
    new_grant = _newest_grant(new) is not None and _newest_grant(new) != _newest_grant(old)
    if new_grant and health == _ACTIVE:
        events.append(
            catalogue.portal_connected(
                member_id,
                _text(new, "domain"),
                at,
                grant_role=_text(new, "grant_role") or "user",
                previous_state=before or "none",
                version=version,
            )
        )
    if health == _NEEDS_REAUTH and before != _NEEDS_REAUTH:
        events.append(
            catalogue.portal_needs_reauth(member_id, domain, at, reason=_reason(new), version=version)
        )
    if health == _UNINSTALLED and before != _UNINSTALLED:
        # A clean uninstall removes the domain with everything else that describes the tenant.
        clean = _text(new, "domain") is None
        at = _int(new.get("uninstalled_at")) or at
        events.append(catalogue.portal_uninstalled(member_id, domain, at, clean=clean, version=version))
    old_domain, new_domain = _text(old, "domain"), _text(new, "domain")
    if (
        not new_grant
        and health == _ACTIVE
        and before == _ACTIVE
        and old_domain is not None
        and new_domain is not None
        and old_domain != new_domain
    ):
        events.append(catalogue.portal_moved(member_id, at, old_domain=old_domain, new_domain=new_domain))
    return events
