"""Lifecycle events read from PortalsTable stream images: which committed change means which event."""

from __future__ import annotations

from typing import Any

from b24connector.events.portal_changes import portal_events

BASE: dict[str, Any] = {
    "member_id": "m1",
    "version": 3,
    "health": "active",
    "domain": "acme.bitrix24.com",
    "grant_role": "admin",
    "grant_digests": ["g2", "g1"],
    "updated_at": 1_800_000_000,
    "token_ciphertext": b"sealed",
    "application_token_hash": "ab" * 32,
}


def image(**changes: Any) -> dict[str, Any]:
    """BASE with `changes`; a None value removes the attribute."""
    out = {**BASE, **changes}
    return {k: v for k, v in out.items() if v is not None}


def test_a_first_grant_is_portal_connected_saying_whose() -> None:
    (event,) = portal_events(None, image(version=1, grant_digests=["g1"], grant_role="system"))
    assert event.detail_type == "PortalConnected"
    assert event.detail["grant_role"] == "system"
    assert event.detail["previous_state"] == "none"
    assert event.detail["member_id"] == "m1"
    assert event.detail["domain"] == "acme.bitrix24.com"
    assert event.detail["time"] == "2027-01-15T08:00:00Z"


def test_a_replaced_grant_is_connected_again_and_a_refresh_is_nothing() -> None:
    old = image(version=2, grant_digests=["g1"])
    (replaced,) = portal_events(old, image())
    assert replaced.detail["previous_state"] == "active"
    # A refresh commit: new version and ciphertext, same grant, same health, same domain.
    assert portal_events(image(), image(version=4, token_ciphertext=b"other", updated_at=1_800_000_100)) == []
    # A lease or a subscription update changes nothing the catalogue reports either.
    assert portal_events(image(), image(lease_owner="x", subscription_state="bound")) == []


def test_needs_reauth_carries_the_reason_code_once() -> None:
    flagged = image(health="needs_reauth", reauth_reason="invalid_grant")
    (event,) = portal_events(image(), flagged)
    assert event.detail_type == "PortalNeedsReauth"
    assert event.detail["reason"] == "invalid_grant"
    assert (
        portal_events(flagged, image(health="needs_reauth", reauth_reason="invalid_grant", updated_at=2))
        == []
    )
    (unknown,) = portal_events(image(), image(health="needs_reauth", reauth_reason="<bad code>"))
    assert unknown.detail["reason"] == "badcode"


def test_uninstalled_carries_the_clean_flag() -> None:
    kept = image(version=4, health="uninstalled", token_ciphertext=None, uninstalled_at=1_800_000_500)
    (event,) = portal_events(image(), kept)
    assert event.detail_type == "PortalUninstalled"
    assert event.detail["clean"] is False
    clean = {"member_id": "m1", "version": 4, "health": "uninstalled", "uninstalled_at": 1_800_000_500}
    (cleaned,) = portal_events(image(), clean)
    assert cleaned.detail["clean"] is True
    assert cleaned.detail["domain"] == "acme.bitrix24.com"  # from the old image: the event still says which
    assert portal_events(kept, clean) == []  # already uninstalled: a clean-up of a kept record is no event


def test_a_rename_is_portal_moved_with_both_domains() -> None:
    (event,) = portal_events(image(), image(domain="new.bitrix24.com"))
    assert event.detail_type == "PortalMoved"
    assert (event.detail["old_domain"], event.detail["new_domain"]) == (
        "acme.bitrix24.com",
        "new.bitrix24.com",
    )
    assert event.detail["domain"] == "new.bitrix24.com"


def test_a_reinstall_after_uninstall_is_connected() -> None:
    tomb = {"member_id": "m1", "version": 4, "health": "uninstalled", "grant_digests": ["g2", "g1"]}
    (event,) = portal_events(tomb, image(version=5, grant_digests=["g3", "g2", "g1"]))
    assert event.detail_type == "PortalConnected"
    assert event.detail["previous_state"] == "uninstalled"


def test_the_same_change_has_the_same_event_id_and_no_detail_names_a_secret() -> None:
    first = portal_events(None, image(version=1, grant_digests=["g1"]))[0]
    again = portal_events(None, image(version=1, grant_digests=["g1"]))[0]
    assert first.detail["event_id"] == again.detail["event_id"]
    text = first.detail_json()
    for secret in ("sealed", "ab" * 32, "token", "g1"):
        assert secret not in text
