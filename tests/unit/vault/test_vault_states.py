"""StateStore: hashed, single-use, expiring OAuth states; the PKCE verifier is derived, not stored."""

from __future__ import annotations

import pytest

from b24connector.vault.errors import VaultError
from b24connector.vault.store import derive_pkce_verifier, hash_secret
from tests.unit.vault.conftest import UnitVault


def test_state_is_consumed_once_with_its_browser(vault: UnitVault) -> None:
    expires = vault.states.save("raw-state-1", "nonce-1", "A.Bitrix24.com")
    assert expires == int(vault.clock()) + 600
    assert vault.states.consume("raw-state-1", "wrong-nonce") is None
    consumed = vault.states.consume("raw-state-1", "nonce-1")
    assert consumed is not None
    assert consumed.portal_domain == "a.bitrix24.com"
    assert consumed.expires_at == expires
    assert vault.states.consume("raw-state-1", "nonce-1") is None


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
    assert vault.states.consume("raw-state-3", "nonce-3") is None


def test_state_cannot_be_overwritten_and_needs_values(vault: UnitVault) -> None:
    vault.states.save("raw-state-4", "nonce-4", "a.bitrix24.com")
    with pytest.raises(VaultError, match="already exists"):
        vault.states.save("raw-state-4", "other", "evil.bitrix24.com")
    with pytest.raises(ValueError, match="empty"):
        vault.states.save("", "n", "a.bitrix24.com")
    assert vault.states.consume("", "n") is None


def test_pkce_verifier_is_derived_per_state_and_browser() -> None:
    verifier = derive_pkce_verifier(b"k" * 32, "state", "nonce")
    assert len(verifier) == 43
    assert set(verifier) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert verifier == derive_pkce_verifier(b"k" * 32, "state", "nonce")
    assert verifier != derive_pkce_verifier(b"k" * 32, "state", "other-nonce")
    assert verifier != derive_pkce_verifier(b"j" * 32, "state", "nonce")
    with pytest.raises(ValueError, match="key"):
        derive_pkce_verifier(b"", "state", "nonce")
