"""TokenCipher: KMS with a tenant-bound context; moved or foreign ciphertext fails clearly."""

from __future__ import annotations

import dataclasses

import pytest

from b24connector.vault.cipher import TokenCipher, TokenMetadata
from b24connector.vault.errors import TokenDecryptError
from tests.unit.vault.conftest import UnitVault


def test_sealed_pair_opens_back_and_hides_from_repr(vault: UnitVault) -> None:
    grant = vault.oauth.grant("member-a")
    sealed = vault.cipher.seal(grant)
    assert grant.access_token.encode() not in sealed.ciphertext
    assert grant.refresh_token.encode() not in sealed.ciphertext
    assert "ciphertext" not in repr(sealed)
    assert vault.cipher.open(sealed) == grant
    assert grant.access_token not in repr(grant)


def test_ciphertext_copied_to_another_tenants_row_does_not_decrypt(vault: UnitVault) -> None:
    # Given two portals
    vault.install("member-a")
    vault.install("member-b", "b.bitrix24.com")
    portal_a = vault.portals.get("member-a", consistent=True)
    assert portal_a is not None
    # When A's ciphertext is written into B's row
    model = vault.portals.model
    row_b = model.get("member-b", consistent_read=True)
    row_b.token_ciphertext = portal_a.token_ciphertext
    row_b.version = 99  # a version this process never cached
    row_b.save()
    portal_b = vault.portals.get("member-b", consistent=True)
    assert portal_b is not None
    # Then it does not decrypt there, and the error names the tenant but no token
    with pytest.raises(TokenDecryptError, match="member-b") as caught:
        vault.portals.tokens(portal_b)
    assert "InvalidCiphertextException" in str(caught.value)


def test_wrong_key_fails_with_a_clear_error(vault: UnitVault) -> None:
    grant = vault.oauth.grant("member-a")
    sealed = vault.cipher.seal(grant)
    kms = vault.stack.client("kms")
    other_key = kms.create_key()["KeyMetadata"]["Arn"]
    with pytest.raises(TokenDecryptError, match=r"member-a.*(wrong key|IncorrectKey|AccessDenied)") as caught:
        TokenCipher(other_key, kms_client=kms).open(sealed)
    text = f"{caught.value} {caught.value!r}"
    assert grant.access_token not in text
    assert grant.refresh_token not in text
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_damaged_ciphertext_fails_clearly(vault: UnitVault) -> None:
    sealed = vault.cipher.seal(vault.oauth.grant("member-a"))
    damaged = dataclasses.replace(sealed, ciphertext=sealed.ciphertext[:-4] + b"XXXX")
    with pytest.raises(TokenDecryptError):
        vault.cipher.open(damaged)


def test_opened_pairs_are_cached_per_version_and_bounded(vault: UnitVault) -> None:
    cipher = TokenCipher(vault.stack.token_key_id, kms_client=vault.stack.client("kms"), cache_size=2)
    sealed = {m: cipher.seal(vault.oauth.grant(m)) for m in ("m1", "m2", "m3")}
    calls = cipher.kms_calls
    cipher.open(sealed["m1"], version=1)
    cipher.open(sealed["m1"], version=1)
    assert cipher.kms_calls == calls + 1
    cipher.open(sealed["m1"], version=2)  # a new version is a new entry
    assert cipher.kms_calls == calls + 2
    cipher.open(sealed["m2"], version=1)
    cipher.open(sealed["m3"], version=1)  # evicts the least recently used
    cipher.open(sealed["m1"], version=1)
    assert cipher.kms_calls == calls + 5


def test_metadata_round_trip_and_validation() -> None:
    meta = TokenMetadata(1, "https://a/rest/", "https://o/rest/", "crm", "L", 5, 2)
    assert TokenMetadata.from_dict(meta.to_dict()) == meta
    with pytest.raises(ValueError, match="user_id"):
        TokenMetadata.from_dict({**meta.to_dict(), "user_id": "5"})
