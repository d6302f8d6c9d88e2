"""The worker holding a portal's refresh lease: spend the refresh token once, and keep what comes back.

This is where the race between workers ends. Every path into a refresh (coordinator.py for the lazy
one, scheduled.py for the sweep's) first takes the portal's lease, a conditional write in
vault.store.PortalStore (take_lease, take_due_lease), so only one worker at a time reaches
LeaseHolder.spend. Refresh tokens are treated as single-use and rotating
(docs/bitrix24-facts.md#f-oauth-12): a second refresh with the same token would fail with invalid_grant
and lose the chain. So the answer is committed with a compare-and-set on `version`, and a pair that
cannot be committed goes to the rescue queue (rescue.py) as ciphertext instead of being dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NoReturn, Protocol

from b24connector.bitrix24.errors import (
    Bitrix24Error,
    InvalidGrant,
    NotInstalled,
    PaymentRequired,
    TransientError,
)
from b24connector.credentials import SecretUnavailable
from b24connector.observability import count, logger
from b24connector.token_refresh.outcomes import METRIC, SCHEDULED, RefreshOutcome, RemainingMs, record
from b24connector.token_refresh.policy import RefreshPolicy
from b24connector.token_refresh.renames import as_stored, judge_endpoints, report_endpoints
from b24connector.token_refresh.rescue import RescueSink, new_rescue_message
from b24connector.tokens import TokenSet
from b24connector.vault.cipher import DataKey, SealedTokens
from b24connector.vault.endpoints import EndpointGuard
from b24connector.vault.errors import (
    GrantNeedsReauth,
    PortalNotStored,
    RefreshDeferred,
    RefreshRejected,
    RefreshUnavailable,
    TokenRescueFailed,
    VaultUnavailable,
)
from b24connector.vault.models import HEALTH_NEEDS_REAUTH
from b24connector.vault.portal import Portal
from b24connector.vault.store import PortalStore

_COMMIT_RESERVE_SECONDS = 2.0  # of a lease, kept after the token call for sealing and the commit


class TokenRefresher(Protocol):
    """The token endpoint as a refresh needs it (b24connector.bitrix24.oauth.OAuthClient fits)."""

    def refresh(
        self, refresh_token: str, *, server_hint: str | None = None, deadline: float | None = None
    ) -> TokenSet:
        """Exchange a refresh token for a new pair by `deadline` (time.monotonic()); raise InvalidGrant, ..."""
        ...


class _NothingToAdopt(Exception):
    """The stored version is still the one the refresh started from."""


class LeaseHolder:
    """Spends a portal's refresh token under its lease and commits, adopts or rescues the answer."""

    def __init__(
        self,
        store: PortalStore,
        refresher: TokenRefresher,
        rescue: RescueSink,
        *,
        endpoints: EndpointGuard,
        policy: RefreshPolicy,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        jitter: Callable[[], float],
    ) -> None:
        self.store = store
        self.refresher = refresher
        self.rescue = rescue
        self.endpoints = endpoints
        self.policy = policy
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter

    def spend(
        self,
        portal: Portal,
        stored: TokenSet,
        owner: str,
        remaining_ms: RemainingMs | None,
        *,
        lease_until: float,
        path: str,
    ) -> tuple[RefreshOutcome, TokenSet]:
        """Spend the refresh token under the lease (which runs until `lease_until`) and keep the answer.

        The encryption material (a KMS data key under the tenant's context) is obtained first: once
        Bitrix24 has answered, sealing the new pair is local AES-GCM, so a KMS outage or throttle can no
        longer lose the chain. No data key, or too little lease left for a token call: nothing is sent,
        the attempt is undone.
        """
        member_id, version = portal.member_id, portal.version
        # The time budget was checked just before the lease was taken.
        try:
            material = self.store.cipher.data_key(member_id)
        except BaseException:
            self.release(member_id, owner, undo_attempt=portal)
            logger.warning("refresh not attempted: no data key", extra={"member_id": member_id, "path": path})
            raise
        lease_left = lease_until - self._clock()
        if lease_left < self.policy.token_call_seconds:
            self.release(member_id, owner, undo_attempt=portal)
            record(
                RefreshOutcome.TRANSIENT_FAILURE,
                member_id,
                version,
                path=path,
                error="LEASE_TOO_SHORT",
                request_sent=False,
            )
            raise RefreshUnavailable(f"too little lease left to refresh portal {member_id}")
        try:
            new = self._call_token_endpoint(portal, stored, owner, lease_left, path=path)
        except (InvalidGrant, PaymentRequired, NotInstalled) as exc:
            return self._after_dead_grant(portal, owner, exc, path=path)
        if not new.member_id:
            new = replace(new, member_id=member_id)
        elif new.member_id != member_id:
            # Storing it would bind another tenant's pair to this row; nothing sane can be done with it.
            self.flag(member_id, version, "member_mismatch")
            record(RefreshOutcome.NEEDS_REAUTH, member_id, version, path=path, error="member_mismatch")
            raise GrantNeedsReauth(member_id, HEALTH_NEEDS_REAUTH)
        return self._commit(portal, new, material, path=path, remaining_ms=remaining_ms)

    def _call_token_endpoint(
        self, portal: Portal, stored: TokenSet, owner: str, lease_left: float, *, path: str
    ) -> TokenSet:
        """The token endpoint's answer; a dead grant propagates, other failures release the lease and raise."""
        member_id, version = portal.member_id, portal.version
        try:
            # The token call must end inside the lease, with room left to seal and commit its answer.
            deadline = time.monotonic() + lease_left - _COMMIT_RESERVE_SECONDS
            return self.refresher.refresh(
                stored.refresh_token, server_hint=portal.server_endpoint, deadline=deadline
            )
        except (InvalidGrant, PaymentRequired, NotInstalled):
            raise  # spend decides: adopt a pair that landed meanwhile, or flag the portal
        except Bitrix24Error as exc:
            if exc.retryable:
                self._after_transient(portal, owner, exc, path=path)
            self.release(member_id, owner)
            record(RefreshOutcome.CLIENT_REJECTED, member_id, version, path=path, error=exc.code)
            raise RefreshRejected(
                f"token endpoint rejected the app for portal {member_id} ({exc.code})"
            ) from None
        except SecretUnavailable as exc:
            # No client secret (unreadable, or not put yet), no token request: the attempt never happened.
            self.release(member_id, owner, undo_attempt=portal)
            record(
                RefreshOutcome.TRANSIENT_FAILURE,
                member_id,
                version,
                path=path,
                error=exc.code,
                request_sent=False,
            )
            raise RefreshUnavailable(
                f"client secret unavailable for the refresh of portal {member_id}"
            ) from None
        except BaseException:
            self.release(member_id, owner)
            raise

    def _commit(
        self,
        portal: Portal,
        new: TokenSet,
        material: DataKey,
        *,
        path: str,
        remaining_ms: RemainingMs | None,
    ) -> tuple[RefreshOutcome, TokenSet]:
        member_id, version = portal.member_id, portal.version
        change = judge_endpoints(self.store, self.endpoints, portal, new.client_endpoint, new.server_endpoint)
        # Only judged endpoints travel on (sealed for the commit or the rescue queue); "" keeps the stored.
        judged = replace(
            new, client_endpoint=change.client_endpoint or "", server_endpoint=change.server_endpoint or ""
        )
        # Local AES-GCM with the data key obtained before the spend: no KMS call can fail here.
        sealed = self.store.cipher.seal(judged, key=material)
        try:
            committed = self._with_retries(
                lambda: self.store.commit_refresh(member_id, version, sealed, domain=change.domain),
                remaining_ms,
            )
        except VaultUnavailable as exc:
            return self._rescue(portal, new, sealed, str(exc), path=path)
        if committed is not None:
            stored = as_stored(new, committed)
            self.store.cipher.remember(member_id, committed.version, stored)
            report_endpoints(member_id, change, path=path)
            record(RefreshOutcome.REFRESHED, member_id, committed.version, path=path)
            return RefreshOutcome.REFRESHED, stored
        # The version moved while we refreshed (a new grant, or a commit after our lease expired):
        # the stored chain wins and ours is abandoned.
        try:
            return self.adopt_or_raise(portal, path=path, reason="commit_conflict")
        except _NothingToAdopt:
            return self._rescue(portal, new, sealed, "conflict without a newer version", path=path)

    def _rescue(
        self, portal: Portal, new: TokenSet, sealed: SealedTokens, error: str, *, path: str
    ) -> tuple[RefreshOutcome, TokenSet]:
        member_id, version = portal.member_id, portal.version
        try:
            self.rescue.send(new_rescue_message(version, sealed))
        except Exception:
            logger.exception(
                "token rescue could not be queued",
                extra={"member_id": member_id, "version": version, "commit_error": error},
            )
            self.flag(member_id, version, "rescue_failed")
            count(METRIC[RefreshOutcome.NEEDS_REAUTH])
            record(RefreshOutcome.RESCUE_FAILED, member_id, version, path=path, commit_error=error)
            raise TokenRescueFailed(f"refreshed pair of portal {member_id} could not be kept") from None
        # The lease is left in place: once it lapses, it marks the outcome as unknown (lease_unsettled), so
        # nobody spends the old (already spent) refresh token until the rescue lands and clears it, or
        # until the rescue window is over.
        record(RefreshOutcome.RESCUED, member_id, version, path=path, commit_error=error)
        return RefreshOutcome.RESCUED, new

    def _after_transient(self, portal: Portal, owner: str, exc: Bitrix24Error, *, path: str) -> NoReturn:
        """Release the lease after a retryable token-endpoint failure; see ScheduledRefresh for the rules."""
        member_id, version = portal.member_id, portal.version
        if isinstance(exc, TransientError) and not exc.request_sent:
            # The refresh token is provably unspent: the attempt does not count, a retry may come soon.
            self.release(member_id, owner, undo_attempt=portal)
            record(
                RefreshOutcome.TRANSIENT_FAILURE,
                member_id,
                version,
                path=path,
                error=exc.code,
                request_sent=False,
            )
            raise RefreshUnavailable(f"token endpoint unreachable for portal {member_id}") from None
        self.release(member_id, owner)
        record(
            RefreshOutcome.TRANSIENT_FAILURE, member_id, version, path=path, error=exc.code, request_sent=True
        )
        if path == SCHEDULED:
            # The attempt (and the due time moved out by take_due_lease) stands: see ScheduledRefresh.
            raise RefreshDeferred(
                f"refresh of portal {member_id} deferred by {self.policy.min_refresh_interval_hours} h"
            ) from None
        raise RefreshUnavailable(f"token endpoint unavailable for portal {member_id}") from None

    def _after_dead_grant(
        self, portal: Portal, owner: str, exc: Bitrix24Error, *, path: str
    ) -> tuple[RefreshOutcome, TokenSet]:
        member_id = portal.member_id
        try:
            return self.adopt_or_raise(portal, path=path, reason=exc.code)
        except _NothingToAdopt:
            pass
        if self.store.mark_needs_reauth(member_id, portal.version, reason=exc.code):
            record(RefreshOutcome.NEEDS_REAUTH, member_id, portal.version, path=path, error=exc.code)
            raise GrantNeedsReauth(member_id, HEALTH_NEEDS_REAUTH, reason=exc.code) from None
        self.release(member_id, owner)
        # Flagging lost a race: whatever moved the record decides (adopt, or it is inactive now).
        try:
            return self.adopt_or_raise(portal, path=path, reason=exc.code)
        except _NothingToAdopt:
            current = self.store.get(member_id, consistent=True)
            record(RefreshOutcome.NEEDS_REAUTH, member_id, portal.version, path=path, error=exc.code)
            raise GrantNeedsReauth(member_id, current.health if current else "missing") from None

    def adopt_or_raise(self, portal: Portal, *, path: str, reason: str) -> tuple[RefreshOutcome, TokenSet]:
        """Use a newer stored pair if one landed; GrantNeedsReauth if the portal became inactive."""
        current = self.store.get(portal.member_id, consistent=True)
        if current is None:
            raise PortalNotStored(f"no portal {portal.member_id}")
        if current.version == portal.version:
            raise _NothingToAdopt
        if not current.is_active:
            raise GrantNeedsReauth(portal.member_id, current.health)
        tokens = self.store.tokens(current)
        record(RefreshOutcome.ADOPTED, portal.member_id, current.version, path=path, reason=reason)
        return RefreshOutcome.ADOPTED, tokens

    # --- helpers -----------------------------------------------------------------------------------

    def _with_retries(self, action: Callable[[], Any], remaining_ms: RemainingMs | None) -> Any:
        attempts = self.policy.commit_attempts
        for attempt in range(attempts):
            try:
                return action()
            except VaultUnavailable:
                delay = self.policy.commit_backoff_seconds * (2.0**attempt) * (0.5 + self._jitter() / 2)
                out_of_time = remaining_ms is not None and remaining_ms() < delay * 1000 + 2_000
                if attempt == attempts - 1 or out_of_time:
                    raise
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def release(self, member_id: str, owner: str, *, undo_attempt: Portal | None = None) -> None:
        """Give the lease back (with `undo_attempt`, as if no attempt was made); a failure lets it expire."""
        try:
            self.store.release_lease(member_id, owner, undo_attempt_of=undo_attempt)
        except VaultUnavailable:
            logger.warning("refresh lease not released; it will expire", extra={"member_id": member_id})

    def flag(self, member_id: str, version: int, reason: str) -> None:
        """Mark the portal needs_reauth at `version` for `reason` (PortalNeedsReauth's code); a failure is logged."""
        try:
            self.store.mark_needs_reauth(member_id, version, reason=reason)
        except VaultUnavailable:
            logger.error("portal could not be flagged needs_reauth", extra={"member_id": member_id})
