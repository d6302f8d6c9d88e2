"""The refresh lease and the compare-and-set commit of a refreshed pair (the worker side of the refresh race).

Every change of a portal's token chain is a conditional write on `version`, so a writer that read an
older row can never overwrite a newer chain; the lease is a conditional update as well.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pynamodb.exceptions import PynamoDBException

from b24connector.vault.cipher import SealedTokens
from b24connector.vault.dynamo import Clock, conditional_failure, unavailable
from b24connector.vault.models import HEALTH_ACTIVE, PortalModel, due_shard_of
from b24connector.vault.portal import Portal


class RefreshLeases:
    """Lease and commit of the portals table; PortalStore inherits these with its model and clock."""

    model: type[PortalModel]
    due_index_shards: int
    refresh_after_seconds: int
    _clock: Clock

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
            if conditional_failure(exc):
                return False
            raise unavailable("UpdateItem", exc) from None
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
            # First, so that even a store applying SETs in order (moto) copies the values from before.
            m.lease_prior_attempt_at.set(m.last_refresh_attempt_at | 0),
            m.lease_prior_due_at.set(m.refresh_due_at),
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
            # One refresh per portal per gap: a refresh token lasts 180 days (docs/bitrix24-facts.md
            # F-OAUTH-5), so waiting costs nothing, and no refresh rate is documented as safe.
            & (m.refresh_obtained_at.does_not_exist() | (m.refresh_obtained_at <= quiet_since))
            & (m.last_refresh_attempt_at.does_not_exist() | (m.last_refresh_attempt_at <= quiet_since))
        )
        item = m(member_id)
        try:
            item.update(actions=actions, condition=condition)
        except PynamoDBException as exc:
            if conditional_failure(exc):
                return None
            raise unavailable("UpdateItem", exc) from None
        prior_attempt = item.lease_prior_attempt_at
        return dataclasses.replace(
            Portal.of(item),
            last_refresh_attempt_at=prior_attempt or None,
            refresh_due_at=None if item.lease_prior_due_at is None else int(item.lease_prior_due_at),
        )

    def _lease_removal(self) -> list[Any]:
        """The actions that end a lease: its owner, its expiry and what it replaced."""
        m = self.model
        fields = (m.lease_owner, m.lease_expires_at, m.lease_prior_attempt_at, m.lease_prior_due_at)
        return [field.remove() for field in fields]

    def release_lease(self, member_id: str, owner: str, *, undo_attempt_of: Portal | None = None) -> bool:
        """Drop the lease if `owner` still holds it; False when it had expired and moved on.

        `undo_attempt_of` (the snapshot the lease was taken from) also puts back what take_lease
        recorded about the attempt (last_refresh_attempt_at, a deferred refresh_due_at): for an
        attempt that provably never reached the token endpoint, so it must not count as one.
        """
        m = self.model
        actions: list[Any] = [*self._lease_removal()]
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
            if conditional_failure(exc):
                return False
            raise unavailable("UpdateItem", exc) from None
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
            *self._lease_removal(),
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
            if conditional_failure(exc):
                return None
            raise unavailable("UpdateItem", exc) from None
        return Portal.of(item)
