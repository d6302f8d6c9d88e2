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
from b24connector.vault.models import HEALTH_ACTIVE, HEALTH_NEEDS_REAUTH, HEALTH_UNINSTALLED

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
    new_grant = _newest_grant(new) is not None and _newest_grant(new) != _newest_grant(old)
    found = [
        _connected(member_id, old, new) if new_grant else None,
        _needs_reauth(member_id, old, new),
        _uninstalled(member_id, old, new),
        None if new_grant else _moved(member_id, old, new),
    ]
    return [event for event in found if event is not None]


def _at(new: Mapping[str, Any]) -> int:
    return _int(new.get("updated_at")) or _int(new.get("uninstalled_at"))


def _connected(member_id: str, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> BusEvent | None:
    if _text(new, "health") != HEALTH_ACTIVE:
        return None
    return catalogue.portal_connected(
        member_id,
        _text(new, "domain"),
        _at(new),
        grant_role=_text(new, "grant_role") or "user",
        previous_state=_text(old, "health") or "none",
        version=_int(new.get("version")),
    )


def _needs_reauth(member_id: str, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> BusEvent | None:
    if _text(new, "health") != HEALTH_NEEDS_REAUTH or _text(old, "health") == HEALTH_NEEDS_REAUTH:
        return None
    domain = _text(new, "domain") or _text(old, "domain")
    return catalogue.portal_needs_reauth(
        member_id, domain, _at(new), reason=_reason(new), version=_int(new.get("version"))
    )


def _uninstalled(member_id: str, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> BusEvent | None:
    if _text(new, "health") != HEALTH_UNINSTALLED or _text(old, "health") == HEALTH_UNINSTALLED:
        return None
    # A clean uninstall removes the domain with everything else that describes the tenant.
    clean = _text(new, "domain") is None
    at = _int(new.get("uninstalled_at")) or _at(new)
    domain = _text(new, "domain") or _text(old, "domain")
    return catalogue.portal_uninstalled(member_id, domain, at, clean=clean, version=_int(new.get("version")))


def _moved(member_id: str, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> BusEvent | None:
    old_domain, new_domain = _text(old, "domain"), _text(new, "domain")
    both_active = _text(new, "health") == HEALTH_ACTIVE and _text(old, "health") == HEALTH_ACTIVE
    if not both_active or old_domain is None or new_domain is None or old_domain == new_domain:
        return None
    return catalogue.portal_moved(member_id, _at(new), old_domain=old_domain, new_domain=new_domain)
