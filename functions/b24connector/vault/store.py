"""The one module that reads and writes the portals and OAuth-state tables.

Every change of a portal's token chain is a conditional write on `version`, so a writer that read an
older row can never overwrite a newer chain; the refresh lease is a conditional update as well.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pynamodb.constants import ALL_OLD, ATTRIBUTES
from pynamodb.exceptions import PynamoDBException

from b24connector.tokens import TokenSet
from b24connector.vault.cipher import SealedTokens, TokenCipher, TokenMetadata
from b24connector.vault.errors import (
    GrantRefused,
    ReauthRequired,
    StateRefusal,
    StateRefused,
    VaultError,
    VaultUnavailable,
)
from b24connector.vault.models import (
    HEALTH_ACTIVE,
    HEALTH_NEEDS_REAUTH,
    HEALTH_UNINSTALLED,
    ROLE_ADMIN,
    ROLE_RANK,
    ROLE_SYSTEM,
    ROLE_USER,
    SUBSCRIPTION_PENDING,
    OAuthStateModel,
    PortalModel,
    due_shard_of,
)

Clock = Callable[[], float]
_CONDITION_FAILED = "ConditionalCheckFailedException"
_GRANT_DIGESTS_KEPT = 4
_DAY = 86_400


def hash_secret(value: str) -> str:
    """SHA-256 hex of a random secret (OAuth state, browser nonce, application_token): what is stored instead.

    Unsalted is enough because every such value is random with 128+ bits: there is no dictionary to try.
    """
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def derive_pkce_verifier(key: bytes, raw_state: str, browser_nonce: str) -> str:
    """The PKCE code_verifier of one authorization, derived instead of stored (43 chars, RFC 7636).

    Nothing secret sits in the states table: the verifier is an HMAC of the raw state and the browser
    nonce (neither stored) under a server-side key, so only this service, holding the browser's cookie,
    can recompute it at the callback. Use a Secrets Manager key (e.g. the cursor signing key; the
    domain-separation prefix keeps the uses apart).
    """
    if not key:
        raise ValueError("a PKCE derivation key is required")
    message = f"b24connector-pkce-verifier\0{raw_state}\0{browser_nonce}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _grant_digest(tokens: TokenSet) -> str:
    # Recognises a replayed install/callback payload without decrypting; a truncated hash of two random
    # tokens reveals nothing usable and is not a token.
    material = f"b24connector-grant\0{tokens.access_token}\0{tokens.refresh_token}"
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:32]


def _conditional_failure(exc: PynamoDBException) -> bool:
    return exc.cause_response_code == _CONDITION_FAILED


def _unavailable(action: str, exc: PynamoDBException) -> VaultUnavailable:
    return VaultUnavailable(f"DynamoDB {action} failed ({exc.cause_response_code or type(exc).__name__})")


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


class PortalStore:
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
            raise _unavailable("GetItem", exc) from None

    def get(self, member_id: str, *, consistent: bool = False) -> Portal | None:
        """The portal record, or None; `consistent` for a strongly consistent read."""
        item = self._item(member_id, consistent=consistent)
        return Portal.of(item) if item is not None else None

    def get_by_domain(self, domain: str) -> Portal | None:
        """The portal serving `domain` (DomainIndex, eventually consistent); active and newest first."""
        try:
            items = [Portal.of(item) for item in self.model.domain_index.query(domain.strip().lower())]
        except PynamoDBException as exc:
            raise _unavailable("Query DomainIndex", exc) from None
        if not items:
            return None
        # A portal deleted and created again keeps its domain under a new member_id.
        return max(items, key=lambda p: (p.is_active, p.updated_at or 0))

    def tokens(self, portal: Portal) -> TokenSet:
        """Decrypt the portal's stored pair (cached per version); ReauthRequired when none is stored."""
        sealed = portal.sealed()
        if sealed is None:
            raise ReauthRequired(portal.member_id, portal.health)
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
                raise _unavailable("Query RefreshDueIndex", exc) from None

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
        if not tokens.member_id:
            raise ValueError("a grant needs its member_id")
        if role not in ROLE_RANK:
            raise ValueError(f"unknown grant role {role!r}")
        digest = _grant_digest(tokens)
        trusted_token = application_token if role in (ROLE_ADMIN, ROLE_SYSTEM) else None
        new_verifier = hash_secret(trusted_token) if trusted_token else None
        sealed: SealedTokens | None = None
        for _ in range(5):
            existing = self._item(tokens.member_id, consistent=True)
            if existing is not None and digest in (existing.grant_digests or []):
                return Portal.of(existing)
            if existing is not None:
                current = Portal.of(existing)
                if current.is_active and current.role_rank > ROLE_RANK[role]:
                    raise GrantRefused(tokens.member_id, current.grant_role, role)
            if sealed is None:
                sealed = self.cipher.seal(tokens)
            now = int(self._clock())
            obtained = int(tokens.obtained_at) or now
            item = self.model(
                tokens.member_id,
                version=(int(existing.version) if existing is not None else 0) + 1,
                health=HEALTH_ACTIVE,
                domain=domain.strip().lower(),
                client_endpoint=tokens.client_endpoint or None,
                server_endpoint=tokens.server_endpoint or None,
                scope=tokens.scope or None,
                status=tokens.status or None,
                user_id=tokens.user_id,
                # A reinstall gets a new application token: an uninstalled record's verifier is stale.
                application_token_hash=new_verifier
                or (
                    existing.application_token_hash
                    if existing is not None and existing.health != HEALTH_UNINSTALLED
                    else None
                ),
                token_ciphertext=sealed.ciphertext,
                access_expires_at=int(tokens.expires_at),
                refresh_obtained_at=obtained,
                due_shard=due_shard_of(tokens.member_id, self.due_index_shards),
                refresh_due_at=obtained + self.refresh_after_seconds,
                grant_digests=[digest, *(existing.grant_digests or [])][:_GRANT_DIGESTS_KEPT]
                if existing is not None
                else [digest],
                grant_role=role,
                # A new grant may belong to another user: its subscriptions are checked again.
                subscription_state=SUBSCRIPTION_PENDING,
                subscribed_events=list(existing.subscribed_events or []) if existing is not None else None,
                created_at=(existing.created_at if existing is not None else None) or now,
                updated_at=now,
            )
            condition = (
                self.model.member_id.does_not_exist()
                if existing is None
                else (self.model.version == existing.version)
            )
            try:
                item.save(condition=condition)
            except PynamoDBException as exc:
                if _conditional_failure(exc):
                    continue  # someone wrote in between: re-read and build on their version
                raise _unavailable("PutItem", exc) from None
            self.cipher.remember(tokens.member_id, int(item.version), tokens)
            return Portal.of(item)
        raise VaultUnavailable(f"grant for portal {tokens.member_id} kept conflicting with other writers")

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
            if _conditional_failure(exc):
                return False
            raise _unavailable("UpdateItem", exc) from None
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
            if _conditional_failure(exc):
                return False
            raise _unavailable("UpdateItem", exc) from None
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
            if _conditional_failure(exc):
                return None
            raise _unavailable("UpdateItem", exc) from None
        return Portal.of(item)

    def mark_needs_reauth(self, member_id: str, expected_version: int) -> bool:
        """Flag an active portal at `expected_version` as needing re-authorization; False if it moved.

        The version does not change: the stored pair is kept, so a rescued pair for this version can
        still land and make the portal active again.
        """
        m = self.model
        try:
            m(member_id).update(
                actions=[
                    m.health.set(HEALTH_NEEDS_REAUTH),
                    m.updated_at.set(int(self._clock())),
                    m.due_shard.remove(),
                    m.refresh_due_at.remove(),
                    m.lease_owner.remove(),
                    m.lease_expires_at.remove(),
                ],
                condition=(m.version == expected_version) & (m.health == HEALTH_ACTIVE),
            )
        except PynamoDBException as exc:
            if _conditional_failure(exc):
                return False
            raise _unavailable("UpdateItem", exc) from None
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
            if _conditional_failure(exc):
                return None
            raise _unavailable("UpdateItem", exc) from None
        return Portal.of(item)

    # --- refresh lease and commit ------------------------------------------------------------------

    def take_lease(
        self,
        member_id: str,
        expected_version: int,
        owner: str,
        *,
        lease_seconds: float,
        defer_due_until: int | None = None,
        min_interval_seconds: float = 0.0,
        settle_seconds: float = 0.0,
    ) -> bool:
        """Take the refresh lease of an active portal at `expected_version` if free or expired.

        `defer_due_until` moves the portal out of the due window (scheduled refreshes), so a failed
        attempt is not picked up again before MIN_REFRESH_INTERVAL_HOURS. `min_interval_seconds` refuses
        the lease while the last attempt is more recent than that (the lazy-refresh throttle): part of
        the one conditional write, so it holds across containers. A lease that lapsed without being
        released is taken only `settle_seconds` after it expired (Portal.lease_unsettled).
        """
        m = self.model
        now = self._clock()
        actions: list[Any] = [
            m.lease_owner.set(owner),
            m.lease_expires_at.set(now + lease_seconds),
            m.last_refresh_attempt_at.set(now),
        ]
        if defer_due_until is not None:
            actions.append(m.refresh_due_at.set(defer_due_until))
        try:
            m(member_id).update(
                actions=actions,
                condition=(m.version == expected_version)
                & (m.health == HEALTH_ACTIVE)
                & (m.lease_owner.does_not_exist() | (m.lease_expires_at < now - settle_seconds))
                & (
                    m.last_refresh_attempt_at.does_not_exist()
                    | (m.last_refresh_attempt_at <= now - min_interval_seconds)
                ),
            )
        except PynamoDBException as exc:
            if _conditional_failure(exc):
                return False
            raise _unavailable("UpdateItem", exc) from None
        return True

    def take_due_lease(
        self,
        member_id: str,
        expected_version: int,
        owner: str,
        *,
        lease_seconds: float,
        now: float,
        min_gap_seconds: float,
        settle_seconds: float = 0.0,
    ) -> Portal | None:
        """Take the lease of a due portal in one conditional UpdateItem; the record from before, or None.

        The condition holds every check of a scheduled refresh: `expected_version`, active, refresh due
        by `now`, no running or unsettled lease (`settle_seconds`, as take_lease), neither obtained nor
        attempted within `min_gap_seconds`. The due time
        moves to `now + min_gap_seconds` (as take_lease's `defer_due_until`). The snapshot is the record
        as it was before the lease (ReturnValues ALL_OLD), so release_lease can undo the attempt with
        it. None when any condition failed: read the record to tell which.
        """
        m = self.model
        lease_now = self._clock()
        quiet_since = now - min_gap_seconds
        actions: list[Any] = [
            m.lease_owner.set(owner),
            m.lease_expires_at.set(lease_now + lease_seconds),
            m.last_refresh_attempt_at.set(lease_now),
            m.refresh_due_at.set(int(now + min_gap_seconds)),
        ]
        condition = (
            (m.version == expected_version)
            & (m.health == HEALTH_ACTIVE)
            & (m.refresh_due_at <= now)
            & (m.lease_owner.does_not_exist() | (m.lease_expires_at < lease_now - settle_seconds))
            # Bitrix24 blocks apps that refresh too often (fact sheet 2.7): one refresh per portal per gap.
            & (m.refresh_obtained_at.does_not_exist() | (m.refresh_obtained_at <= quiet_since))
            & (m.last_refresh_attempt_at.does_not_exist() | (m.last_refresh_attempt_at <= quiet_since))
        )
        try:
            # Model.update only asks for ALL_NEW, which loses the values an undo must put back.
            data = m._get_connection().update_item(
                member_id, actions=actions, condition=condition, return_values=ALL_OLD
            )
        except PynamoDBException as exc:
            if _conditional_failure(exc):
                return None
            raise _unavailable("UpdateItem", exc) from None
        return Portal.of(m.from_raw_data(data[ATTRIBUTES]))

    def release_lease(self, member_id: str, owner: str, *, undo_attempt_of: Portal | None = None) -> bool:
        """Drop the lease if `owner` still holds it; False when it had expired and moved on.

        `undo_attempt_of` (the snapshot the lease was taken from) also puts back what take_lease
        recorded about the attempt (last_refresh_attempt_at, a deferred refresh_due_at): for an
        attempt that provably never reached the token endpoint, so it must not count as one.
        """
        m = self.model
        actions: list[Any] = [m.lease_owner.remove(), m.lease_expires_at.remove()]
        if undo_attempt_of is not None:
            previous = undo_attempt_of.last_refresh_attempt_at
            actions.append(
                m.last_refresh_attempt_at.remove()
                if previous is None
                else m.last_refresh_attempt_at.set(previous)
            )
            if undo_attempt_of.refresh_due_at is not None:
                actions.append(m.refresh_due_at.set(undo_attempt_of.refresh_due_at))
        try:
            m(member_id).update(actions=actions, condition=m.lease_owner == owner)
        except PynamoDBException as exc:
            if _conditional_failure(exc):
                return False
            raise _unavailable("UpdateItem", exc) from None
        return True

    def commit_refresh(
        self, member_id: str, expected_version: int, sealed: SealedTokens, *, domain: str | None = None
    ) -> Portal | None:
        """Compare-and-set a refreshed pair on `expected_version`: version +1, lease cleared, new due time.

        The metadata's endpoints must already be judged (vault.endpoints.EndpointGuard); an empty one
        keeps the stored value. `client_endpoint` is written only together with `domain`, its host, in
        this one conditional write (a portal move: DomainIndex follows): the REST client refuses an
        endpoint that is not on the stored domain, so the two never change apart.

        Returns the new record, or None when the version moved (someone else's chain is stored).
        """
        if sealed.member_id != member_id:
            raise ValueError("sealed tokens belong to another portal")
        meta = sealed.metadata
        if domain is not None and not meta.client_endpoint:
            raise ValueError("a domain is stored only together with its client_endpoint")
        m = self.model
        now = int(self._clock())
        obtained = meta.obtained_at or now
        actions: list[Any] = [
            m.version.set(expected_version + 1),
            m.health.set(HEALTH_ACTIVE),
            m.token_ciphertext.set(sealed.ciphertext),
            m.access_expires_at.set(meta.expires_at),
            m.refresh_obtained_at.set(obtained),
            m.due_shard.set(due_shard_of(member_id, self.due_index_shards)),
            m.refresh_due_at.set(obtained + self.refresh_after_seconds),
            m.updated_at.set(now),
            m.lease_owner.remove(),
            m.lease_expires_at.remove(),
        ]
        if domain is not None:
            actions += [m.domain.set(domain.strip().lower()), m.client_endpoint.set(meta.client_endpoint)]
        # The token response repeats the portal facts; keep stored values where it left them out.
        for attr, value in (
            (m.server_endpoint, meta.server_endpoint),
            (m.scope, meta.scope),
            (m.status, meta.status),
        ):
            if value:
                actions.append(attr.set(value))
        if meta.user_id is not None:
            actions.append(m.user_id.set(meta.user_id))
        item = m(member_id)
        try:
            item.update(actions=actions, condition=m.version == expected_version)
        except PynamoDBException as exc:
            if _conditional_failure(exc):
                return None
            raise _unavailable("UpdateItem", exc) from None
        return Portal.of(item)


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
    stored at all (see derive_pkce_verifier): the token key's policy only serves token blobs, and a
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
            if _conditional_failure(exc):
                raise VaultError("OAuth state already exists; states must be freshly random") from None
            raise _unavailable("PutItem", exc) from None
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
            if _conditional_failure(exc):
                raise StateRefused(self._refusal(state_hash, nonce_hash, now)) from None
            raise _unavailable("UpdateItem", exc) from None
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
            raise _unavailable("GetItem", exc) from None
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
