"""The refresh coordinator: the one entry point to a portal's token refresh, and its lazy path.

Lazy refresh happens here: a REST call met expired_token (fresh_access_token) or invalid_token
(stored_if_newer) and the caller needs a pair that works. The other entry points are delegated: the
sweep's refresh_if_due to scheduled.ScheduledRefresh, TokenRescueFunction's apply_rescue to
rescue.apply_rescue. The race between containers is settled here: a container whose cached access
token another container's refresh revoked adopts the stored newer pair, waiting for a refresh still in
flight, and never refreshes again itself. docs/token-refresh.md tells the whole design.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from b24connector.token_refresh.lease_holder import LeaseHolder, TokenRefresher
from b24connector.token_refresh.outcomes import (
    LAZY,
    RELOAD,
    RefreshOutcome,
    RemainingMs,
    RescueOutcome,
    record,
)
from b24connector.token_refresh.policy import RefreshPolicy
from b24connector.token_refresh.rescue import RescueSink, apply_rescue
from b24connector.token_refresh.scheduled import ScheduledRefresh
from b24connector.tokens import TokenSet
from b24connector.vault.endpoints import EndpointGuard
from b24connector.vault.errors import (
    GrantNeedsReauth,
    NotEnoughTime,
    PortalNotStored,
    RefreshThrottled,
    RefreshTimeout,
    RefreshUnavailable,
    RefreshUnsettled,
)
from b24connector.vault.portal import Portal
from b24connector.vault.store import PortalStore


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
        self.policy = policy or RefreshPolicy()
        self._endpoints = endpoints
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._holder = LeaseHolder(
            store,
            refresher,
            rescue,
            endpoints=endpoints,
            policy=self.policy,
            clock=clock,
            sleep=sleep,
            jitter=jitter,
        )
        self._scheduled = ScheduledRefresh(self._holder, clock=clock)

    # --- the other entry points --------------------------------------------------------------------

    def refresh_if_due(
        self, member_id: str, expected_version: int, *, remaining_ms: RemainingMs | None = None
    ) -> RefreshOutcome:
        """Refresh a portal the sweep found due (scheduled.ScheduledRefresh.refresh_if_due)."""
        return self._scheduled.refresh_if_due(member_id, expected_version, remaining_ms=remaining_ms)

    def apply_rescue(self, body: str | bytes | Mapping[str, Any]) -> RescueOutcome:
        """Commit a rescued pair on its base version, or drop it as stale (rescue.apply_rescue)."""
        return apply_rescue(self.store, self._endpoints, body)

    # --- after invalid_token: adopt, never refresh -------------------------------------------------

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
        deadline = self._wait_deadline(remaining_ms)
        attempt = 0
        while True:
            portal = self.store.get(member_id, consistent=True)
            if portal is None or not portal.is_active:
                return None
            stored = self.store.tokens(portal)
            if stored.access_token != rejected_access_token:
                record(RefreshOutcome.ADOPTED, member_id, portal.version, path=RELOAD, reason="invalid_token")
                return stored
            now = self._clock()
            self._require_settled(portal, now, path=RELOAD)
            if not portal.lease_held(now) or now >= deadline:
                return None
            self._sleep(self._backoff(attempt))
            attempt += 1

    # --- after expired_token: refresh at most once overall -----------------------------------------

    def fresh_access_token(
        self, member_id: str, rejected_access_token: str, *, remaining_ms: RemainingMs | None = None
    ) -> TokenSet:
        """A pair whose access token is not `rejected_access_token`, refreshing at most once overall.

        At most one lazy refresh per portal per `lazy_min_interval_seconds` (a condition of the lease
        write, so across containers): a portal that rejects even the pair just obtained gets
        RefreshThrottled, not a refresh per read. A lease that lapsed without being released means the
        outcome of its refresh is unknown (its pair may be in the rescue queue): RefreshUnsettled until
        the rescue lands or `rescue_window_seconds` have passed, never a second spend of the refresh
        token. Raises PortalNotStored, GrantNeedsReauth, RefreshTimeout, RefreshThrottled, RefreshUnsettled,
        RefreshUnavailable, RefreshRejected, NotEnoughTime or TokenRescueFailed.
        """
        deadline = self._wait_deadline(remaining_ms)
        seen_holder = False
        attempt = 0
        while True:
            portal = self._active_portal(member_id)
            stored = self.store.tokens(portal)
            if stored.access_token != rejected_access_token:
                record(RefreshOutcome.ALREADY_FRESH, member_id, portal.version, path=LAZY)
                return stored
            now = self._clock()
            self._require_settled(portal, now, path=LAZY)
            if portal.lease_held(now):
                seen_holder = True
            elif seen_holder and portal.lease_owner is None:
                # The holder let go without a commit (its token call failed): one attempt per wave,
                # so a struggling OAuth server does not get one call per waiting caller.
                record(RefreshOutcome.TRANSIENT_FAILURE, member_id, portal.version, path=LAZY, waited=True)
                raise RefreshUnavailable(f"the refresh of portal {member_id} failed in another worker")
            else:
                refreshed = self._try_refresh(portal, stored, now, remaining_ms)
                if refreshed is not None:
                    return refreshed
                if self._clock() < deadline:
                    continue  # lost the race for the lease: the winner is visible on the next read
            if self._clock() >= deadline:
                record(RefreshOutcome.LEASE_TIMEOUT, member_id, portal.version, path=LAZY)
                raise RefreshTimeout(f"gave up waiting for the refresh of portal {member_id}")
            self._sleep(self._backoff(attempt))
            attempt += 1

    def _active_portal(self, member_id: str) -> Portal:
        portal = self.store.get(member_id, consistent=True)
        if portal is None:
            raise PortalNotStored(f"no portal {member_id}")
        if not portal.is_active:
            raise GrantNeedsReauth(member_id, portal.health)
        return portal

    def _try_refresh(
        self, portal: Portal, stored: TokenSet, now: float, remaining_ms: RemainingMs | None
    ) -> TokenSet | None:
        """Take the lease and refresh as its holder; None when another worker took it first."""
        self._require_quiet(portal, now)
        self._require_budget(remaining_ms, portal)
        owner = uuid.uuid4().hex
        lease_until = self._clock() + self.policy.lease_seconds  # no later than the stored expiry
        if not self.store.take_lease(
            portal.member_id,
            portal.version,
            owner,
            lease_seconds=self.policy.lease_seconds,
            min_interval_seconds=self.policy.lazy_min_interval_seconds,
            settle_seconds=self.policy.rescue_window_seconds,
        ):
            return None
        return self._holder.spend(portal, stored, owner, remaining_ms, lease_until=lease_until, path=LAZY)[1]

    # --- helpers -----------------------------------------------------------------------------------

    def _wait_deadline(self, remaining_ms: RemainingMs | None) -> float:
        """When a caller stops waiting: max_wait_seconds, less when the invocation ends sooner."""
        start = self._clock()
        deadline = start + self.policy.max_wait_seconds
        if remaining_ms is not None:
            deadline = min(deadline, start + (remaining_ms() - self.policy.wait_reserve_ms) / 1000)
        return deadline

    def _require_budget(self, remaining_ms: RemainingMs | None, portal: Portal) -> None:
        left = self.policy.budget_short(remaining_ms)
        if left is not None:
            record(RefreshOutcome.NOT_ENOUGH_TIME, portal.member_id, portal.version, path=LAZY, left_ms=left)
            raise NotEnoughTime(f"{left} ms left, a refresh needs {self.policy.refresh_budget_ms} ms")

    def _require_settled(self, portal: Portal, now: float, *, path: str) -> None:
        """RefreshUnsettled while a lapsed, never-released lease may still see its pair rescued."""
        window = self.policy.rescue_window_seconds
        if not portal.lease_unsettled(now, window):
            return
        retry_after = max(1, math.ceil((portal.lease_expires_at or 0) + window - now))
        record(RefreshOutcome.UNSETTLED, portal.member_id, portal.version, path=path, retry_after=retry_after)
        raise RefreshUnsettled(portal.member_id, retry_after)

    def _require_quiet(self, portal: Portal, now: float) -> None:
        """RefreshThrottled when the portal's last refresh attempt is within the lazy interval."""
        last = portal.last_refresh_attempt_at
        if last is None:
            return
        left = last + self.policy.lazy_min_interval_seconds - now
        if left > 0:
            retry_after = max(1, math.ceil(left))
            record(
                RefreshOutcome.THROTTLED, portal.member_id, portal.version, path=LAZY, retry_after=retry_after
            )
            raise RefreshThrottled(portal.member_id, retry_after)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.policy.poll_max_seconds, self.policy.poll_initial_seconds * (2.0**attempt))
        return ceiling * (0.5 + self._jitter() / 2)
