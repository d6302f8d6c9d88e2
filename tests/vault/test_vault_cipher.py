"""TokenCipher: KMS data-key envelopes with a tenant-bound context; legacy KMS ciphertext still opens;
moved or foreign ciphertext fails clearly."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable

import pytest

from b24connector.vault.cipher import ENVELOPE_MAGIC, TokenCipher, TokenMetadata, token_context
from b24connector.vault.errors import TokenDecryptError
from b24connector.vault.journal import JournalCodec, LifecycleJob
from tests.support.vault_unit import UnitVault


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


# --- envelope format and migration ---------------------------------------------------------------


def _legacy_blob(vault: UnitVault, member_id: str, plaintext: bytes) -> bytes:
    """What the first version stored: a direct KMS Encrypt ciphertext under the token context."""
    answer = vault.stack.client("kms").encrypt(
        KeyId=vault.stack.token_key_id, Plaintext=plaintext, EncryptionContext=token_context(member_id)
    )
    blob: bytes = answer["CiphertextBlob"]
    assert not blob.startswith(ENVELOPE_MAGIC)
    return blob


def test_pairs_are_sealed_as_envelopes_and_a_given_data_key_needs_no_kms_call(vault: UnitVault) -> None:
    grant = vault.oauth.grant("member-a")
    key = vault.cipher.data_key("member-a")
    assert "plaintext" not in repr(key)
    calls = vault.cipher.kms_calls
    sealed = vault.cipher.seal(grant, key=key)
    assert vault.cipher.kms_calls == calls  # sealing with the key is local AES-GCM
    assert sealed.ciphertext.startswith(ENVELOPE_MAGIC)
    assert key.plaintext not in sealed.ciphertext
    assert vault.cipher.open(sealed) == grant
    with pytest.raises(ValueError, match="own tenant"):
        vault.cipher.seal(vault.oauth.grant("member-b"), key=key)


def test_legacy_kms_ciphertext_still_opens_and_the_next_write_is_an_envelope(vault: UnitVault) -> None:
    # Given a portal stored by the first version (direct KMS Encrypt), read by a cold container
    _portal, grant = vault.install()
    row = vault.portals.model.get("member-a", consistent_read=True)
    pair = json.dumps({"a": grant.access_token, "r": grant.refresh_token}).encode()
    row.token_ciphertext = _legacy_blob(vault, "member-a", pair)
    row.version = 7  # a version this process never cached
    row.save()
    legacy = vault.portals.get("member-a", consistent=True)
    assert legacy is not None
    # Then it opens as before
    assert vault.portals.tokens(legacy).refresh_token == grant.refresh_token
    # and the next refresh writes the envelope format
    vault.coordinator().fresh_access_token("member-a", grant.access_token)
    rewritten = vault.portals.get("member-a", consistent=True)
    assert rewritten is not None
    assert rewritten.token_ciphertext is not None
    assert rewritten.token_ciphertext.startswith(ENVELOPE_MAGIC)
    assert rewritten.version == 8


@pytest.mark.parametrize(
    "damage",
    [
        lambda blob: blob[: len(ENVELOPE_MAGIC) + 1],  # cut inside the key length
        lambda blob: blob[:-20],  # cut inside the nonce and tag
        lambda blob: blob[: len(ENVELOPE_MAGIC)] + b"\xff\xff" + blob[len(ENVELOPE_MAGIC) + 2 :],
        lambda blob: blob[:-17] + bytes([blob[-17] ^ 1]) + blob[-16:],  # one flipped ciphertext bit
    ],
)
def test_damaged_envelopes_fail_clearly(vault: UnitVault, damage: Callable[[bytes], bytes]) -> None:
    sealed = vault.cipher.seal(vault.oauth.grant("member-a"))
    with pytest.raises(TokenDecryptError, match="member-a"):
        vault.cipher.open(dataclasses.replace(sealed, ciphertext=damage(sealed.ciphertext)))


def test_journal_secrets_are_enveloped_and_legacy_messages_still_open(vault: UnitVault) -> None:
    codec = JournalCodec(vault.cipher)
    job = LifecycleJob(kind="grant", member_id="member-a", facts={"d": 1}, secrets={"access": "s3cret"})
    body = codec.encode(job)
    assert "s3cret" not in body
    assert base64.b64decode(json.loads(body)["sealed_b64"]).startswith(ENVELOPE_MAGIC)
    assert codec.decode(body).secrets == {"access": "s3cret"}
    # A message journaled by the first version (direct KMS ciphertext) is still applied after the deploy
    legacy = json.loads(body)
    legacy["sealed_b64"] = base64.b64encode(
        _legacy_blob(vault, "member-a", json.dumps({"access": "s3cret"}).encode())
    ).decode()
    assert codec.decode(json.dumps(legacy)).secrets == {"access": "s3cret"}
    # and an envelope moved to another portal's message does not open
    moved = {**json.loads(body), "member_id": "member-b"}
    with pytest.raises(TokenDecryptError, match="member-b"):
        codec.decode(json.dumps(moved))
