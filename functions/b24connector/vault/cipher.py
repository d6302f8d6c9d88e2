"""Token ciphertext: AES-256-GCM under a KMS data key bound to the tenant (envelope encryption).

The data key comes from KMS GenerateDataKey under the portal's encryption context *before* a refresh
token is spent, so sealing the new pair after Bitrix24 answered is local work that no KMS outage or
throttle can stop (docs/decisions/0002-envelope-encryption.md). Opening asks KMS to decrypt the data key
under the same context, so a blob copied to another tenant's row still fails in KMS. Items written by
the first version hold a direct KMS Encrypt ciphertext; they open as before (a format marker tells the
two apart) and are rewritten in the new format by the next grant or refresh. One KMS call per write and
per cold read; none per warm read thanks to the cache.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from b24connector.tokens import TokenSet
from b24connector.vault.clients import LazyClient, boto3_client
from b24connector.vault.errors import TokenDecryptError, VaultUnavailable

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from mypy_boto3_kms import KMSClient

TOKEN_PURPOSE = "bitrix24-oauth-tokens"

# Envelope format: MAGIC | u16 length of the encrypted data key | encrypted data key | 12-byte nonce |
# AES-GCM ciphertext and tag. A KMS ciphertext blob (the legacy format) starts with its version byte
# 0x01; moto's with a key UUID in lower-case hex: neither can start with MAGIC.
ENVELOPE_MAGIC = b"B24E\x01"
_KEY_LENGTH = struct.Struct(">H")
_NONCE_BYTES = 12

# KMS answers that mean "this ciphertext will never decrypt here", as opposed to throttling or outages.
_UNDECRYPTABLE = frozenset(
    {
        "InvalidCiphertextException",
        "IncorrectKeyException",
        "AccessDeniedException",
        "NotFoundException",
        "DisabledException",
        "KMSInvalidStateException",
        "InvalidKeyUsageException",
    }
)


def token_context(member_id: str) -> dict[str, str]:
    """The KMS encryption context of a portal's token blob (the template's key policy relies on it)."""
    return {"purpose": TOKEN_PURPOSE, "member_id": member_id}


@dataclass(frozen=True, slots=True)
class TokenMetadata:
    """The non-secret facts that travel with a token pair (stored as plain attributes)."""

    expires_at: int
    client_endpoint: str
    server_endpoint: str
    scope: str = ""
    status: str = ""
    user_id: int | None = None
    obtained_at: int = 0

    @classmethod
    def of(cls, tokens: TokenSet) -> TokenMetadata:
        """The metadata part of a TokenSet."""
        return cls(
            expires_at=int(tokens.expires_at),
            client_endpoint=tokens.client_endpoint,
            server_endpoint=tokens.server_endpoint,
            scope=tokens.scope,
            status=tokens.status,
            user_id=tokens.user_id,
            obtained_at=int(tokens.obtained_at),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "expires_at": self.expires_at,
            "client_endpoint": self.client_endpoint,
            "server_endpoint": self.server_endpoint,
            "scope": self.scope,
            "status": self.status,
            "user_id": self.user_id,
            "obtained_at": self.obtained_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenMetadata:
        """Parse what to_dict produced; raise ValueError on a malformed dict."""
        user_id = data.get("user_id")
        if user_id is not None and not isinstance(user_id, int):
            raise ValueError("user_id must be an integer")
        return cls(
            expires_at=int(data["expires_at"]),
            client_endpoint=str(data["client_endpoint"]),
            server_endpoint=str(data["server_endpoint"]),
            scope=str(data.get("scope", "")),
            status=str(data.get("status", "")),
            user_id=user_id,
            obtained_at=int(data.get("obtained_at", 0)),
        )


@dataclass(frozen=True, slots=True)
class DataKey:
    """A KMS data key for one tenant: the plaintext key (memory only) and its KMS ciphertext."""

    member_id: str
    plaintext: bytes = field(repr=False)
    encrypted: bytes = field(repr=False)


def _aad(member_id: str, header: bytes) -> bytes:
    # Binds the AES-GCM ciphertext to its tenant and to the encrypted data key it travels with.
    return b"b24connector-tokens\0" + member_id.encode("utf-8") + b"\0" + header


def _aesgcm(key: bytes) -> AESGCM:
    # Imported on first use: handlers that never seal or open a pair do not load `cryptography`.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

    return AESGCM(key)


@dataclass(frozen=True, slots=True)
class SealedTokens:
    """A token pair as ciphertext (envelope or legacy KMS) plus its plain metadata: committed or rescued."""

    member_id: str
    ciphertext: bytes = field(repr=False)
    metadata: TokenMetadata


class _TokenCache:
    """Bounded LRU of decrypted pairs keyed by (member_id, version); a new version is a new key."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, int], TokenSet] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> TokenSet | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[str, int], tokens: TokenSet) -> None:
        with self._lock:
            self._items[key] = tokens
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class TokenCipher:
    """Seals and opens token pairs with one KMS key; caches opened pairs per (member_id, version)."""

    def __init__(self, key_id: str, *, kms_client: KMSClient | None = None, cache_size: int = 256) -> None:
        self.key_id = key_id
        # Created on first use: handlers that never decrypt do not pay for a KMS client.
        self._kms: LazyClient[KMSClient] = LazyClient(lambda: boto3_client("kms", max_attempts=4), kms_client)
        self._cache = _TokenCache(cache_size)
        self._kms_calls = 0
        self._stats_lock = threading.Lock()

    @property
    def kms(self) -> KMSClient:
        """The KMS client."""
        return self._kms()

    @property
    def kms_calls(self) -> int:
        """KMS calls made so far (GenerateDataKey, Decrypt, Encrypt; a warm read must not add to it)."""
        return self._kms_calls

    def _count_call(self) -> None:
        with self._stats_lock:
            self._kms_calls += 1

    def data_key(self, member_id: str) -> DataKey:
        """A fresh KMS data key under the tenant's token context (GenerateDataKey); VaultUnavailable."""
        self._count_call()
        try:
            answer = self.kms.generate_data_key(
                KeyId=self.key_id, KeySpec="AES_256", EncryptionContext=token_context(member_id)
            )
        except ClientError as exc:
            raise VaultUnavailable(f"KMS GenerateDataKey failed ({_code(exc)})") from None
        except BotoCoreError as exc:
            raise VaultUnavailable(f"KMS GenerateDataKey failed ({type(exc).__name__})") from None
        return DataKey(member_id=member_id, plaintext=answer["Plaintext"], encrypted=answer["CiphertextBlob"])

    def seal_bytes(self, plaintext: bytes, member_id: str, *, key: DataKey | None = None) -> bytes:
        """An envelope of `plaintext` for `member_id`; with `key` no KMS call is made (local AES-GCM)."""
        if key is None:
            key = self.data_key(member_id)
        elif key.member_id != member_id:
            raise ValueError("a data key seals only its own tenant's data")
        header = ENVELOPE_MAGIC + _KEY_LENGTH.pack(len(key.encrypted)) + key.encrypted
        nonce = os.urandom(_NONCE_BYTES)
        return header + nonce + _aesgcm(key.plaintext).encrypt(nonce, plaintext, _aad(member_id, header))

    def open_bytes(self, blob: bytes, member_id: str, *, owner: str) -> bytes:
        """Open an envelope (or a legacy direct KMS ciphertext) of `member_id`; TokenDecryptError if never."""
        context = token_context(member_id)
        if not blob.startswith(ENVELOPE_MAGIC):
            return self.decrypt(blob, context, owner=owner)  # written before envelopes: KMS Encrypt
        start = len(ENVELOPE_MAGIC) + _KEY_LENGTH.size
        if len(blob) < start:
            raise TokenDecryptError(owner, "damaged envelope")
        (key_length,) = _KEY_LENGTH.unpack_from(blob, len(ENVELOPE_MAGIC))
        body = start + key_length
        if key_length == 0 or len(blob) < body + _NONCE_BYTES + 16:
            raise TokenDecryptError(owner, "damaged envelope")
        data_key = self.decrypt(blob[start:body], context, owner=owner)
        from cryptography.exceptions import InvalidTag  # noqa: PLC0415  (see _aesgcm)

        try:
            return bytes(
                _aesgcm(data_key).decrypt(
                    blob[body : body + _NONCE_BYTES],
                    blob[body + _NONCE_BYTES :],
                    _aad(member_id, blob[:body]),
                )
            )
        except (InvalidTag, ValueError):
            raise TokenDecryptError(owner, "envelope does not authenticate: damaged or moved") from None

    def decrypt(self, ciphertext: bytes, context: Mapping[str, str], *, owner: str) -> bytes:
        """KMS Decrypt pinned to the configured key; TokenDecryptError when it can never succeed."""
        self._count_call()
        try:
            answer = self.kms.decrypt(
                CiphertextBlob=ciphertext, EncryptionContext=dict(context), KeyId=self.key_id
            )
        except ClientError as exc:
            code = _code(exc)
            if code in _UNDECRYPTABLE:
                raise TokenDecryptError(owner, f"KMS {code}: wrong key, wrong tenant or damaged") from None
            raise VaultUnavailable(f"KMS Decrypt failed ({code})") from None
        except BotoCoreError as exc:
            raise VaultUnavailable(f"KMS Decrypt failed ({type(exc).__name__})") from None
        return answer["Plaintext"]

    def seal(self, tokens: TokenSet, *, key: DataKey | None = None) -> SealedTokens:
        """Encrypt the access/refresh pair of `tokens` for its member_id (no KMS call when `key` is given)."""
        payload = json.dumps({"a": tokens.access_token, "r": tokens.refresh_token}, separators=(",", ":"))
        ciphertext = self.seal_bytes(payload.encode("utf-8"), tokens.member_id, key=key)
        return SealedTokens(
            member_id=tokens.member_id, ciphertext=ciphertext, metadata=TokenMetadata.of(tokens)
        )

    def open(self, sealed: SealedTokens, *, version: int | None = None) -> TokenSet:
        """Decrypt a sealed pair (from cache when `version` is given and known) into a TokenSet."""
        key = (sealed.member_id, version) if version is not None else None
        if key is not None and (cached := self._cache.get(key)) is not None:
            return cached
        plaintext = self.open_bytes(sealed.ciphertext, sealed.member_id, owner=sealed.member_id)
        try:
            payload = json.loads(plaintext)
            access_token, refresh_token = payload["a"], payload["r"]
        except (ValueError, KeyError, TypeError):
            raise TokenDecryptError(sealed.member_id, "decrypted payload is not a token pair") from None
        if not (isinstance(access_token, str) and isinstance(refresh_token, str)):
            raise TokenDecryptError(sealed.member_id, "decrypted payload is not a token pair")
        meta = sealed.metadata
        tokens = TokenSet(
            access_token=access_token,
            refresh_token=refresh_token,
            expires_at=meta.expires_at,
            member_id=sealed.member_id,
            client_endpoint=meta.client_endpoint,
            server_endpoint=meta.server_endpoint,
            scope=meta.scope,
            status=meta.status,
            user_id=meta.user_id,
            obtained_at=meta.obtained_at,
        )
        if key is not None:
            self._cache.put(key, tokens)
        return tokens

    def remember(self, member_id: str, version: int, tokens: TokenSet) -> None:
        """Cache a pair this process just committed, so its next read needs no KMS call."""
        self._cache.put((member_id, version), tokens)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))
