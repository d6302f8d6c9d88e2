"""PortalStore: grants, versions, health, lease, compare-and-set commits and the due index."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest

from b24connector.vault.errors import GrantNeedsReauth
from b24connector.vault.models import HEALTH_ACTIVE, HEALTH_NEEDS_REAUTH, HEALTH_UNINSTALLED, due_shard_of
from tests.support.vault_unit import UnitVault

DAY = 86_400
APP_TOKEN_A = "app-token-member-a"
APP_TOKEN_A_HASH = hashlib.sha256(APP_TOKEN_A.encode()).hexdigest()


def _all_strings(value: Any) -> list[str]:
    """Every string or decoded bytes inside a raw DynamoDB item (all attribute types)."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in _all_strings(v)] + [str(k) for k in value]
    if isinstance(value, list):
        return [s for v in value for s in _all_strings(v)]
    if isinstance(value, bytes):
        return [value.decode("latin-1")]
    return [str(value)]


def test_raw_items_hold_no_plaintext_token(vault: UnitVault) -> None:
    # Given two portals, one refreshed once (three pairs ever issued)
    _, grant_a = vault.install("member-a", "a.bitrix24.com")
    _, grant_b = vault.install("member-b", "b.bitrix24.com")
    vault.clock.advance(3600)
    refreshed = vault.coordinator().fresh_access_token("member-a", grant_a.access_token)
    # When every attribute of every raw item is searched
    haystack = "\n".join(
        s for item in vault.stack.raw_items(vault.stack.portals_table) for s in _all_strings(item)
    )
    # Then no token string appears anywhere, in any encoding DynamoDB returns
    for tokens in (grant_a, grant_b, refreshed):
        for secret in (tokens.access_token, tokens.refresh_token):
            assert secret not in haystack


def test_raw_items_hold_only_a_verifier_of_the_application_token(vault: UnitVault) -> None:
    # Given a portal installed with an application_token, then re-granted and uninstalled (no clean)
    vault.install("member-a", "a.bitrix24.com")
    vault.portals.save_grant(
        vault.oauth.grant("member-a", "a.bitrix24.com"), domain="a.bitrix24.com", role="admin"
    )
    vault.portals.mark_uninstalled("member-a", clean=False)
    # When every attribute of the raw item is searched
    (item,) = vault.stack.raw_items(vault.stack.portals_table)
    haystack = "\n".join(_all_strings(item))
    # Then the token itself is nowhere, only its SHA-256 under its own attribute name
    assert APP_TOKEN_A not in haystack
    assert "application_token" not in item
    assert item["application_token_hash"] == {"S": APP_TOKEN_A_HASH}


def test_first_grant_is_version_1_and_active_with_due_index_fields(vault: UnitVault) -> None:
    portal, grant = vault.install("member-a", "A.Bitrix24.com")
    assert portal.version == 1
    assert portal.health == HEALTH_ACTIVE
    assert portal.domain == "a.bitrix24.com"
    assert portal.application_token_hash == APP_TOKEN_A_HASH
    assert portal.client_endpoint == grant.client_endpoint
    assert portal.due_shard == due_shard_of("member-a", 4)
    assert portal.refresh_due_at == grant.obtained_at + 21 * DAY
    assert vault.portals.tokens(portal).refresh_token == grant.refresh_token


def test_new_grant_on_existing_portal_is_version_plus_one_keeping_application_token(vault: UnitVault) -> None:
    vault.install("member-a")
    second = vault.oauth.grant("member-a", "a.bitrix24.com")
    portal = vault.portals.save_grant(second, domain="a.bitrix24.com", role="admin")
    assert portal.version == 2
    assert portal.application_token_hash == APP_TOKEN_A_HASH
    assert vault.portals.tokens(portal).access_token == second.access_token


def test_replayed_grant_changes_nothing(vault: UnitVault) -> None:
    # Given an installed portal whose chain was refreshed since
    _, grant = vault.install("member-a")
    vault.clock.advance(3600)
    fresh = vault.coordinator().fresh_access_token("member-a", grant.access_token)
    # When the original install payload arrives again
    portal = vault.portals.save_grant(grant, domain="a.bitrix24.com", role="admin", application_token="other")
    # Then the live chain and version stay
    assert portal.version == 2
    assert portal.application_token_hash == APP_TOKEN_A_HASH
    assert vault.portals.tokens(portal).refresh_token == fresh.refresh_token


def test_repr_of_portal_hides_ciphertext_and_application_token(vault: UnitVault) -> None:
    portal, _ = vault.install()
    text = repr(portal)
    assert "app-token" not in text
    assert APP_TOKEN_A_HASH not in text
    assert "token_ciphertext" not in text


def test_get_by_domain_prefers_the_active_portal(vault: UnitVault) -> None:
    vault.install("old-member", "shared.bitrix24.com")
    vault.portals.mark_uninstalled("old-member", clean=False)
    vault.clock.advance(10)
    vault.install("new-member", "shared.bitrix24.com")
    found = vault.portals.get_by_domain("SHARED.bitrix24.com")
    assert found is not None
    assert found.member_id == "new-member"
    assert vault.portals.get_by_domain("nowhere.bitrix24.com") is None


def test_needs_reauth_is_conditional_on_version_and_leaves_the_due_index(vault: UnitVault) -> None:
    portal, _ = vault.install()
    assert not vault.portals.mark_needs_reauth("member-a", portal.version + 1)
    assert vault.portals.mark_needs_reauth("member-a", portal.version)
    flagged = vault.portals.get("member-a", consistent=True)
    assert flagged is not None
    assert flagged.health == HEALTH_NEEDS_REAUTH
    assert flagged.version == portal.version
    assert flagged.due_shard is None
    assert flagged.refresh_due_at is None
    assert flagged.token_ciphertext is not None  # a rescue for this version may still land
    assert not vault.portals.mark_needs_reauth("member-a", portal.version)  # only active ones


def test_uninstall_keeps_tenant_facts_but_drops_tokens(vault: UnitVault) -> None:
    vault.install()
    portal = vault.portals.mark_uninstalled("member-a", clean=False)
    assert portal is not None
    assert portal.health == HEALTH_UNINSTALLED
    assert portal.version == 2
    assert portal.token_ciphertext is None
    assert portal.domain == "a.bitrix24.com"
    assert portal.application_token_hash == APP_TOKEN_A_HASH
    assert portal.refresh_due_at is None
    with pytest.raises(GrantNeedsReauth):
        vault.portals.tokens(portal)


def test_clean_uninstall_leaves_only_a_tombstone(vault: UnitVault) -> None:
    vault.install()
    portal = vault.portals.mark_uninstalled("member-a", clean=True)
    assert portal is not None
    (raw,) = vault.stack.raw_items(vault.stack.portals_table)
    assert set(raw) == {"member_id", "version", "health", "uninstalled_at", "updated_at", "grant_digests"}
    assert raw["version"] == {"N": "2"}
    assert vault.portals.get_by_domain("a.bitrix24.com") is None
    assert vault.portals.mark_uninstalled("unknown", clean=True) is None


def test_a_replayed_uninstall_writes_nothing_but_a_clean_one_still_clears_kept_data(vault: UnitVault) -> None:
    vault.install()
    assert vault.portals.mark_uninstalled("member-a", clean=False) is not None
    kept = vault.stack.raw_items(vault.stack.portals_table)
    vault.clock.advance(60)
    assert vault.portals.mark_uninstalled("member-a", clean=False) is None
    assert vault.stack.raw_items(vault.stack.portals_table) == kept
    cleaned = vault.portals.mark_uninstalled("member-a", clean=True)
    assert cleaned is not None
    assert cleaned.version == 3
    assert cleaned.domain is None
    tombstone = vault.stack.raw_items(vault.stack.portals_table)
    vault.clock.advance(60)
    assert vault.portals.mark_uninstalled("member-a", clean=True) is None
    assert vault.portals.mark_uninstalled("member-a", clean=False) is None
    assert vault.stack.raw_items(vault.stack.portals_table) == tombstone


def test_reinstall_after_clean_uninstall_continues_the_version(vault: UnitVault) -> None:
    vault.install()
    vault.portals.mark_uninstalled("member-a", clean=True)
    portal, _ = vault.install()
    assert portal.version == 3
    assert portal.health == HEALTH_ACTIVE


def test_lease_is_exclusive_until_it_expires(vault: UnitVault) -> None:
    portal, _ = vault.install()
    assert vault.portals.take_lease("member-a", portal.version, "w1", lease_seconds=30)
    assert not vault.portals.take_lease("member-a", portal.version, "w2", lease_seconds=30)
    vault.clock.advance(31)
    assert vault.portals.take_lease("member-a", portal.version, "w2", lease_seconds=30)
    assert not vault.portals.release_lease("member-a", "w1")  # w1's lease expired and moved on
    assert vault.portals.release_lease("member-a", "w2")
    assert vault.portals.take_lease("member-a", portal.version, "w3", lease_seconds=30)


def test_releasing_with_undo_restores_the_attempt_only_for_the_lease_holder(vault: UnitVault) -> None:
    # Given a due portal whose scheduled attempt was recorded by taking the lease
    portal, _ = vault.install()
    vault.clock.advance(22 * DAY)
    snapshot = vault.portals.get("member-a", consistent=True)
    assert snapshot is not None
    assert vault.portals.take_lease(
        "member-a", portal.version, "w1", lease_seconds=30, defer_due_until=int(vault.clock()) + DAY
    )
    # When another worker took the lease over after w1's expired, w1's undo changes nothing
    vault.clock.advance(31)
    assert vault.portals.take_lease("member-a", portal.version, "w2", lease_seconds=30)
    taken_over = vault.stack.raw_items(vault.stack.portals_table)
    assert not vault.portals.release_lease("member-a", "w1", undo_attempt_of=snapshot)
    assert vault.stack.raw_items(vault.stack.portals_table) == taken_over
    # And the holder's undo puts back the attempt time and the due time of the snapshot
    assert vault.portals.release_lease("member-a", "w2", undo_attempt_of=snapshot)
    restored = vault.portals.get("member-a", consistent=True)
    assert restored is not None
    assert (restored.last_refresh_attempt_at, restored.refresh_due_at) == (None, snapshot.refresh_due_at)
    assert (restored.lease_owner, restored.lease_expires_at) == (None, None)
    # An earlier attempt on record is put back as it was, not removed
    assert vault.portals.take_lease("member-a", portal.version, "w3", lease_seconds=30)
    with_attempt = vault.portals.get("member-a", consistent=True)
    assert with_attempt is not None
    vault.clock.advance(60)
    assert vault.portals.take_lease("member-a", portal.version, "w4", lease_seconds=30)
    assert vault.portals.release_lease("member-a", "w4", undo_attempt_of=with_attempt)
    again = vault.portals.get("member-a", consistent=True)
    assert again is not None
    assert again.last_refresh_attempt_at == with_attempt.last_refresh_attempt_at


def test_lease_needs_the_expected_version_and_an_active_portal(vault: UnitVault) -> None:
    portal, _ = vault.install()
    assert not vault.portals.take_lease("member-a", portal.version + 1, "w1", lease_seconds=30)
    vault.portals.mark_needs_reauth("member-a", portal.version)
    assert not vault.portals.take_lease("member-a", portal.version, "w1", lease_seconds=30)


def test_commit_is_a_compare_and_set_on_version(vault: UnitVault) -> None:
    portal, grant = vault.install()
    vault.portals.take_lease("member-a", portal.version, "w1", lease_seconds=30)
    vault.clock.advance(DAY)
    new = vault.oauth.refresh(grant.refresh_token)
    sealed = vault.cipher.seal(new)
    committed = vault.portals.commit_refresh("member-a", portal.version, sealed)
    assert committed is not None
    assert committed.version == portal.version + 1
    assert committed.lease_owner is None
    assert committed.refresh_due_at == new.obtained_at + 21 * DAY
    assert vault.portals.tokens(committed).access_token == new.access_token
    # the same base version can never be committed twice
    assert vault.portals.commit_refresh("member-a", portal.version, sealed) is None
    other = dataclasses.replace(sealed, member_id="member-b")
    with pytest.raises(ValueError, match="another portal"):
        vault.portals.commit_refresh("member-a", committed.version, other)


def test_due_portals_reads_every_shard_and_only_due_active_portals(vault: UnitVault) -> None:
    # Given 12 portals spread over 4 shards, installed 22 days ago, and 2 fresh ones
    members = [f"member-{i}" for i in range(12)]
    for member in members:
        vault.install(member, f"{member}.bitrix24.com")
    assert len({due_shard_of(m, 4) for m in members}) == 4
    vault.clock.advance(22 * DAY)
    vault.install("fresh-1")
    vault.install("fresh-2")
    # and one flagged and one uninstalled
    vault.portals.mark_needs_reauth("member-0", 1)
    vault.portals.mark_uninstalled("member-1", clean=False)
    # When the sweep asks for due portals
    due = dict(vault.portals.due_portals(vault.clock(), limit=100))
    # Then exactly the 10 due active ones come back, with their versions
    assert due == dict.fromkeys(members[2:], 1)
    # And the limit holds across shards
    assert len(list(vault.portals.due_portals(vault.clock(), limit=3))) == 3


def test_due_portals_never_scans(vault: UnitVault, monkeypatch: pytest.MonkeyPatch) -> None:
    vault.install()

    def no_scan(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Scan is not allowed")

    monkeypatch.setattr(vault.portals.model, "scan", no_scan)
    vault.clock.advance(22 * DAY)
    assert list(vault.portals.due_portals(vault.clock(), limit=10)) == [("member-a", 1)]


# --- portal rename --------------------------------------------------------------------------------


def test_record_move_changes_only_the_address_and_moves_the_domain_index(vault: UnitVault) -> None:
    # Given an installed portal
    portal, grant = vault.install("member-a", "old.bitrix24.com")
    (before,) = vault.stack.raw_items(vault.stack.portals_table)
    vault.clock.advance(60)
    # When its rename is recorded
    moved = vault.portals.record_move(
        "member-a", domain="New.Bitrix24.com", client_endpoint="https://new.bitrix24.com/rest/"
    )
    # Then domain and client_endpoint change, and nothing of the token chain does
    assert moved is not None
    assert (moved.domain, moved.client_endpoint) == ("new.bitrix24.com", "https://new.bitrix24.com/rest/")
    (after,) = vault.stack.raw_items(vault.stack.portals_table)
    changed = {name for name in {*before, *after} if before.get(name) != after.get(name)}
    assert changed == {"domain", "client_endpoint", "updated_at"}
    assert after["version"] == before["version"] == {"N": str(portal.version)}
    assert vault.portals.tokens(moved).refresh_token == grant.refresh_token
    # And the portal is found under its new domain only
    found = vault.portals.get_by_domain("new.bitrix24.com")
    assert found is not None
    assert found.member_id == "member-a"
    assert vault.portals.get_by_domain("old.bitrix24.com") is None


@pytest.mark.parametrize("state", ["missing", "needs_reauth", "uninstalled"])
def test_record_move_needs_an_existing_active_portal(vault: UnitVault, state: str) -> None:
    portal, _ = vault.install("member-a", "old.bitrix24.com")
    if state == "needs_reauth":
        vault.portals.mark_needs_reauth("member-a", portal.version)
    elif state == "uninstalled":
        vault.portals.mark_uninstalled("member-a", clean=False)
    member_id = "nobody" if state == "missing" else "member-a"
    before = vault.stack.raw_items(vault.stack.portals_table)
    moved = vault.portals.record_move(
        member_id, domain="new.bitrix24.com", client_endpoint="https://new.bitrix24.com/rest/"
    )
    assert moved is None
    assert vault.stack.raw_items(vault.stack.portals_table) == before
