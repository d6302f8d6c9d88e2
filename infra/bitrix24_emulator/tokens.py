"""Authorization codes and token chains: single-use codes, rotating single-use refresh tokens."""

from __future__ import annotations

import itertools
import os
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

_ALPHABET = string.ascii_lowercase + string.digits


# Test hook: the leak canary (tests/leak_canary.py) sets a lower-case hex prefix that every minted secret
# starts with, so a secret that reaches a log or an answer is recognisable there. Unset: no prefix.
CANARY_PREFIX_ENV = "B24_CANARY_PREFIX"


def canary_prefix(length: int) -> str:
    """The B24_CANARY_PREFIX marker (hex, at most half of `length`), or "" when unset or malformed."""
    prefix = os.environ.get(CANARY_PREFIX_ENV, "")
    if not prefix or any(ch not in "0123456789abcdef" for ch in prefix):
        return ""
    return prefix[: length // 2]


def new_secret(length: int = 32, alphabet: str = _ALPHABET) -> str:
    """A token-looking random string like Bitrix24's (lower-case letters and digits)."""
    prefix = canary_prefix(length)
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length - len(prefix)))


class OAuthFailure(Exception):
    """An OAuth-server error answer: HTTP status plus `error` / `error_description`."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description


class AuthFailure(Exception):
    """A REST authentication error answer (401 family)."""

    def __init__(self, error: str, description: str, status: int = 401) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description


@dataclass
class AuthCode:
    """A one-time authorization code (30 s)."""

    code: str = field(repr=False)
    issued_at: float
    user_id: int
    used: bool = False


@dataclass
class AccessToken:
    """An access token of one chain."""

    token: str = field(repr=False)
    chain_id: str
    issued_at: float
    expires_at: float
    invalidated: bool = False
    # When the portal last stored a successful check of this token in its cache (token_check_cache_seconds).
    cached_at: float | None = None


@dataclass
class RefreshToken:
    """A refresh token: usable once, then replaced by the next one of its chain."""

    token: str = field(repr=False)
    chain_id: str
    issued_at: float
    access_token: str = field(repr=False)
    used: bool = False
    revoked: bool = False


@dataclass
class Chain:
    """One grant (code exchange, install, direct issue) and every pair rotated from it."""

    chain_id: str
    origin: str
    user_id: int
    created_at: float
    current_access: str = field(repr=False)
    current_refresh: str = field(repr=False)
    refreshes: int = 0
    revoked_reason: str | None = None


@dataclass(frozen=True)
class IssuedPair:
    """What a grant hands out."""

    chain: Chain
    access: AccessToken
    refresh: RefreshToken


class TokenStore:
    """All codes and chains of the one emulated app on the one emulated portal. Not locked: the caller is."""

    def __init__(self) -> None:
        self._codes: dict[str, AuthCode] = {}
        self._access: dict[str, AccessToken] = {}
        self._refresh: dict[str, RefreshToken] = {}
        self._chains: dict[str, Chain] = {}
        self._chain_numbers = itertools.count(1)

    # --- grants ------------------------------------------------------------------------------------

    def issue_code(self, now: float, user_id: int) -> str:
        """A fresh authorization code for the consenting user."""
        code = new_secret()
        self._codes[code] = AuthCode(code, now, user_id)
        return code

    def exchange_code(
        self, code: str, now: float, *, code_lifetime: float, access_lifetime: int
    ) -> IssuedPair:
        """Spend a code (once, within its lifetime) for a new chain."""
        record = self._codes.get(code)
        if record is None:
            raise OAuthFailure(400, "invalid_grant", "Invalid authorization code")
        if record.used:
            raise OAuthFailure(400, "invalid_grant", "Authorization code has already been used")
        if now - record.issued_at > code_lifetime:
            record.used = True
            raise OAuthFailure(400, "invalid_grant", "Authorization code has expired")
        record.used = True
        return self.new_chain("authorization_code", record.user_id, now, access_lifetime=access_lifetime)

    def new_chain(self, origin: str, user_id: int, now: float, *, access_lifetime: int) -> IssuedPair:
        """Start an independent chain (each grant or install makes one)."""
        chain_id = f"chain-{next(self._chain_numbers)}"
        access = AccessToken(new_secret(), chain_id, now, now + access_lifetime)
        refresh = RefreshToken(new_secret(), chain_id, now, access.token)
        chain = Chain(chain_id, origin, user_id, now, access.token, refresh.token)
        self._chains[chain_id] = chain
        self._access[access.token] = access
        self._refresh[refresh.token] = refresh
        return IssuedPair(chain, access, refresh)

    def refresh(
        self,
        token: str,
        now: float,
        *,
        refresh_lifetime: int,
        access_lifetime: int,
        invalidate_access: bool,
    ) -> IssuedPair:
        """Spend a refresh token once; the chain moves on to a new pair."""
        record = self._refresh.get(token)
        if record is None:
            raise OAuthFailure(400, "invalid_grant", "Invalid refresh token")
        chain = self._chains[record.chain_id]
        if record.used or record.revoked or chain.revoked_reason is not None:
            raise OAuthFailure(400, "invalid_grant", "Invalid refresh token")
        if now - record.issued_at >= refresh_lifetime:
            raise OAuthFailure(400, "invalid_grant", "The refresh token provided has expired")
        record.used = True
        if invalidate_access:
            old_access = self._access.get(record.access_token)
            if old_access is not None:
                old_access.invalidated = True
        access = AccessToken(new_secret(), chain.chain_id, now, now + access_lifetime)
        refresh = RefreshToken(new_secret(), chain.chain_id, now, access.token)
        self._access[access.token] = access
        self._refresh[refresh.token] = refresh
        chain.current_access = access.token
        chain.current_refresh = refresh.token
        chain.refreshes += 1
        return IssuedPair(chain, access, refresh)

    # --- checks ------------------------------------------------------------------------------------

    def authenticate(
        self, token: str | None, now: float, cache_seconds: float = 0.0
    ) -> tuple[Chain, AccessToken]:
        """The chain behind a usable access token, or the 401 the portal would answer.

        With `cache_seconds` (the portal's token-check cache, docs/bitrix24-facts.md F-AUTH-3) a token whose
        successful check is still cached keeps working after a refresh or an uninstall revoked it.
        """
        if not token:
            raise AuthFailure("NO_AUTH_FOUND", "Wrong authorization data")
        record = self._access.get(token)
        if record is None:
            raise AuthFailure("invalid_token", "Unable to get application by token")
        chain = self._chains[record.chain_id]
        revoked = record.invalidated or chain.revoked_reason is not None
        cached_until = record.cached_at + cache_seconds if record.cached_at is not None else None
        if cache_seconds > 0 and cached_until is not None and now < min(cached_until, record.expires_at):
            return chain, record
        if record.invalidated:
            raise AuthFailure("invalid_token", "Unable to get application by token")
        if chain.revoked_reason == "uninstalled":
            raise AuthFailure("ERROR_OAUTH", "Application not installed")
        if chain.revoked_reason is not None:
            raise AuthFailure("invalid_token", "Unable to get application by token")
        if now >= record.expires_at:
            raise AuthFailure("expired_token", "The access token provided has expired.")
        if cache_seconds > 0 and not revoked:
            record.cached_at = now
        return chain, record

    def chain(self, chain_id: str) -> Chain | None:
        """A chain by id."""
        return self._chains.get(chain_id)

    # --- faults and admin --------------------------------------------------------------------------

    def _select(self, chain_id: str | None) -> list[Chain]:
        if chain_id is None:
            return list(self._chains.values())
        chain = self._chains.get(chain_id)
        return [chain] if chain else []

    def expire_access(self, now: float, chain_id: str | None = None, token: str | None = None) -> int:
        """Make access tokens expired (the answer becomes 401 expired_token); return how many."""
        if token is not None:
            record = self._access.get(token)
            if record is None:
                return 0
            record.expires_at = min(record.expires_at, now - 1)
            return 1
        chain_ids = {c.chain_id for c in self._select(chain_id)}
        count = 0
        for record in self._access.values():
            if record.chain_id in chain_ids and record.expires_at > now - 1:
                record.expires_at = now - 1
                count += 1
        return count

    def age_refresh(self, seconds: float, chain_id: str | None = None) -> int:
        """Pretend the live refresh tokens were issued `seconds` earlier; return how many."""
        chain_ids = {c.chain_id for c in self._select(chain_id)}
        count = 0
        for record in self._refresh.values():
            if record.chain_id in chain_ids and not record.used:
                record.issued_at -= seconds
                count += 1
        return count

    def revoke_refresh(self, chain_id: str | None = None) -> int:
        """Make the live refresh tokens unusable (invalid_grant); return how many."""
        chain_ids = {c.chain_id for c in self._select(chain_id)}
        count = 0
        for record in self._refresh.values():
            if record.chain_id in chain_ids and not record.used and not record.revoked:
                record.revoked = True
                count += 1
        return count

    def revoke_all(self, reason: str) -> int:
        """End every chain (uninstall); return how many were live."""
        count = 0
        for chain in self._chains.values():
            if chain.revoked_reason is None:
                chain.revoked_reason = reason
                count += 1
        return count

    def chains(self, now: float) -> list[dict[str, Any]]:
        """Every chain with its current pair; the admin asked for tokens explicitly."""
        listing = []
        for chain in self._chains.values():
            access = self._access[chain.current_access]
            refresh = self._refresh[chain.current_refresh]
            listing.append(
                {
                    "chain_id": chain.chain_id,
                    "origin": chain.origin,
                    "user_id": chain.user_id,
                    "created_at": chain.created_at,
                    "refreshes": chain.refreshes,
                    "revoked": chain.revoked_reason,
                    "access_token": access.token,
                    "access_expires_at": int(access.expires_at),
                    "access_expired": now >= access.expires_at,
                    "access_invalidated": access.invalidated,
                    "refresh_token": refresh.token,
                    "refresh_issued_at": refresh.issued_at,
                    "refresh_used": refresh.used,
                    "refresh_revoked": refresh.revoked,
                }
            )
        return listing
