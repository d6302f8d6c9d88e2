"""Token ciphertext through KMS Encrypt/Decrypt with a tenant-bound encryption context.

The payload is a few hundred bytes, far below KMS's 4 KB Encrypt limit, so no data key and no
`cryptography` dependency: one KMS call per write, and none per warm read thanks to the cache.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from b24connector.bitrix24.tokens import TokenSet
from b24connector.vault.clients import LazyClient, boto3_client
from b24connector.vault.errors import TokenDecryptError, VaultUnavailable

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

TOKEN_PURPOSE = "bitrix24-oauth-tokens"

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
class SealedTokens:
    """A token pair as KMS ciphertext plus its plain metadata: what gets committed or rescued."""

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
        """KMS Encrypt/Decrypt calls made so far (a warm read must not add to it)."""
        return self._kms_calls

    def _count_call(self) -> None:
        with self._stats_lock:
            self._kms_calls += 1

    def encrypt(self, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        """KMS Encrypt under the configured key and the given encryption context."""
        self._count_call()
        try:
            answer = self.kms.encrypt(KeyId=self.key_id, Plaintext=plaintext, EncryptionContext=dict(context))
        except ClientError as exc:
            raise VaultUnavailable(f"KMS Encrypt failed ({_code(exc)})") from None
        except BotoCoreError as exc:
            raise VaultUnavailable(f"KMS Encrypt failed ({type(exc).__name__})") from None
        return answer["CiphertextBlob"]

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

    def seal(self, tokens: TokenSet) -> SealedTokens:
        """Encrypt the access/refresh pair of `tokens` for its member_id."""
        payload = json.dumps({"a": tokens.access_token, "r": tokens.refresh_token}, separators=(",", ":"))
        ciphertext = self.encrypt(payload.encode("utf-8"), token_context(tokens.member_id))
        return SealedTokens(
            member_id=tokens.member_id, ciphertext=ciphertext, metadata=TokenMetadata.of(tokens)
        )

    def open(self, sealed: SealedTokens, *, version: int | None = None) -> TokenSet:
        """Decrypt a sealed pair (from cache when `version` is given and known) into a TokenSet."""
        key = (sealed.member_id, version) if version is not None else None
        if key is not None and (cached := self._cache.get(key)) is not None:
            return cached
        plaintext = self.decrypt(sealed.ciphertext, token_context(sealed.member_id), owner=sealed.member_id)
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
