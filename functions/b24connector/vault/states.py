"""Single-use OAuth `state` records (the states table): only hashes stored, consumed by one conditional write."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from pynamodb.exceptions import PynamoDBException

from b24connector.vault.dynamo import Clock, conditional_failure, unavailable
from b24connector.vault.errors import StateRefusal, StateRefused, VaultError
from b24connector.vault.hashing import hash_secret
from b24connector.vault.models import OAuthStateModel


@dataclass(frozen=True, slots=True)
class ConsumedState:
    """What a consumed OAuth state vouches for."""

    portal_domain: str
    created_at: int
    expires_at: int


class StateStore:
    """Single-use OAuth `state` records: only hashes are stored; consuming is one conditional update.

    A consumed state is marked used (not deleted) until DynamoDB's TTL removes it, so a replay is
    refused as STATE_USED rather than as an unknown state. A PKCE verifier, when PKCE is on, is not
    stored at all (see b24connector.pkce): the token key's policy only serves token blobs, and a
    plain copy in the table would defeat PKCE.
    """

    def __init__(self, model: type[OAuthStateModel], *, ttl_seconds: int, clock: Clock = time.time) -> None:
        if not 0 < ttl_seconds <= 600:
            raise ValueError("state TTL must be between 1 and 600 seconds")
        self.model = model
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def save(self, raw_state: str, browser_nonce: str, portal_domain: str) -> int:
        """Store a new pending authorization; returns its expiry (Unix seconds)."""
        if not raw_state or not browser_nonce:
            raise ValueError("state and browser nonce must not be empty")
        now = int(self._clock())
        expires_at = now + self.ttl_seconds
        item = self.model(
            hash_secret(raw_state),
            nonce_hash=hash_secret(browser_nonce),
            portal_domain=portal_domain.strip().lower(),
            created_at=now,
            expires_at=expires_at,
        )
        try:
            item.save(condition=self.model.state_hash.does_not_exist())
        except PynamoDBException as exc:
            if conditional_failure(exc):
                raise VaultError("OAuth state already exists; states must be freshly random") from None
            raise unavailable("PutItem", exc) from None
        return expires_at

    def consume(self, raw_state: str, browser_nonce: str) -> ConsumedState:
        """Mark the state used if it exists, is unused, matches the browser nonce and has not expired.

        One conditional UpdateItem, so exactly one concurrent caller wins. Every other caller gets
        StateRefused with the reason, read with one GetItem after the refusal (which never changes the
        outcome); VaultUnavailable when DynamoDB fails.
        """
        if not raw_state:
            raise StateRefused(StateRefusal.MISSING)
        if not browser_nonce:
            raise StateRefused(StateRefusal.COOKIE_MISMATCH)
        m = self.model
        state_hash, nonce_hash = hash_secret(raw_state), hash_secret(browser_nonce)
        now = int(self._clock())
        item = m(state_hash)
        try:
            item.update(
                actions=[m.used_at.set(now)],
                condition=m.state_hash.exists()
                & m.used_at.does_not_exist()
                & (m.nonce_hash == nonce_hash)
                & (m.expires_at > now),
            )
        except PynamoDBException as exc:
            if conditional_failure(exc):
                raise StateRefused(self._refusal(state_hash, nonce_hash, now)) from None
            raise unavailable("UpdateItem", exc) from None
        if item.expires_at <= self._clock():  # belt and braces: TTL deletion is lazy
            raise StateRefused(StateRefusal.EXPIRED)
        return ConsumedState(
            portal_domain=item.portal_domain, created_at=int(item.created_at), expires_at=int(item.expires_at)
        )

    def _refusal(self, state_hash: str, nonce_hash: str, now: int) -> StateRefusal:
        """Why the conditional update failed, judged at the same `now` (read-only)."""
        m = self.model
        try:
            item = m.get(state_hash, consistent_read=True)
        except m.DoesNotExist:
            return StateRefusal.MISSING
        except PynamoDBException as exc:
            raise unavailable("GetItem", exc) from None
        # PynamoDB types attributes as always present; a damaged item may lack them all the same.
        used_at: object = item.used_at
        expires_at: object = item.expires_at
        stored_nonce: object = item.nonce_hash
        if used_at is not None:
            return StateRefusal.USED
        if not isinstance(expires_at, int | float) or not isinstance(stored_nonce, str):
            return StateRefusal.MISSING  # damaged: never a valid authorization
        if expires_at <= now:
            return StateRefusal.EXPIRED
        if not hmac.compare_digest(stored_nonce, nonce_hash):
            return StateRefusal.COOKIE_MISMATCH
        # Unused, unexpired and matching, yet the condition failed: treat it as unknown (fail closed).
        return StateRefusal.MISSING
