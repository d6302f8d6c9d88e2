"""A read-only snapshot of one portal record, and what the vault reads from it (lease state, sealed pair)."""

from __future__ import annotations

from dataclasses import dataclass, field

from b24connector.vault.cipher import SealedTokens, TokenMetadata
from b24connector.vault.models import HEALTH_ACTIVE, ROLE_RANK, ROLE_USER, PortalModel


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True, slots=True)
class Portal:
    """A read-only snapshot of a portal record. Token blob and application_token hash stay out of repr."""

    member_id: str
    version: int
    health: str
    domain: str | None
    client_endpoint: str | None
    server_endpoint: str | None
    scope: str | None
    status: str | None
    user_id: int | None
    access_expires_at: int | None
    refresh_obtained_at: int | None
    last_refresh_attempt_at: float | None
    due_shard: str | None
    refresh_due_at: int | None
    lease_owner: str | None
    lease_expires_at: float | None
    created_at: int | None
    updated_at: int | None
    uninstalled_at: int | None
    application_token_hash: str | None = field(repr=False)  # SHA-256 hex (hash_secret), never the token
    token_ciphertext: bytes | None = field(repr=False)
    grant_role: str = ROLE_USER
    subscription_state: str | None = None
    subscribed_events: tuple[str, ...] = ()
    subscription_error: str | None = None
    subscription_checked_at: int | None = None

    @property
    def is_active(self) -> bool:
        """True when the portal's tokens may be used and refreshed."""
        return self.health == HEALTH_ACTIVE

    @property
    def role_rank(self) -> int:
        """How strongly the stored grant holds: system > admin > user (vault.models.ROLE_RANK)."""
        return ROLE_RANK.get(self.grant_role, 0)

    def lease_held(self, now: float) -> bool:
        """True while another worker's refresh lease is still running."""
        return self.lease_owner is not None and (self.lease_expires_at or 0) > now

    def lease_unsettled(self, now: float, window_seconds: float) -> bool:
        """True for a lease that lapsed without being released, less than `window_seconds` ago.

        Every ending a holder knows of releases the lease or clears it with its commit; one that stays
        means the outcome is unknown (a spent refresh token whose pair waits in the rescue queue, or a
        holder that died).
        """
        expires = self.lease_expires_at or 0
        return self.lease_owner is not None and expires <= now < expires + window_seconds

    def sealed(self) -> SealedTokens | None:
        """The stored ciphertext with its metadata, or None when no tokens are stored."""
        if self.token_ciphertext is None:
            return None
        return SealedTokens(
            member_id=self.member_id,
            ciphertext=self.token_ciphertext,
            metadata=TokenMetadata(
                expires_at=self.access_expires_at or 0,
                client_endpoint=self.client_endpoint or "",
                server_endpoint=self.server_endpoint or "",
                scope=self.scope or "",
                status=self.status or "",
                user_id=self.user_id,
                obtained_at=self.refresh_obtained_at or 0,
            ),
        )

    @classmethod
    def of(cls, item: PortalModel) -> Portal:
        """Snapshot of a PynamoDB item."""
        return cls(
            member_id=item.member_id,
            version=int(item.version or 0),
            health=item.health,
            domain=item.domain,
            client_endpoint=item.client_endpoint,
            server_endpoint=item.server_endpoint,
            scope=item.scope,
            status=item.status,
            user_id=_int_or_none(item.user_id),
            access_expires_at=_int_or_none(item.access_expires_at),
            refresh_obtained_at=_int_or_none(item.refresh_obtained_at),
            last_refresh_attempt_at=item.last_refresh_attempt_at,
            due_shard=item.due_shard,
            refresh_due_at=_int_or_none(item.refresh_due_at),
            lease_owner=item.lease_owner,
            lease_expires_at=item.lease_expires_at,
            created_at=_int_or_none(item.created_at),
            updated_at=_int_or_none(item.updated_at),
            uninstalled_at=_int_or_none(item.uninstalled_at),
            application_token_hash=item.application_token_hash,
            token_ciphertext=item.token_ciphertext,
            grant_role=item.grant_role if item.grant_role in ROLE_RANK else ROLE_USER,
            subscription_state=item.subscription_state,
            subscribed_events=tuple(item.subscribed_events or ()),
            subscription_error=item.subscription_error,
            subscription_checked_at=_int_or_none(item.subscription_checked_at),
        )
