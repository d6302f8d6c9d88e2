"""StateStore: hashed, single-use, expiring OAuth states; the PKCE verifier is derived, not stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from b24connector.pkce import derive_verifier as derive_pkce_verifier
from b24connector.vault.errors import StateRefusal, StateRefused, VaultError, VaultUnavailable
from b24connector.vault.hashing import hash_secret
from tests.support.vault_unit import UnitVault


def _refusal(consume: Callable[[], Any]) -> StateRefusal:
    with pytest.raises(StateRefused) as caught:
        consume()
    assert str(caught.value) == f"OAuth state refused ({caught.value.reason.value})"
    return caught.value.reason


def test_state_is_consumed_once_with_its_browser(vault: UnitVault) -> None:
    expires = vault.states.save("raw-state-1", "nonce-1", "A.Bitrix24.com")
    assert expires == int(vault.clock()) + 600
    assert (
        _refusal(lambda: vault.states.consume("raw-state-1", "wrong-nonce")) is StateRefusal.COOKIE_MISMATCH
    )
    consumed = vault.states.consume("raw-state-1", "nonce-1")
    assert consumed is not None
    assert consumed.portal_domain == "a.bitrix24.com"
    assert consumed.expires_at == expires
    assert _refusal(lambda: vault.states.consume("raw-state-1", "nonce-1")) is StateRefusal.USED
    # a used state stays used for every browser, also once it has expired
    assert _refusal(lambda: vault.states.consume("raw-state-1", "wrong-nonce")) is StateRefusal.USED
    vault.clock.advance(601)
    assert _refusal(lambda: vault.states.consume("raw-state-1", "nonce-1")) is StateRefusal.USED
    assert _refusal(lambda: vault.states.consume("never-issued", "nonce-1")) is StateRefusal.MISSING


def test_consuming_marks_the_state_used_and_keeps_its_ttl(vault: UnitVault) -> None:
    expires = vault.states.save("raw-state-5", "nonce-5", "a.bitrix24.com")
    (before,) = vault.stack.raw_items(vault.stack.states_table)
    vault.clock.advance(5)
    vault.states.consume("raw-state-5", "nonce-5")
    (after,) = vault.stack.raw_items(vault.stack.states_table)
    # Then the record is the same plus used_at; expires_at (the TTL attribute) still removes it later
    assert after == {**before, "used_at": {"N": str(int(vault.clock()))}}
    assert after["expires_at"] == {"N": str(expires)}


def test_a_refusal_changes_nothing(vault: UnitVault) -> None:
    vault.states.save("raw-state-6", "nonce-6", "a.bitrix24.com")
    (before,) = vault.stack.raw_items(vault.stack.states_table)
    for nonce in ("wrong", ""):
        _refusal(lambda nonce=nonce: vault.states.consume("raw-state-6", nonce))
    assert vault.stack.raw_items(vault.stack.states_table) == [before]
    assert vault.states.consume("raw-state-6", "nonce-6").portal_domain == "a.bitrix24.com"


def test_storage_failures_are_unavailable_not_refusals(
    vault: UnitVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pynamodb.exceptions import GetError, UpdateError

    vault.states.save("raw-state-7", "nonce-7", "a.bitrix24.com")

    def failing(*_: Any, **__: Any) -> Any:
        raise UpdateError("boom")

    monkeypatch.setattr(vault.states.model, "update", failing)
    with pytest.raises(VaultUnavailable):
        vault.states.consume("raw-state-7", "nonce-7")
    monkeypatch.undo()

    def refused_then_unreadable(*_: Any, **__: Any) -> Any:
        raise GetError("boom")

    monkeypatch.setattr(vault.states.model, "get", refused_then_unreadable)
    with pytest.raises(VaultUnavailable):
        vault.states.consume("raw-state-7", "wrong-nonce")


def test_table_holds_only_hashes(vault: UnitVault) -> None:
    vault.states.save("raw-state-2", "nonce-2", "a.bitrix24.com")
    (item,) = vault.stack.raw_items(vault.stack.states_table)
    assert item["state_hash"] == {"S": hash_secret("raw-state-2")}
    assert item["nonce_hash"] == {"S": hash_secret("nonce-2")}
    text = repr(item)
    assert "raw-state-2" not in text
    assert "nonce-2'" not in text
    assert set(item) == {"state_hash", "nonce_hash", "portal_domain", "created_at", "expires_at"}


def test_expired_state_is_refused_even_before_ttl_deletion(vault: UnitVault) -> None:
    vault.states.save("raw-state-3", "nonce-3", "a.bitrix24.com")
    vault.clock.advance(601)
    assert _refusal(lambda: vault.states.consume("raw-state-3", "nonce-3")) is StateRefusal.EXPIRED
    # exactly at the expiry instant it is expired too
    vault.states.save("raw-state-3b", "nonce-3", "a.bitrix24.com")
    vault.clock.advance(600)
    assert _refusal(lambda: vault.states.consume("raw-state-3b", "nonce-3")) is StateRefusal.EXPIRED


def test_state_cannot_be_overwritten_and_needs_values(vault: UnitVault) -> None:
    vault.states.save("raw-state-4", "nonce-4", "a.bitrix24.com")
    with pytest.raises(VaultError, match="already exists"):
        vault.states.save("raw-state-4", "other", "evil.bitrix24.com")
    with pytest.raises(ValueError, match="empty"):
        vault.states.save("", "n", "a.bitrix24.com")
    assert _refusal(lambda: vault.states.consume("", "n")) is StateRefusal.MISSING
    assert _refusal(lambda: vault.states.consume("raw-state-4", "")) is StateRefusal.COOKIE_MISMATCH


def test_pkce_verifier_is_derived_per_state_and_browser() -> None:
    verifier = derive_pkce_verifier(b"k" * 32, "state", "nonce")
    assert len(verifier) == 43
    assert set(verifier) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert verifier == derive_pkce_verifier(b"k" * 32, "state", "nonce")
    assert verifier != derive_pkce_verifier(b"k" * 32, "state", "other-nonce")
    assert verifier != derive_pkce_verifier(b"j" * 32, "state", "nonce")
    with pytest.raises(ValueError, match="key"):
        derive_pkce_verifier(b"", "state", "nonce")
