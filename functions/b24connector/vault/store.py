"""The portals table: reads, grants, health and renames (the lease and commit live in vault.leases).

Every change of a portal's token chain is a conditional write on `version`, so a writer that read an
older row can never overwrite a newer chain. The snapshot type is vault.portal.Portal, the OAuth
states table is vault.states.StateStore.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pynamodb.exceptions import PynamoDBException

from b24connector.tokens import TokenSet
from b24connector.vault.cipher import SealedTokens, TokenCipher
from b24connector.vault.dynamo import Clock, conditional_failure, unavailable
from b24connector.vault.errors import GrantNeedsReauth, GrantRefused, VaultUnavailable
from b24connector.vault.hashing import grant_digest, hash_secret
from b24connector.vault.leases import RefreshLeases
from b24connector.vault.models import (
    HEALTH_ACTIVE,
    HEALTH_NEEDS_REAUTH,
    HEALTH_UNINSTALLED,
    ROLE_ADMIN,
    ROLE_RANK,
    ROLE_SYSTEM,
    SUBSCRIPTION_PENDING,
    PortalModel,
    due_shard_of,
)
from b24connector.vault.portal import Portal

_GRANT_DIGESTS_KEPT = 4
_GRANT_ATTEMPTS = 5
_DAY = 86_400


@dataclass(frozen=True, slots=True)
class _Grant:
    """A grant to store, checked: its portal, normalized domain, role, replay digest and token verifier."""

    tokens: TokenSet = field(repr=False)
    member_id: str
    domain: str
    role: str
    digest: str
    verifier: str | None  # SHA-256 of a trusted application_token; None keeps the stored one

    @classmethod
    def of(cls, tokens: TokenSet, *, domain: str, role: str, application_token: str | None) -> _Grant:
        """Check a grant's member_id and role; trust its application_token only from a system or admin."""
        if not tokens.member_id:
            raise ValueError("a grant needs its member_id")
        if role not in ROLE_RANK:
            raise ValueError(f"unknown grant role {role!r}")
        trusted = application_token if role in (ROLE_ADMIN, ROLE_SYSTEM) else None
        return cls(
            tokens=tokens,
            member_id=tokens.member_id,
            domain=domain.strip().lower(),
            role=role,
            digest=grant_digest(tokens),
            verifier=hash_secret(trusted) if trusted else None,
        )


def _stored_or_refused(existing: PortalModel | None, grant: _Grant) -> Portal | None:
    """The stored record when `grant` is a replay of it; GrantRefused when an active grant outranks it."""
    if existing is None:
        return None
    current = Portal.of(existing)
    if grant.digest in (existing.grant_digests or []):
        return current
    if current.is_active and current.role_rank > ROLE_RANK[grant.role]:
        raise GrantRefused(grant.member_id, current.grant_role, grant.role)
    return None


def _kept_verifier(existing: PortalModel | None) -> str | None:
    """The application_token verifier a grant without one keeps (none from an uninstalled record)."""
    # A reinstall gets a new application token: an uninstalled record's verifier is stale.
    if existing is None or existing.health == HEALTH_UNINSTALLED:
        return None
    return existing.application_token_hash


def _kept_digests(existing: PortalModel | None, digest: str) -> list[str]:
    """The grant digests to store: the new one first, then the latest few before it."""
    if existing is None:
        return [digest]
    return [digest, *(existing.grant_digests or [])][:_GRANT_DIGESTS_KEPT]


class PortalStore(RefreshLeases):
    """Versioned access to portal records: grants, reads, lease, compare-and-set commits, due index."""

    def __init__(
        self,
        model: type[PortalModel],
        cipher: TokenCipher,
        *,
        refresh_after_days: int,
        due_index_shards: int,
        clock: Clock = time.time,
    ) -> None:
        self.model = model
        self.cipher = cipher
        self.refresh_after_seconds = refresh_after_days * _DAY
        self.due_index_shards = due_index_shards
        self._clock = clock

    # --- reads -------------------------------------------------------------------------------------

    def _item(self, member_id: str, *, consistent: bool) -> PortalModel | None:
        try:
            return self.model.get(member_id, consistent_read=consistent)
        except self.model.DoesNotExist:
            return None
        except PynamoDBException as exc:
            raise unavailable("GetItem", exc) from None

    def get(self, member_id: str, *, consistent: bool = False) -> Portal | None:
        """The portal record, or None; `consistent` for a strongly consistent read."""
        item = self._item(member_id, consistent=consistent)
        return Portal.of(item) if item is not None else None

    def get_by_domain(self, domain: str) -> Portal | None:
        """The portal serving `domain` (DomainIndex, eventually consistent); active and newest first."""
        try:
            items = [Portal.of(item) for item in self.model.domain_index.query(domain.strip().lower())]
        except PynamoDBException as exc:
            raise unavailable("Query DomainIndex", exc) from None
        if not items:
            return None
        # A portal deleted and created again keeps its domain under a new member_id.
        return max(items, key=lambda p: (p.is_active, p.updated_at or 0))

    def tokens(self, portal: Portal) -> TokenSet:
        """Decrypt the portal's stored pair (cached per version); GrantNeedsReauth when none is stored."""
        sealed = portal.sealed()
        if sealed is None:
            raise GrantNeedsReauth(portal.member_id, portal.health)
        return self.cipher.open(sealed, version=portal.version)

    def due_portals(self, now: float, limit: int) -> Iterator[tuple[str, int]]:
        """(member_id, version) of active portals whose refresh is due, from every index shard; no Scan."""
        remaining = limit
        # Rotate the first shard by the hour so a capped sweep does not always favour shard 0.
        first = int(now // 3600) % self.due_index_shards
        for step in range(self.due_index_shards):
            if remaining <= 0:
                return
            shard = str((first + step) % self.due_index_shards)
            try:
                for item in self.model.refresh_due_index.query(
                    shard, self.model.refresh_due_at <= int(now), limit=remaining
                ):
                    remaining -= 1
                    yield item.member_id, int(item.version)
                    if remaining <= 0:
                        return
            except PynamoDBException as exc:
                raise unavailable("Query RefreshDueIndex", exc) from None

    # --- grants and health -------------------------------------------------------------------------

    def save_grant(
        self,
        tokens: TokenSet,
        *,
        domain: str,
        role: str,
        application_token: str | None = None,
    ) -> Portal:
        """Store a new token chain (install, callback): version 1, or +1 over an existing record.

        `role` says whose pair it is (ROLE_SYSTEM, ROLE_ADMIN, ROLE_USER). An active grant is never
        replaced by one of a lower rank: GrantRefused, nothing written (the check is part of the
        compare-and-set, so no concurrent writer can slip between). `application_token` is stored only
        as its SHA-256 verifier and only with a system or administrator grant: what an ordinary employee
        sends is never trusted to authenticate uninstall events; without one the stored verifier is kept.
        A replay of a grant already stored (same pair) changes nothing and returns the current record.
        """
        grant = _Grant.of(tokens, domain=domain, role=role, application_token=application_token)
        sealed: SealedTokens | None = None
        for _ in range(_GRANT_ATTEMPTS):
            existing = self._item(grant.member_id, consistent=True)
            stored = _stored_or_refused(existing, grant)
            if stored is not None:
                return stored  # a replay of the pair already stored
            if sealed is None:
                sealed = self.cipher.seal(tokens)
            item = self._grant_item(grant, sealed, existing)
            if self._put_grant(item, existing):
                self.cipher.remember(grant.member_id, int(item.version), tokens)
                return Portal.of(item)
        raise VaultUnavailable(f"grant for portal {grant.member_id} kept conflicting with other writers")

    def _grant_item(self, grant: _Grant, sealed: SealedTokens, existing: PortalModel | None) -> PortalModel:
        """The record a grant writes over `existing` (None: a new portal)."""
        tokens = grant.tokens
        now = int(self._clock())
        obtained = int(tokens.obtained_at) or now
        return self.model(
            grant.member_id,
            version=(int(existing.version) if existing is not None else 0) + 1,
            health=HEALTH_ACTIVE,
            domain=grant.domain,
            client_endpoint=tokens.client_endpoint or None,
            server_endpoint=tokens.server_endpoint or None,
            scope=tokens.scope or None,
            status=tokens.status or None,
            user_id=tokens.user_id,
            application_token_hash=grant.verifier or _kept_verifier(existing),
            token_ciphertext=sealed.ciphertext,
            access_expires_at=int(tokens.expires_at),
            refresh_obtained_at=obtained,
            due_shard=due_shard_of(grant.member_id, self.due_index_shards),
            refresh_due_at=obtained + self.refresh_after_seconds,
            grant_digests=_kept_digests(existing, grant.digest),
            grant_role=grant.role,
            # A new grant may belong to another user: its subscriptions are checked again.
            subscription_state=SUBSCRIPTION_PENDING,
            subscribed_events=list(existing.subscribed_events or []) if existing is not None else None,
            created_at=(existing.created_at if existing is not None else None) or now,
            updated_at=now,
        )

    def _put_grant(self, item: PortalModel, existing: PortalModel | None) -> bool:
        """Write `item` if the record is still `existing`; False when another writer came in between."""
        condition = (
            self.model.member_id.does_not_exist()
            if existing is None
            else (self.model.version == existing.version)
        )
        try:
            item.save(condition=condition)
        except PynamoDBException as exc:
            if conditional_failure(exc):
                return False  # re-read and build on their version
            raise unavailable("PutItem", exc) from None
        return True

    def record_subscription(
        self, member_id: str, *, state: str, events: tuple[str, ...], error: str | None = None
    ) -> bool:
        """Record where the portal's event.bind subscriptions stand; False when the portal is gone.

        Touches only the subscription attributes (no version change), so it never races a grant or a
        refresh; conditional on the portal existing and not being uninstalled.
        """
        m = self.model
        actions: list[Any] = [
            m.subscription_state.set(state),
            m.subscription_checked_at.set(int(self._clock())),
            m.subscribed_events.set(list(events)) if events else m.subscribed_events.remove(),
            m.subscription_error.set(error) if error else m.subscription_error.remove(),
        ]
        try:
            m(member_id).update(
                actions=actions, condition=m.member_id.exists() & (m.health != HEALTH_UNINSTALLED)
            )
        except PynamoDBException as exc:
            if conditional_failure(exc):
                return False
            raise unavailable("UpdateItem", exc) from None
        return True

    def claim_uninstall_check(self, member_id: str, *, min_gap_seconds: float) -> bool:
        """Claim the right to check an unproven ONAPPUNINSTALL with Bitrix24; False if one ran lately."""
        m = self.model
        now = self._clock()
        try:
            m(member_id).update(
                actions=[m.uninstall_check_at.set(now)],
                condition=m.member_id.exists()
                & (m.uninstall_check_at.does_not_exist() | (m.uninstall_check_at <= now - min_gap_seconds)),
            )
        except PynamoDBException as exc:
            if conditional_failure(exc):
                return False
            raise unavailable("UpdateItem", exc) from None
        return True

    def mark_uninstalled(self, member_id: str, *, clean: bool) -> Portal | None:
        """Record an uninstall: the ciphertext goes, version +1 so no older pair can come back.

        `clean` (the admin chose "clear application data") also removes everything that describes
        the tenant: domain, endpoints, scope, status, user, application_token hash and timestamps. What
        stays is a tombstone (member_id, version, health, uninstalled_at, grant digests) so the version
        keeps growing across a reinstall and a replayed old grant or rescue cannot resurrect the portal.

        A replay writes nothing: the update is conditional on the portal not being uninstalled already
        (a clean uninstall still clears a kept record). None when there is no such portal or nothing
        was left to do.
        """
        m = self.model
        now = int(self._clock())
        not_uninstalled = (m.health != HEALTH_UNINSTALLED) | m.health.does_not_exist()
        # Only a clean uninstall has something left to do on a portal uninstalled with its data kept.
        pending = (not_uninstalled | m.domain.exists()) if clean else not_uninstalled
        removed: list[Any] = [
            m.token_ciphertext,
            m.due_shard,
            m.refresh_due_at,
            m.lease_owner,
            m.lease_expires_at,
        ]
        if clean:
            removed += [
                m.domain,
                m.client_endpoint,
                m.server_endpoint,
                m.scope,
                m.status,
                m.user_id,
                m.application_token_hash,
                m.access_expires_at,
                m.refresh_obtained_at,
                m.last_refresh_attempt_at,
                m.created_at,
                m.grant_role,
                m.subscription_state,
                m.subscribed_events,
                m.subscription_error,
                m.subscription_checked_at,
                m.uninstall_check_at,
            ]
        actions: list[Any] = [
            m.version.add(1),
            m.health.set(HEALTH_UNINSTALLED),
            m.uninstalled_at.set(now),
            m.updated_at.set(now),
            *(attr.remove() for attr in removed),
        ]
        item = m(member_id)
        try:
            item.update(actions=actions, condition=m.member_id.exists() & pending)
        except PynamoDBException as exc:
            if conditional_failure(exc):
                return None
            raise unavailable("UpdateItem", exc) from None
        return Portal.of(item)

    def mark_needs_reauth(self, member_id: str, expected_version: int, *, reason: str | None = None) -> bool:
        """Flag an active portal at `expected_version` as needing re-authorization; False if it moved.

        The version does not change: the stored pair is kept, so a rescued pair for this version can
        still land and make the portal active again. `reason` (a short error code) is what the
        PortalNeedsReauth event reports.
        """
        m = self.model
        code = "".join(ch for ch in (reason or "") if ch.isascii() and (ch.isalnum() or ch == "_"))[:64]
        try:
            m(member_id).update(
                actions=[
                    m.health.set(HEALTH_NEEDS_REAUTH),
                    m.reauth_reason.set(code or "unknown"),
                    m.updated_at.set(int(self._clock())),
                    m.due_shard.remove(),
                    m.refresh_due_at.remove(),
                    m.lease_owner.remove(),
                    m.lease_expires_at.remove(),
                ],
                condition=(m.version == expected_version) & (m.health == HEALTH_ACTIVE),
            )
        except PynamoDBException as exc:
            if conditional_failure(exc):
                return False
            raise unavailable("UpdateItem", exc) from None
        return True

    def record_move(self, member_id: str, *, domain: str, client_endpoint: str) -> Portal | None:
        """Remember a renamed portal's new address (a followed 302): `domain` and `client_endpoint` only.

        Conditional on the portal existing and being active. The token chain is untouched (no version
        bump, no ciphertext or lease change), so a concurrent refresh or grant is never lost. Moving
        `domain` moves the record in DomainIndex. None when the portal is missing or not active.
        """
        m = self.model
        item = m(member_id)
        try:
            item.update(
                actions=[
                    m.domain.set(domain.strip().lower()),
                    m.client_endpoint.set(client_endpoint),
                    m.updated_at.set(int(self._clock())),
                ],
                condition=m.member_id.exists() & (m.health == HEALTH_ACTIVE),
            )
        except PynamoDBException as exc:
            if conditional_failure(exc):
                return None
            raise unavailable("UpdateItem", exc) from None
        return Portal.of(item)
