"""Refresh coordinator: one token-endpoint call per expired pair, however many workers notice it.

Bitrix24 refresh tokens are treated as single-use and rotating (fact sheet 2.6): a second refresh with
the same token fails with invalid_grant and the chain is lost. So a refresh runs only under a short
lease (a conditional update), its answer is committed with a compare-and-set on `version`, and a pair
that cannot be committed goes to the rescue queue as ciphertext instead of being dropped.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
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
from b24connector.settings import Settings
from b24connector.tokens import TokenSet
from b24connector.vault.cipher import DataKey, SealedTokens, TokenMetadata
from b24connector.vault.endpoints import EndpointChange, EndpointGuard
from b24connector.vault.errors import (
    NotEnoughTime,
    PortalNotFound,
    ReauthRequired,
    RefreshDeferred,
    RefreshRejected,
    RefreshThrottled,
    RefreshTimeout,
    RefreshUnavailable,
    RefreshUnsettled,
    TokenRescueFailed,
    VaultUnavailable,
)
from b24connector.vault.models import HEALTH_NEEDS_REAUTH
from b24connector.vault.rescue import RescueMessage, RescueSink, new_rescue_message
from b24connector.vault.store import Portal, PortalStore

RemainingMs = Callable[[], int]
_HOUR = 3600
_SCHEDULED = "scheduled"
_COMMIT_RESERVE_SECONDS = 2.0  # of a lease, kept after the token call for sealing and the commit


class TokenRefresher(Protocol):
    """The token endpoint as the vault needs it (b24connector.bitrix24.oauth.OAuthClient fits)."""

    def refresh(
        self, refresh_token: str, *, server_hint: str | None = None, deadline: float | None = None
    ) -> TokenSet:
        """Exchange a refresh token for a new pair by `deadline` (time.monotonic()); raise InvalidGrant, ..."""
        ...


class RefreshOutcome(StrEnum):
    """How one refresh attempt ended; the value is the `outcome` field of its log line."""

    REFRESHED = "refreshed"
    RESCUED = "rescued"  # Bitrix24 answered, the commit did not land, the ciphertext is queued
    ADOPTED = "adopted"  # another worker's newer pair is stored and was used instead
    ALREADY_FRESH = "already_fresh"  # the rejected access token had been replaced meanwhile
    NEEDS_REAUTH = "needs_reauth"
    TRANSIENT_FAILURE = "transient_failure"  # worth retrying soon (scheduled: nothing reached Bitrix24)
    # The failed request may have reached the token endpoint: not again before the interval. Only
    # returned: the failure itself is recorded as TRANSIENT_FAILURE, the worker counts the deferral.
    DEFERRED = "deferred"
    CLIENT_REJECTED = "client_rejected"
    NOT_ENOUGH_TIME = "not_enough_time"
    BUSY = "busy"
    THROTTLED = "throttled"  # lazy: the last refresh is too recent (LAZY_REFRESH_MIN_INTERVAL_SECONDS)
    # A lease lapsed without being released (a rescue may be pending): no refresh within the window.
    UNSETTLED = "unsettled"
    LEASE_TIMEOUT = "lease_timeout"
    RESCUE_FAILED = "rescue_failed"
    SKIPPED_VERSION_MOVED = "skipped_version_moved"
    SKIPPED_NOT_DUE = "skipped_not_due"
    SKIPPED_RECENT = "skipped_recent"
    SKIPPED_INACTIVE = "skipped_inactive"
    MISSING = "missing"


class RescueOutcome(StrEnum):
    """How applying one rescue message ended."""

    APPLIED = "applied"
    STALE = "stale"  # the version moved on (newer grant or refresh): the rescued pair is obsolete


_METRIC = {
    RefreshOutcome.REFRESHED: "TokenRefreshed",
    RefreshOutcome.RESCUED: "TokenRescueQueued",
    RefreshOutcome.ADOPTED: "TokenAdopted",
    RefreshOutcome.ALREADY_FRESH: "TokenAlreadyFresh",
    RefreshOutcome.NEEDS_REAUTH: "PortalNeedsReauth",
    RefreshOutcome.TRANSIENT_FAILURE: "TokenRefreshTransientFailure",
    RefreshOutcome.CLIENT_REJECTED: "TokenRefreshRejected",
    RefreshOutcome.NOT_ENOUGH_TIME: "TokenRefreshNoTime",
    RefreshOutcome.BUSY: "TokenRefreshBusy",
    RefreshOutcome.THROTTLED: "TokenRefreshThrottled",
    RefreshOutcome.UNSETTLED: "TokenRefreshUnsettled",
    RefreshOutcome.LEASE_TIMEOUT: "TokenRefreshLeaseTimeout",
    RefreshOutcome.RESCUE_FAILED: "TokenRescueFailed",
    RefreshOutcome.SKIPPED_VERSION_MOVED: "TokenRefreshSkipped",
    RefreshOutcome.SKIPPED_NOT_DUE: "TokenRefreshSkipped",
    RefreshOutcome.SKIPPED_RECENT: "TokenRefreshSkipped",
    RefreshOutcome.SKIPPED_INACTIVE: "TokenRefreshSkipped",
    RefreshOutcome.MISSING: "TokenRefreshSkipped",
    RescueOutcome.APPLIED: "TokenRescueApplied",
    RescueOutcome.STALE: "TokenRescueStale",
}


_SCHEDULED_OUTCOME_OF: dict[type[Exception], RefreshOutcome] = {
    NotEnoughTime: RefreshOutcome.NOT_ENOUGH_TIME,
    RefreshUnavailable: RefreshOutcome.TRANSIENT_FAILURE,
    RefreshDeferred: RefreshOutcome.DEFERRED,
    RefreshRejected: RefreshOutcome.CLIENT_REJECTED,
    ReauthRequired: RefreshOutcome.NEEDS_REAUTH,
    PortalNotFound: RefreshOutcome.MISSING,
}


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """Timing of leases, waits and retries; `from_settings` derives them from the HTTP timeout."""

    lease_seconds: float = 30.0
    max_wait_seconds: float = 20.0
    poll_initial_seconds: float = 0.05
    poll_max_seconds: float = 0.5
    refresh_budget_ms: int = 15_000  # the holder needs: KMS data key + token call + commit (+ retries)
    token_call_seconds: float = 12.0  # lease time a token call needs; less left after the data key: no call
    wait_reserve_ms: int = 3_000  # a waiting caller keeps this much for its own REST call afterwards
    commit_attempts: int = 4
    commit_backoff_seconds: float = 0.2
    min_refresh_interval_hours: int = 24
    lazy_min_interval_seconds: float = 300.0  # one lazy refresh per portal per this, across containers
    rescue_window_seconds: float = 900.0  # a lapsed, unreleased lease blocks refreshes this long after

    @classmethod
    def from_settings(cls, settings: Settings) -> RefreshPolicy:
        """Lease outlives the slowest token call; waiting stops before the lease would expire."""
        http = settings.http_timeout_seconds
        return cls(
            lease_seconds=2 * http + 10,
            max_wait_seconds=http + 10,
            refresh_budget_ms=int((http + 5) * 1000),
            token_call_seconds=http + 2,
            min_refresh_interval_hours=settings.min_refresh_interval_hours,
            lazy_min_interval_seconds=settings.lazy_refresh_min_interval_seconds,
            rescue_window_seconds=settings.rescue_window_seconds,
        )


def _record(
    outcome: RefreshOutcome | RescueOutcome, member_id: str, version: int | None, **extra: Any
) -> None:
    fields = {"member_id": member_id, "version": version, "outcome": outcome.value, **extra}
    if outcome in (RefreshOutcome.RESCUE_FAILED,):
        logger.error("token refresh", extra=fields)
    elif outcome in (
        RefreshOutcome.NEEDS_REAUTH,
        RefreshOutcome.TRANSIENT_FAILURE,
        RefreshOutcome.CLIENT_REJECTED,
        RefreshOutcome.LEASE_TIMEOUT,
        RefreshOutcome.THROTTLED,
        RefreshOutcome.UNSETTLED,
        RefreshOutcome.RESCUED,
        RescueOutcome.STALE,
    ):
        logger.warning("token refresh", extra=fields)
    else:
        logger.info("token refresh", extra=fields)
    count(_METRIC[outcome])


class RefreshCoordinator:
    """Lazy (expired_token) and scheduled refreshes of portal tokens, plus rescue application."""

    def __init__(
        self,
        store: PortalStore,
        refresher: TokenRefresher,
        rescue: RescueSink,
        *,
        endpoints: EndpointGuard,
        policy: RefreshPolicy | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.refresher = refresher
        self.rescue = rescue
        self.endpoints = endpoints
        self.policy = policy or RefreshPolicy()
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter

    # --- reads -------------------------------------------------------------------------------------

    def current_tokens(self, member_id: str) -> TokenSet:
        """The stored pair of an active portal (no KMS call when this container saw the version)."""
        portal = self.store.get(member_id)
        if portal is None:
            raise PortalNotFound(f"no portal {member_id}")
        if not portal.is_active:
            raise ReauthRequired(member_id, portal.health)
        return self.store.tokens(portal)

    def stored_if_newer(
        self, member_id: str, rejected_access_token: str, *, remaining_ms: RemainingMs | None = None
    ) -> TokenSet | None:
        """The stored pair if its access token is not `rejected_access_token`, else None; never refreshes.

        Another container's refresh revokes the access token this one cached, and Bitrix24 then answers
        invalid_token, not expired_token. Strongly consistent reads (decrypted through the cached
        cipher): one when nothing is in flight; while another worker holds the refresh lease (Bitrix24
        may already have revoked the token, the commit has not landed yet) it waits for that commit as
        long as fresh_access_token would. A missing or inactive portal has nothing to adopt (None: the
        caller's error stands). A lapsed lease nobody released (a rescued pair may be on its way) raises
        RefreshUnsettled: the caller's token may well be revoked by a refresh that has not landed yet, so
        its error must not be read as a dead grant. Raises VaultUnavailable or TokenDecryptError too.
        """
        start = self._clock()
        deadline = start + self.policy.max_wait_seconds
        if remaining_ms is not None:
            deadline = min(deadline, start + (remaining_ms() - self.policy.wait_reserve_ms) / 1000)
        attempt = 0
        while True:
            portal = self.store.get(member_id, consistent=True)
            if portal is None or not portal.is_active:
                return None
            stored = self.store.tokens(portal)
            if stored.access_token != rejected_access_token:
                _record(
                    RefreshOutcome.ADOPTED, member_id, portal.version, path="reload", reason="invalid_token"
                )
                return stored
            now = self._clock()
            self._require_settled(portal, now, path="reload")
            if not portal.lease_held(now) or now >= deadline:
                return None
            self._sleep(self._backoff(attempt))
            attempt += 1

    # --- lazy path ---------------------------------------------------------------------------------

    def fresh_access_token(
        self, member_id: str, rejected_access_token: str, *, remaining_ms: RemainingMs | None = None
    ) -> TokenSet:
        """A pair whose access token is not `rejected_access_token`, refreshing at most once overall.

        At most one lazy refresh per portal per `lazy_min_interval_seconds` (a condition of the lease
        write, so across containers): a portal that rejects even the pair just obtained gets
        RefreshThrottled, not a refresh per read. A lease that lapsed without being released means the
        outcome of its refresh is unknown (its pair may be in the rescue queue): RefreshUnsettled until
        the rescue lands or `rescue_window_seconds` have passed, never a second spend of the refresh
        token. Raises PortalNotFound, ReauthRequired, RefreshTimeout, RefreshThrottled, RefreshUnsettled,
        RefreshUnavailable, RefreshRejected, NotEnoughTime or TokenRescueFailed.
        """
        start = self._clock()
        deadline = start + self.policy.max_wait_seconds
        if remaining_ms is not None:
            deadline = min(deadline, start + (remaining_ms() - self.policy.wait_reserve_ms) / 1000)
        seen_holder = False
        attempt = 0
        while True:
            portal = self.store.get(member_id, consistent=True)
            if portal is None:
                raise PortalNotFound(f"no portal {member_id}")
            if not portal.is_active:
                raise ReauthRequired(member_id, portal.health)
            stored = self.store.tokens(portal)
            if stored.access_token != rejected_access_token:
                _record(RefreshOutcome.ALREADY_FRESH, member_id, portal.version, path="lazy")
                return stored
            now = self._clock()
            self._require_settled(portal, now, path="lazy")
            if portal.lease_held(now):
                seen_holder = True
            elif seen_holder and portal.lease_owner is None:
                # The holder let go without a commit (its token call failed): one attempt per wave,
                # so a struggling OAuth server does not get one call per waiting caller.
                _record(RefreshOutcome.TRANSIENT_FAILURE, member_id, portal.version, path="lazy", waited=True)
                raise RefreshUnavailable(f"the refresh of portal {member_id} failed in another worker")
            else:
                self._require_quiet(portal, now)
                self._require_budget(remaining_ms, portal, "lazy")
                owner = uuid.uuid4().hex
                lease_until = self._clock() + self.policy.lease_seconds  # no later than the stored expiry
                if self.store.take_lease(
                    member_id,
                    portal.version,
                    owner,
                    lease_seconds=self.policy.lease_seconds,
                    min_interval_seconds=self.policy.lazy_min_interval_seconds,
                    settle_seconds=self.policy.rescue_window_seconds,
                ):
                    return self._refresh_as_holder(
                        portal, stored, owner, remaining_ms, lease_until=lease_until, path="lazy"
                    )[1]
                if self._clock() < deadline:
                    continue  # lost the race for the lease: the winner is visible on the next read
            if self._clock() >= deadline:
                _record(RefreshOutcome.LEASE_TIMEOUT, member_id, portal.version, path="lazy")
                raise RefreshTimeout(f"gave up waiting for the refresh of portal {member_id}")
            self._sleep(self._backoff(attempt))
            attempt += 1

    # --- scheduled path ----------------------------------------------------------------------------

    def refresh_if_due(
        self, member_id: str, expected_version: int, *, remaining_ms: RemainingMs | None = None
    ) -> RefreshOutcome:
        """Refresh a portal the sweep found due, unless anything says it should not be touched now.

        Taking the lease records the attempt and moves the due time out by MIN_REFRESH_INTERVAL_HOURS
        before the token endpoint is called, so a worker that dies mid-call cannot cause a second spend
        of the (single-use) refresh token. How a failure ends decides what happens next:

        - DynamoDB or KMS failing before the token call (VaultUnavailable raised; a lease already
          taken is released with its attempt undone), too little time (NOT_ENOUGH_TIME): nothing was
          recorded; the message is worth another delivery.
        - The token request provably never reached Bitrix24 (connection refused, DNS, TLS handshake,
          connect timeout; or the client secret could not be read): the attempt record is undone and
          the outcome is TRANSIENT_FAILURE, so the queue's redelivery refreshes soon.
        - The request may have reached Bitrix24 (read timeout, 5xx, a broken answer): the refresh
          token may be spent, so nothing retries it before the interval is over. The outcome is
          DEFERRED (final: redelivering could only end in SKIPPED_RECENT); the sweep after the interval
          tries again, and if the token was spent that attempt flags the portal needs_reauth (metric).
        """
        now = self._clock()
        min_gap = self.policy.min_refresh_interval_hours * _HOUR
        left = self._budget_short(remaining_ms)
        if left is not None:
            # A portal that would be skipped anyway keeps its skip outcome, as when the read came first.
            skipped = self._scheduled_skip_of(member_id, expected_version, now, min_gap)
            if skipped is not None:
                return skipped
            _record(
                RefreshOutcome.NOT_ENOUGH_TIME, member_id, expected_version, path=_SCHEDULED, left_ms=left
            )
            return RefreshOutcome.NOT_ENOUGH_TIME
        try:
            owner = uuid.uuid4().hex
            # One conditional write checks everything _scheduled_skip does and takes the lease; only a
            # refusal costs a read (to name the skip), so a refresh is UpdateItem, Decrypt, GenerateDataKey,
            # the token call and the commit.
            lease_until = self._clock() + self.policy.lease_seconds
            portal = self.store.take_due_lease(
                member_id,
                expected_version,
                owner,
                lease_seconds=self.policy.lease_seconds,
                now=now,
                min_gap_seconds=min_gap,
                settle_seconds=self.policy.rescue_window_seconds,
            )
            if portal is None:
                skipped = self._scheduled_skip_of(member_id, expected_version, now, min_gap)
                if skipped is not None:
                    return skipped
                # Every check passes on the re-read: another writer moved the record in between.
                _record(RefreshOutcome.BUSY, member_id, expected_version, path=_SCHEDULED)
                return RefreshOutcome.BUSY
            try:
                stored = self.store.tokens(portal)
            except BaseException:
                # Nothing reached the token endpoint: the attempt must not count (as before the lease).
                self._release(member_id, owner, undo_attempt=portal)
                raise
            return self._refresh_as_holder(
                portal, stored, owner, remaining_ms, lease_until=lease_until, path=_SCHEDULED
            )[0]
        except (
            NotEnoughTime,
            RefreshUnavailable,
            RefreshDeferred,
            RefreshRejected,
            ReauthRequired,
            PortalNotFound,
        ) as exc:
            # Already logged and counted where it happened; the sweep only needs the outcome.
            return _SCHEDULED_OUTCOME_OF[type(exc)]

    def _scheduled_skip_of(
        self, member_id: str, expected_version: int, now: float, min_gap: float
    ) -> RefreshOutcome | None:
        """Read the record once: the skip outcome it calls for (recorded), or None when none applies."""
        portal = self.store.get(member_id, consistent=True)
        if portal is None:
            _record(RefreshOutcome.MISSING, member_id, None, path=_SCHEDULED)
            return RefreshOutcome.MISSING
        skip = self._scheduled_skip(portal, expected_version, now, min_gap, self.policy.rescue_window_seconds)
        if skip is not None:
            _record(skip, member_id, portal.version, path=_SCHEDULED)
        return skip

    @staticmethod
    def _scheduled_skip(
        portal: Portal, expected_version: int, now: float, min_gap: float, settle: float
    ) -> RefreshOutcome | None:
        if portal.version != expected_version:
            return RefreshOutcome.SKIPPED_VERSION_MOVED
        if not portal.is_active:
            return RefreshOutcome.SKIPPED_INACTIVE
        if portal.refresh_due_at is None or portal.refresh_due_at > now:
            return RefreshOutcome.SKIPPED_NOT_DUE
        if portal.lease_held(now) or portal.lease_unsettled(now, settle):
            return RefreshOutcome.BUSY
        # Bitrix24 blocks apps that refresh too often (fact sheet 2.7): one refresh per portal per gap.
        if any(
            t is not None and now - t < min_gap
            for t in (portal.refresh_obtained_at, portal.last_refresh_attempt_at)
        ):
            return RefreshOutcome.SKIPPED_RECENT
        return None

    # --- rescue ------------------------------------------------------------------------------------

    def apply_rescue(self, body: str | bytes | Mapping[str, Any]) -> RescueOutcome:
        """Commit a rescued pair on its base version (TokenRescueFunction); stale ones are dropped.

        Raises ValueError for a malformed message, TokenDecryptError when the ciphertext is not this
        tenant's, VaultUnavailable when DynamoDB failed (the SQS retry will bring it back).
        """
        message = RescueMessage.parse(body)
        # Decrypting proves the pair belongs to this tenant before it can replace anything.
        tokens = self.store.cipher.open(message.sealed)
        current = self.store.get(message.member_id, consistent=True)
        committed: Portal | None = None
        change = EndpointChange()
        if current is not None and current.version == message.base_version:
            # The queued endpoints are judged again: the message may predate this guard.
            meta = message.sealed.metadata
            change = self._judge_endpoints(current, meta.client_endpoint, meta.server_endpoint)
            sealed = replace(message.sealed, metadata=_judged(meta, change))
            committed = self.store.commit_refresh(
                message.member_id, message.base_version, sealed, domain=change.domain
            )
        if committed is None:
            if current is not None and current.version == message.base_version:
                current = self.store.get(message.member_id, consistent=True)
            _record(
                RescueOutcome.STALE,
                message.member_id,
                message.base_version,
                current_version=current.version if current else None,
            )
            return RescueOutcome.STALE
        self.store.cipher.remember(message.member_id, committed.version, _as_stored(tokens, committed))
        self._report_endpoints(message.member_id, change, path="rescue")
        _record(RescueOutcome.APPLIED, message.member_id, committed.version)
        return RescueOutcome.APPLIED

    # --- the lease holder --------------------------------------------------------------------------

    def _refresh_as_holder(
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
        # The time budget was checked just before the lease was taken (_require_budget).
        try:
            material = self.store.cipher.data_key(member_id)
        except BaseException:
            self._release(member_id, owner, undo_attempt=portal)
            logger.warning("refresh not attempted: no data key", extra={"member_id": member_id, "path": path})
            raise
        lease_left = lease_until - self._clock()
        if lease_left < self.policy.token_call_seconds:
            self._release(member_id, owner, undo_attempt=portal)
            _record(
                RefreshOutcome.TRANSIENT_FAILURE,
                member_id,
                version,
                path=path,
                error="LEASE_TOO_SHORT",
                request_sent=False,
            )
            raise RefreshUnavailable(f"too little lease left to refresh portal {member_id}")
        try:
            # The token call must end inside the lease, with room left to seal and commit its answer.
            deadline = time.monotonic() + lease_left - _COMMIT_RESERVE_SECONDS
            new = self.refresher.refresh(
                stored.refresh_token, server_hint=portal.server_endpoint, deadline=deadline
            )
        except (InvalidGrant, PaymentRequired, NotInstalled) as exc:
            return self._after_dead_grant(portal, owner, exc, path=path)
        except Bitrix24Error as exc:
            if exc.retryable:
                self._after_transient(portal, owner, exc, path=path)
            self._release(member_id, owner)
            _record(RefreshOutcome.CLIENT_REJECTED, member_id, version, path=path, error=exc.code)
            raise RefreshRejected(
                f"token endpoint rejected the app for portal {member_id} ({exc.code})"
            ) from None
        except SecretUnavailable as exc:
            # No client secret (unreadable, or not put yet), no token request: the attempt never happened.
            self._release(member_id, owner, undo_attempt=portal)
            _record(
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
            self._release(member_id, owner)
            raise
        if not new.member_id:
            new = replace(new, member_id=member_id)
        elif new.member_id != member_id:
            # Storing it would bind another tenant's pair to this row; nothing sane can be done with it.
            self._flag(member_id, version)
            _record(RefreshOutcome.NEEDS_REAUTH, member_id, version, path=path, error="member_mismatch")
            raise ReauthRequired(member_id, HEALTH_NEEDS_REAUTH)
        return self._commit(portal, new, material, path=path, remaining_ms=remaining_ms)

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
        change = self._judge_endpoints(portal, new.client_endpoint, new.server_endpoint)
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
            stored = _as_stored(new, committed)
            self.store.cipher.remember(member_id, committed.version, stored)
            self._report_endpoints(member_id, change, path=path)
            _record(RefreshOutcome.REFRESHED, member_id, committed.version, path=path)
            return RefreshOutcome.REFRESHED, stored
        # The version moved while we refreshed (a new grant, or a commit after our lease expired):
        # the stored chain wins and ours is abandoned.
        try:
            return self._adopt_or_raise(portal, path=path, reason="commit_conflict")
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
            self._flag(member_id, version)
            count(_METRIC[RefreshOutcome.NEEDS_REAUTH])
            _record(RefreshOutcome.RESCUE_FAILED, member_id, version, path=path, commit_error=error)
            raise TokenRescueFailed(f"refreshed pair of portal {member_id} could not be kept") from None
        # The lease is left in place: once it lapses, it marks the outcome as unknown (lease_unsettled), so
        # nobody spends the old (already spent) refresh token until the rescue lands and clears it, or
        # until the rescue window is over.
        _record(RefreshOutcome.RESCUED, member_id, version, path=path, commit_error=error)
        return RefreshOutcome.RESCUED, new

    def _after_transient(self, portal: Portal, owner: str, exc: Bitrix24Error, *, path: str) -> NoReturn:
        """Release the lease after a retryable token-endpoint failure; see refresh_if_due for the rules."""
        member_id, version = portal.member_id, portal.version
        if isinstance(exc, TransientError) and not exc.request_sent:
            # The refresh token is provably unspent: the attempt does not count, a retry may come soon.
            self._release(member_id, owner, undo_attempt=portal)
            _record(
                RefreshOutcome.TRANSIENT_FAILURE,
                member_id,
                version,
                path=path,
                error=exc.code,
                request_sent=False,
            )
            raise RefreshUnavailable(f"token endpoint unreachable for portal {member_id}") from None
        self._release(member_id, owner)
        _record(
            RefreshOutcome.TRANSIENT_FAILURE, member_id, version, path=path, error=exc.code, request_sent=True
        )
        if path == _SCHEDULED:
            # The attempt (and the due time moved out by take_lease) stands: see refresh_if_due.
            raise RefreshDeferred(
                f"refresh of portal {member_id} deferred by {self.policy.min_refresh_interval_hours} h"
            ) from None
        raise RefreshUnavailable(f"token endpoint unavailable for portal {member_id}") from None

    def _after_dead_grant(
        self, portal: Portal, owner: str, exc: Bitrix24Error, *, path: str
    ) -> tuple[RefreshOutcome, TokenSet]:
        member_id = portal.member_id
        try:
            return self._adopt_or_raise(portal, path=path, reason=exc.code)
        except _NothingToAdopt:
            pass
        if self.store.mark_needs_reauth(member_id, portal.version):
            _record(RefreshOutcome.NEEDS_REAUTH, member_id, portal.version, path=path, error=exc.code)
            raise ReauthRequired(member_id, HEALTH_NEEDS_REAUTH, reason=exc.code) from None
        self._release(member_id, owner)
        # Flagging lost a race: whatever moved the record decides (adopt, or it is inactive now).
        try:
            return self._adopt_or_raise(portal, path=path, reason=exc.code)
        except _NothingToAdopt:
            current = self.store.get(member_id, consistent=True)
            _record(RefreshOutcome.NEEDS_REAUTH, member_id, portal.version, path=path, error=exc.code)
            raise ReauthRequired(member_id, current.health if current else "missing") from None

    def _adopt_or_raise(self, portal: Portal, *, path: str, reason: str) -> tuple[RefreshOutcome, TokenSet]:
        """Use a newer stored pair if one landed; ReauthRequired if the portal became inactive."""
        current = self.store.get(portal.member_id, consistent=True)
        if current is None:
            raise PortalNotFound(f"no portal {portal.member_id}")
        if current.version == portal.version:
            raise _NothingToAdopt
        if not current.is_active:
            raise ReauthRequired(portal.member_id, current.health)
        tokens = self.store.tokens(current)
        _record(RefreshOutcome.ADOPTED, portal.member_id, current.version, path=path, reason=reason)
        return RefreshOutcome.ADOPTED, tokens

    # --- endpoints of a refresh answer -------------------------------------------------------------

    def _judge_endpoints(self, portal: Portal, client_endpoint: str, server_endpoint: str) -> EndpointChange:
        """What of the answer's endpoints may be stored for `portal` (see vault.endpoints)."""
        change = self.endpoints.judge(portal.domain, client_endpoint, server_endpoint)
        if not change.moved or change.domain is None:
            return change
        try:
            holder = self.store.get_by_domain(change.domain)
        except VaultUnavailable:
            # The tokens matter more than the move: keep the old address; a REST call meeting the 302
            # (or the next refresh) moves the portal later.
            return change.refuse_move("lookup_failed")
        if holder is not None and holder.member_id != portal.member_id and holder.is_active:
            # A portal must not take over another tenant's domain lookups (as for a followed 302).
            return change.refuse_move("domain_taken")
        return change

    @staticmethod
    def _report_endpoints(member_id: str, change: EndpointChange, *, path: str) -> None:
        """Log and count what a committed refresh did to the portal's address (never a token)."""
        if change.moved:
            logger.info(
                "portal renamed",
                extra={
                    "member_id": member_id,
                    "domain": change.domain,
                    "previous_domain": change.moved_from,
                    "path": path,
                },
            )
            count("PortalMoved")
        if change.refused is not None:
            logger.warning(
                "portal rename refused",
                extra={
                    "member_id": member_id,
                    "reason": change.refused,
                    "refused_domain": change.refused_host,
                    "path": path,
                },
            )
            count("PortalMoveRefused")
        if change.server_refused:
            logger.warning(
                "OAuth server endpoint refused: not in OAUTH_SERVERS",
                extra={"member_id": member_id, "path": path},
            )
            count("ServerEndpointRefused")

    # --- helpers -----------------------------------------------------------------------------------

    def _budget_short(self, remaining_ms: RemainingMs | None) -> int | None:
        """The milliseconds left when they are too few for a refresh, else None."""
        if remaining_ms is None:
            return None
        left = remaining_ms()
        return left if left < self.policy.refresh_budget_ms else None

    def _require_budget(self, remaining_ms: RemainingMs | None, portal: Portal, path: str) -> None:
        left = self._budget_short(remaining_ms)
        if left is not None:
            _record(RefreshOutcome.NOT_ENOUGH_TIME, portal.member_id, portal.version, path=path, left_ms=left)
            raise NotEnoughTime(f"{left} ms left, a refresh needs {self.policy.refresh_budget_ms} ms")

    def _require_settled(self, portal: Portal, now: float, *, path: str) -> None:
        """RefreshUnsettled while a lapsed, never-released lease may still see its pair rescued."""
        window = self.policy.rescue_window_seconds
        if not portal.lease_unsettled(now, window):
            return
        retry_after = max(1, math.ceil((portal.lease_expires_at or 0) + window - now))
        _record(
            RefreshOutcome.UNSETTLED, portal.member_id, portal.version, path=path, retry_after=retry_after
        )
        raise RefreshUnsettled(portal.member_id, retry_after)

    def _require_quiet(self, portal: Portal, now: float) -> None:
        """RefreshThrottled when the portal's last refresh attempt is within the lazy interval."""
        last = portal.last_refresh_attempt_at
        if last is None:
            return
        left = last + self.policy.lazy_min_interval_seconds - now
        if left > 0:
            retry_after = max(1, math.ceil(left))
            _record(
                RefreshOutcome.THROTTLED,
                portal.member_id,
                portal.version,
                path="lazy",
                retry_after=retry_after,
            )
            raise RefreshThrottled(portal.member_id, retry_after)

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

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.policy.poll_max_seconds, self.policy.poll_initial_seconds * (2.0**attempt))
        return ceiling * (0.5 + self._jitter() / 2)

    def _release(self, member_id: str, owner: str, *, undo_attempt: Portal | None = None) -> None:
        try:
            self.store.release_lease(member_id, owner, undo_attempt_of=undo_attempt)
        except VaultUnavailable:
            logger.warning("refresh lease not released; it will expire", extra={"member_id": member_id})

    def _flag(self, member_id: str, version: int) -> None:
        try:
            self.store.mark_needs_reauth(member_id, version)
        except VaultUnavailable:
            logger.error("portal could not be flagged needs_reauth", extra={"member_id": member_id})


def _judged(meta: TokenMetadata, change: EndpointChange) -> TokenMetadata:
    """`meta` with only the endpoints `change` allows; "" keeps the stored ones."""
    return replace(
        meta, client_endpoint=change.client_endpoint or "", server_endpoint=change.server_endpoint or ""
    )


def _as_stored(tokens: TokenSet, portal: Portal) -> TokenSet:
    """`tokens` with the endpoints the committed record holds (what a later read of it would give)."""
    return replace(
        tokens,
        client_endpoint=portal.client_endpoint or "",
        server_endpoint=portal.server_endpoint or "",
    )


class _NothingToAdopt(Exception):
    """The stored version is still the one the refresh started from."""
