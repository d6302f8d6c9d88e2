"""RefreshCoordinator against the fact-sheet OAuth fake: lease, CAS, adoption, re-auth, rescue."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from b24connector.bitrix24.errors import (
    InvalidClient,
    InvalidGrant,
    NotInstalled,
    OAuthTransientError,
    PaymentRequired,
)
from b24connector.credentials import ClientSecretNotSet, SecretUnavailable
from b24connector.token_refresh.outcomes import RefreshOutcome, RescueOutcome
from b24connector.token_refresh.rescue import RescueMessage
from b24connector.tokens import TokenSet
from b24connector.vault.cipher import TokenCipher
from b24connector.vault.errors import (
    GrantNeedsReauth,
    NotEnoughTime,
    PortalNotStored,
    RefreshRejected,
    RefreshThrottled,
    RefreshTimeout,
    RefreshUnavailable,
    RefreshUnsettled,
    TokenDecryptError,
    TokenRescueFailed,
    VaultUnavailable,
)
from b24connector.vault.models import HEALTH_ACTIVE, HEALTH_NEEDS_REAUTH
from tests.support.vault_fakes import current_tokens
from tests.support.vault_unit import UnitVault

DAY = 86_400


def _metric(metrics: dict[str, Any], name: str) -> int:
    return len(metrics.get(name, {}).get("Value", []))


# --- lazy path --------------------------------------------------------------------------------------


def test_the_token_call_is_given_a_deadline_inside_the_lease(vault: UnitVault) -> None:
    # Given an installed portal whose access token expired
    _portal, grant = vault.install()
    vault.clock.advance(3601)
    coordinator = vault.coordinator()
    # When a lazy refresh runs under its lease
    before = time.monotonic()
    coordinator.fresh_access_token("member-a", grant.access_token)
    # Then the OAuth call had to end before the lease does, with room left to commit its answer
    (deadline,) = vault.oauth.deadlines
    assert deadline is not None
    assert before < deadline <= time.monotonic() + coordinator.policy.lease_seconds - 2.0


def test_expired_token_is_refreshed_once_and_committed(
    vault: UnitVault, metrics_capture: dict[str, Any]
) -> None:
    # Given an installed portal whose access token Bitrix24 now rejects
    portal, grant = vault.install()
    vault.clock.advance(3601)
    # When the lead fetch asks for a fresh pair
    fresh = vault.coordinator().fresh_access_token("member-a", grant.access_token)
    # Then one token call was made, the new pair works and is stored at version +1, lease cleared
    assert vault.oauth.token_requests == 1
    assert vault.oauth.access_valid(fresh.access_token)
    assert not vault.oauth.access_valid(grant.access_token)
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert stored.version == portal.version + 1
    assert stored.lease_owner is None
    assert vault.portals.tokens(stored).refresh_token == fresh.refresh_token
    assert _metric(metrics_capture, "TokenRefreshed") == 1


def test_caller_with_an_old_token_gets_the_stored_pair_without_a_token_call(vault: UnitVault) -> None:
    _, grant = vault.install()
    coordinator = vault.coordinator()
    first = coordinator.fresh_access_token("member-a", grant.access_token)
    again = coordinator.fresh_access_token("member-a", grant.access_token)
    assert again.access_token == first.access_token
    assert vault.oauth.token_requests == 1


def test_warm_read_after_commit_needs_no_kms_call(vault: UnitVault) -> None:
    _, grant = vault.install()
    coordinator = vault.coordinator()
    coordinator.fresh_access_token("member-a", grant.access_token)
    calls = vault.cipher.kms_calls
    for _ in range(5):
        current_tokens(vault.portals, "member-a")
    assert vault.cipher.kms_calls == calls


def test_stored_if_newer_adopts_another_containers_pair_without_a_token_call(
    vault: UnitVault, monkeypatch: pytest.MonkeyPatch, metrics_capture: dict[str, Any]
) -> None:
    # Given another container refreshed (revoking the access token this one still holds)
    _, grant = vault.install()
    other = vault.coordinator().fresh_access_token("member-a", grant.access_token)
    reads: list[bool] = []
    real_get = vault.portals.get

    def spy(member_id: str, *, consistent: bool = False) -> Any:
        reads.append(consistent)
        return real_get(member_id, consistent=consistent)

    monkeypatch.setattr(vault.portals, "get", spy)
    # When this container asks for a pair newer than the rejected token
    newer = vault.coordinator().stored_if_newer("member-a", grant.access_token)
    # Then it gets the stored pair from one strongly consistent read, and nothing refreshed again
    assert newer is not None
    assert newer.access_token == other.access_token
    assert reads == [True]
    assert vault.oauth.token_requests == 1
    assert _metric(metrics_capture, "TokenAdopted") == 1


def test_stored_if_newer_is_none_when_the_rejected_token_is_the_stored_one(vault: UnitVault) -> None:
    _, grant = vault.install()
    assert vault.coordinator().stored_if_newer("member-a", grant.access_token) is None
    assert vault.oauth.token_requests == 0
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert stored.lease_owner is None
    assert stored.last_refresh_attempt_at is None


def test_stored_if_newer_waits_for_the_commit_of_a_refresh_in_flight(vault: UnitVault) -> None:
    # Given another worker holds the lease: Bitrix24 already revoked our token, the commit is pending
    portal, grant = vault.install()
    assert vault.portals.take_lease("member-a", portal.version, "other-worker", lease_seconds=30)
    winner_pair = vault.oauth.refresh(grant.refresh_token)
    sleeps = 0

    def sleep_then_commit(seconds: float) -> None:
        nonlocal sleeps
        sleeps += 1
        vault.clock.sleep(seconds)
        if sleeps == 2:
            vault.portals.commit_refresh("member-a", portal.version, vault.cipher.seal(winner_pair))

    coordinator = vault.coordinator(sleep=sleep_then_commit)
    newer = coordinator.stored_if_newer("member-a", grant.access_token)
    assert newer is not None
    assert newer.access_token == winner_pair.access_token
    assert vault.oauth.token_requests == 1  # the other worker's only
    assert sleeps == 2


def test_stored_if_newer_gives_up_after_the_bounded_wait_without_refreshing(vault: UnitVault) -> None:
    portal, grant = vault.install()
    assert vault.portals.take_lease("member-a", portal.version, "slow-worker", lease_seconds=60)
    start = vault.clock()
    assert vault.coordinator(max_wait_seconds=2.0).stored_if_newer("member-a", grant.access_token) is None
    assert 2.0 <= vault.clock() - start < 3.0
    assert vault.oauth.token_requests == 0
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert stored.lease_owner == "slow-worker"


def test_stored_if_newer_is_none_for_missing_or_inactive_portals(vault: UnitVault) -> None:
    portal, _grant = vault.install()
    coordinator = vault.coordinator()
    assert coordinator.stored_if_newer("member-x", "some-token") is None
    assert vault.portals.mark_needs_reauth("member-a", portal.version)
    assert coordinator.stored_if_newer("member-a", "some-token") is None
    assert vault.oauth.token_requests == 0


def test_loser_of_the_lease_waits_and_uses_the_winners_pair(vault: UnitVault) -> None:
    # Given another worker holds the lease and commits while this caller waits
    portal, grant = vault.install()
    assert vault.portals.take_lease("member-a", portal.version, "other-worker", lease_seconds=30)
    winner_pair = vault.oauth.refresh(grant.refresh_token)
    sleeps = 0

    def sleep_then_commit(seconds: float) -> None:
        nonlocal sleeps
        sleeps += 1
        vault.clock.sleep(seconds)
        if sleeps == 3:
            vault.portals.commit_refresh("member-a", portal.version, vault.cipher.seal(winner_pair))

    coordinator = vault.coordinator(sleep=sleep_then_commit)
    # When the caller asks for a fresh pair
    fresh = coordinator.fresh_access_token("member-a", grant.access_token)
    # Then it made no token call of its own and got the winner's pair
    assert vault.oauth.token_requests == 1
    assert fresh.access_token == winner_pair.access_token
    assert sleeps == 3


def test_loser_gives_up_after_the_bounded_wait(vault: UnitVault, metrics_capture: dict[str, Any]) -> None:
    portal, grant = vault.install()
    vault.portals.take_lease("member-a", portal.version, "slow-worker", lease_seconds=60)
    with pytest.raises(RefreshTimeout):
        vault.coordinator(max_wait_seconds=5).fresh_access_token("member-a", grant.access_token)
    assert vault.oauth.token_requests == 0
    assert 5 <= sum(vault.clock.sleeps) < 6
    assert _metric(metrics_capture, "TokenRefreshLeaseTimeout") == 1


def test_waiting_stops_early_when_the_invocation_runs_out_of_time(vault: UnitVault) -> None:
    portal, grant = vault.install()
    vault.portals.take_lease("member-a", portal.version, "slow-worker", lease_seconds=60)
    started = vault.clock()

    def remaining_ms() -> int:
        return int(6_000 - (vault.clock() - started) * 1000)

    with pytest.raises(RefreshTimeout):
        vault.coordinator(max_wait_seconds=20).fresh_access_token(
            "member-a", grant.access_token, remaining_ms=remaining_ms
        )
    assert sum(vault.clock.sleeps) < 3.6  # 6 s left minus the 3 s reserve for the caller's own call


def test_a_lapsed_lease_of_a_dead_worker_is_taken_over_only_after_the_rescue_window(
    vault: UnitVault, metrics_capture: dict[str, Any]
) -> None:
    # Given a worker that took the lease and vanished (did it spend the token? nobody can know)
    portal, grant = vault.install()
    vault.portals.take_lease("member-a", portal.version, "dead-worker", lease_seconds=1)
    coordinator = vault.coordinator(lazy_min_interval_seconds=0, rescue_window_seconds=900)
    # When its lease has lapsed but a rescued pair could still arrive
    vault.clock.advance(2)
    with pytest.raises(RefreshUnsettled) as unsettled:
        coordinator.fresh_access_token("member-a", grant.access_token)
    # Then nobody refreshes, and the caller learns when to come back
    assert unsettled.value.retry_after == 899
    assert vault.oauth.token_requests == 0
    assert _metric(metrics_capture, "TokenRefreshUnsettled") == 1
    assert vault.coordinator().refresh_if_due("member-a", portal.version) is RefreshOutcome.SKIPPED_NOT_DUE
    # and once the window is over, the next caller takes the lease over and refreshes once
    vault.clock.advance(900)
    fresh = coordinator.fresh_access_token("member-a", grant.access_token)
    assert vault.oauth.access_valid(fresh.access_token)
    assert vault.oauth.token_requests == 1


def test_holder_that_released_without_commit_stops_the_waiters(vault: UnitVault) -> None:
    # Given a holder whose token call failed transiently and released the lease while we waited
    portal, grant = vault.install()
    vault.portals.take_lease("member-a", portal.version, "unlucky", lease_seconds=30)

    def sleep_then_release(seconds: float) -> None:
        vault.clock.sleep(seconds)
        vault.portals.release_lease("member-a", "unlucky")

    coordinator = vault.coordinator(sleep=sleep_then_release)
    # Then the waiter does not hammer the token endpoint itself
    with pytest.raises(RefreshUnavailable):
        coordinator.fresh_access_token("member-a", grant.access_token)
    assert vault.oauth.token_requests == 0


def test_no_refresh_without_enough_invocation_time(vault: UnitVault, metrics_capture: dict[str, Any]) -> None:
    _, grant = vault.install()
    with pytest.raises(NotEnoughTime):
        vault.coordinator(refresh_budget_ms=15_000).fresh_access_token(
            "member-a", grant.access_token, remaining_ms=lambda: 9_000
        )
    assert vault.oauth.token_requests == 0
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert stored.lease_owner is None
    assert _metric(metrics_capture, "TokenRefreshNoTime") == 1


def test_unknown_and_inactive_portals(vault: UnitVault) -> None:
    with pytest.raises(PortalNotStored):
        vault.coordinator().fresh_access_token("nobody", "x")
    portal, grant = vault.install()
    vault.portals.mark_needs_reauth("member-a", portal.version)
    with pytest.raises(GrantNeedsReauth):
        vault.coordinator().fresh_access_token("member-a", grant.access_token)


def test_a_portal_rejecting_every_pair_gets_one_lazy_refresh_per_interval(
    vault: UnitVault, metrics_capture: dict[str, Any]
) -> None:
    # Given a portal that answers expired_token to every access token, even one just issued
    vault.install()
    coordinator = vault.coordinator(lazy_min_interval_seconds=300)
    outcomes: list[str | int] = []
    # When ten reads in a row each ask for a pair newer than the one the portal just rejected
    for _ in range(10):
        rejected = current_tokens(vault.portals, "member-a").access_token
        try:
            coordinator.fresh_access_token("member-a", rejected)
            outcomes.append("refreshed")
        except RefreshThrottled as exc:
            outcomes.append(exc.retry_after)
        vault.clock.advance(5)
    # Then Bitrix24 saw one refresh, not ten; the others got a typed, retryable error
    assert vault.oauth.token_requests == 1
    assert outcomes == ["refreshed", *range(295, 250, -5)]  # retry_after counts down to the interval's end
    assert RefreshThrottled.retryable
    assert _metric(metrics_capture, "TokenRefreshThrottled") == 9
    # and once the interval has passed, the next read may refresh again
    vault.clock.advance(300)
    coordinator.fresh_access_token("member-a", current_tokens(vault.portals, "member-a").access_token)
    assert vault.oauth.token_requests == 2


def test_the_lazy_throttle_holds_for_a_container_with_a_stale_read(vault: UnitVault) -> None:
    # Given container A refreshed a moment ago, and container B still holds the record from before
    vault.install()
    before = vault.portals.get("member-a", consistent=True)
    assert before is not None
    vault.coordinator().fresh_access_token("member-a", vault.portals.tokens(before).access_token)
    after = vault.portals.get("member-a", consistent=True)
    assert after is not None
    vault.clock.advance(10)
    # When B tries to take the lease on the version it now reads
    taken = vault.portals.take_lease(
        "member-a", after.version, "owner-b", lease_seconds=30, min_interval_seconds=300
    )
    # Then the conditional write itself refuses (the check does not rely on B's read)
    assert taken is False
    vault.clock.advance(300)
    assert vault.portals.take_lease(
        "member-a", after.version, "owner-b", lease_seconds=30, min_interval_seconds=300
    )


# --- errors from the token endpoint --------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        InvalidGrant("invalid_grant", "expired", http_status=400),
        PaymentRequired("PAYMENT_REQUIRED", "Payment required"),
        NotInstalled("NOT_INSTALLED", "Application not installed", http_status=401),
    ],
)
def test_dead_grant_marks_needs_reauth(
    vault: UnitVault, metrics_capture: dict[str, Any], error: Exception
) -> None:
    portal, grant = vault.install()
    vault.oauth.fail_next.append(error)
    with pytest.raises(GrantNeedsReauth):
        vault.coordinator().fresh_access_token("member-a", grant.access_token)
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert stored.health == HEALTH_NEEDS_REAUTH
    assert stored.version == portal.version
    assert stored.lease_owner is None
    assert vault.oauth.token_requests == 1  # no retry loop
    assert _metric(metrics_capture, "PortalNeedsReauth") == 1


def test_invalid_grant_after_another_worker_committed_adopts_its_pair(
    vault: UnitVault, metrics_capture: dict[str, Any]
) -> None:
    # Given our lease expired while our token call hung, and another worker refreshed and committed
    portal, grant = vault.install()
    other_pair = vault.oauth.refresh(grant.refresh_token)  # the other worker spent the token first
    real_refresh = vault.oauth.refresh

    def refresh_while_other_commits(refresh_token: str, *, server_hint: str | None = None, **_: Any) -> Any:
        vault.portals.commit_refresh("member-a", portal.version, vault.cipher.seal(other_pair))
        return real_refresh(refresh_token, server_hint=server_hint)

    vault.oauth.refresh = refresh_while_other_commits  # type: ignore[method-assign]
    # When our call comes back with invalid_grant
    fresh = vault.coordinator().fresh_access_token("member-a", grant.access_token)
    # Then we use the other worker's pair and the portal stays active
    assert fresh.access_token == other_pair.access_token
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert stored.health == HEALTH_ACTIVE
    assert _metric(metrics_capture, "TokenAdopted") == 1
    assert _metric(metrics_capture, "PortalNeedsReauth") == 0


def test_transient_oauth_error_releases_the_lease_and_leaves_the_portal(
    vault: UnitVault, metrics_capture: dict[str, Any]
) -> None:
    portal, grant = vault.install()
    vault.oauth.fail_next.append(OAuthTransientError("TIMEOUT", "no answer"))
    with pytest.raises(RefreshUnavailable):
        vault.coordinator().fresh_access_token("member-a", grant.access_token)
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert (stored.version, stored.health, stored.lease_owner) == (portal.version, HEALTH_ACTIVE, None)
    assert vault.portals.tokens(stored).refresh_token == grant.refresh_token
    assert _metric(metrics_capture, "TokenRefreshTransientFailure") == 1
    # and the request may have reached Bitrix24: it counts for the lazy throttle, then refreshes normally
    with pytest.raises(RefreshThrottled):
        vault.coordinator().fresh_access_token("member-a", grant.access_token)
    vault.clock.advance(300)
    assert vault.oauth.access_valid(
        vault.coordinator().fresh_access_token("member-a", grant.access_token).access_token
    )


def test_invalid_client_is_an_operator_problem_not_the_portals(vault: UnitVault) -> None:
    _portal, grant = vault.install()
    vault.oauth.fail_next.append(InvalidClient("invalid_client", "bad secret", http_status=401))
    with pytest.raises(RefreshRejected):
        vault.coordinator().fresh_access_token("member-a", grant.access_token)
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert (stored.health, stored.lease_owner) == (HEALTH_ACTIVE, None)


def test_pair_for_another_member_is_never_stored(vault: UnitVault) -> None:
    _portal, grant = vault.install()
    foreign = vault.oauth.grant("member-z")
    vault.oauth.refresh = lambda refresh_token, *, server_hint=None, **_: foreign  # type: ignore[method-assign]
    with pytest.raises(GrantNeedsReauth):
        vault.coordinator().fresh_access_token("member-a", grant.access_token)
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert stored.health == HEALTH_NEEDS_REAUTH
    assert vault.portals.tokens(stored).access_token == grant.access_token


# --- commit failures and the rescue path ------------------------------------------------------------


def _failing_commits(vault: UnitVault, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    attempts: list[int] = []

    def fail(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        raise VaultUnavailable("DynamoDB UpdateItem failed (ProvisionedThroughputExceededException)")

    monkeypatch.setattr(vault.portals, "commit_refresh", fail)
    return attempts


def test_commit_that_cannot_land_goes_to_the_rescue_queue_and_is_applied_later(
    vault: UnitVault, monkeypatch: pytest.MonkeyPatch, metrics_capture: dict[str, Any]
) -> None:
    # Given DynamoDB refuses every commit right after Bitrix24 answered
    portal, grant = vault.install()
    attempts = _failing_commits(vault, monkeypatch)
    fresh = vault.coordinator(commit_attempts=4).fresh_access_token("member-a", grant.access_token)
    # Then the commit was retried with backoff, and the ciphertext (not the tokens) was queued
    assert len(attempts) == 4
    assert len(vault.clock.sleeps) == 3
    (message,) = vault.rescue.messages
    body = message.to_json()
    assert fresh.access_token not in body
    assert fresh.refresh_token not in body
    assert json.loads(body)["base_version"] == portal.version
    assert _metric(metrics_capture, "TokenRescueQueued") == 1
    # When the rescue function applies it
    monkeypatch.undo()
    outcome = vault.coordinator().apply_rescue(body)
    # Then the portal holds the rescued pair at version +1, and it works
    assert outcome is RescueOutcome.APPLIED
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert stored.version == portal.version + 1
    assert vault.portals.tokens(stored).access_token == fresh.access_token
    assert vault.oauth.access_valid(fresh.access_token)
    assert _metric(metrics_capture, "TokenRescueApplied") == 1


def test_a_rescue_pending_past_the_lease_is_not_spent_again_and_lands(
    vault: UnitVault, monkeypatch: pytest.MonkeyPatch, metrics_capture: dict[str, Any]
) -> None:
    # Given a rescued pair whose rescue is late: the holder's lease and the lazy interval are over
    _portal, grant = vault.install()
    _failing_commits(vault, monkeypatch)
    fresh = vault.coordinator().fresh_access_token("member-a", grant.access_token)
    monkeypatch.undo()
    vault.clock.advance(301)
    # When other callers meet the spent pair
    with pytest.raises(RefreshUnsettled):
        vault.coordinator().fresh_access_token("member-a", grant.access_token)
    with pytest.raises(RefreshUnsettled):
        vault.coordinator().stored_if_newer("member-a", grant.access_token)
    # Then the spent refresh token is not sent again, and nothing is flagged
    assert vault.oauth.token_requests == 1
    assert _metric(metrics_capture, "PortalNeedsReauth") == 0
    # When the rescue lands, the portal reads its rescued pair
    assert vault.coordinator().apply_rescue(vault.rescue.messages[0].to_json()) is RescueOutcome.APPLIED
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert (stored.health, stored.lease_owner) == (HEALTH_ACTIVE, None)
    assert vault.portals.tokens(stored).access_token == fresh.access_token
    assert vault.coordinator().fresh_access_token("member-a", grant.access_token) == vault.portals.tokens(
        stored
    )
    assert vault.oauth.token_requests == 1


def test_rescue_repairs_a_portal_flagged_meanwhile(vault: UnitVault, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a rescued pair, and a second worker that got invalid_grant with the spent token after the
    # rescue window (the rescue was later still: an operator redrove it from the DLQ)
    _portal, grant = vault.install()
    _failing_commits(vault, monkeypatch)
    fresh = vault.coordinator().fresh_access_token("member-a", grant.access_token)
    monkeypatch.undo()
    vault.clock.advance(30 + 900 + 1)  # lease, then the whole rescue window
    with pytest.raises(GrantNeedsReauth):
        vault.coordinator().fresh_access_token("member-a", grant.access_token)
    # When the rescue lands
    assert vault.coordinator().apply_rescue(vault.rescue.messages[0].to_json()) is RescueOutcome.APPLIED
    # Then the portal is active again with the live pair
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert stored.health == HEALTH_ACTIVE
    assert vault.portals.tokens(stored).access_token == fresh.access_token


def test_stale_rescue_is_dropped_with_a_metric(
    vault: UnitVault, monkeypatch: pytest.MonkeyPatch, metrics_capture: dict[str, Any]
) -> None:
    _, grant = vault.install()
    _failing_commits(vault, monkeypatch)
    vault.coordinator().fresh_access_token("member-a", grant.access_token)
    monkeypatch.undo()
    reinstall = vault.oauth.grant("member-a", "a.bitrix24.com")
    vault.portals.save_grant(reinstall, domain="a.bitrix24.com", role="admin")  # a newer chain: version moved
    assert vault.coordinator().apply_rescue(vault.rescue.messages[0].to_json()) is RescueOutcome.STALE
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert vault.portals.tokens(stored).access_token == reinstall.access_token
    assert _metric(metrics_capture, "TokenRescueStale") == 1


def test_rescue_of_another_tenant_does_not_decrypt(vault: UnitVault, monkeypatch: pytest.MonkeyPatch) -> None:
    vault.install("member-a")
    _portal_b, grant_b = vault.install("member-b", "b.bitrix24.com")
    _failing_commits(vault, monkeypatch)
    vault.coordinator().fresh_access_token("member-b", grant_b.access_token)
    monkeypatch.undo()
    forged = json.loads(vault.rescue.messages[0].to_json())
    forged["member_id"] = "member-a"
    forged["base_version"] = 1
    with pytest.raises(TokenDecryptError):
        vault.coordinator().apply_rescue(forged)
    with pytest.raises(ValueError, match="not a token rescue message"):
        vault.coordinator().apply_rescue({"kind": "something else"})


def test_rescue_queue_down_flags_the_portal_and_raises(
    vault: UnitVault,
    monkeypatch: pytest.MonkeyPatch,
    metrics_capture: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _portal, grant = vault.install()
    _failing_commits(vault, monkeypatch)
    vault.rescue.fail = True
    with caplog.at_level(logging.INFO), pytest.raises(TokenRescueFailed):
        vault.coordinator().fresh_access_token("member-a", grant.access_token)
    monkeypatch.undo()
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert stored.health == HEALTH_NEEDS_REAUTH
    assert _metric(metrics_capture, "PortalNeedsReauth") == 1
    assert _metric(metrics_capture, "TokenRescueFailed") == 1
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def _kms_outage(monkeypatch: pytest.MonkeyPatch, kms: Any) -> None:
    """Every KMS operation the vault uses fails as in an outage (botocore's retries exhausted)."""

    def down(*args: Any, **kwargs: Any) -> Any:
        raise ClientError({"Error": {"Code": "KMSInternalException", "Message": "down"}}, "KMS")

    for operation in ("encrypt", "decrypt", "generate_data_key"):
        monkeypatch.setattr(kms, operation, down)


def test_kms_down_after_bitrix24_answered_loses_nothing(
    vault: UnitVault, monkeypatch: pytest.MonkeyPatch, metrics_capture: dict[str, Any]
) -> None:
    # Given KMS fails from the moment the token endpoint answered (an outage, or throttling)
    portal, grant = vault.install()
    oauth = vault.oauth

    class SpendThenKmsDown:
        def refresh(
            self, refresh_token: str, *, server_hint: str | None = None, deadline: float | None = None
        ) -> TokenSet:
            answer = oauth.refresh(refresh_token, server_hint=server_hint)
            _kms_outage(monkeypatch, vault.cipher.kms)
            return answer

    coordinator = vault.coordinator(refresher=SpendThenKmsDown())
    # When a lazy refresh spends the refresh token
    fresh = coordinator.fresh_access_token("member-a", grant.access_token)
    monkeypatch.undo()
    # Then the new pair was sealed with the data key obtained before the spend, and committed
    assert oauth.token_requests == 1
    assert oauth.access_valid(fresh.access_token)
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert (stored.version, stored.health) == (portal.version + 1, HEALTH_ACTIVE)
    sealed = stored.sealed()
    assert sealed is not None
    cold = TokenCipher(vault.stack.token_key_id, kms_client=vault.stack.client("kms"))
    assert cold.open(sealed).refresh_token == fresh.refresh_token  # another container opens it
    assert vault.rescue.messages == []
    assert _metric(metrics_capture, "PortalNeedsReauth") == 0
    assert _metric(metrics_capture, "TokenRescueFailed") == 0


def test_no_data_key_no_token_call(vault: UnitVault, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given KMS is down before anything was spent
    portal, grant = vault.install()
    _kms_outage(monkeypatch, vault.cipher.kms)
    # When a lazy refresh is asked for
    with pytest.raises(VaultUnavailable, match="GenerateDataKey"):
        vault.coordinator().fresh_access_token("member-a", grant.access_token)
    # Then the refresh token was not sent, and the attempt left no trace (no throttle, no lease)
    assert vault.oauth.token_requests == 0
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert (stored.version, stored.lease_owner, stored.last_refresh_attempt_at) == (
        portal.version,
        None,
        None,
    )


def test_a_data_key_that_ate_the_lease_sends_nothing(
    vault: UnitVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a KMS answer so slow that too little of the lease is left for a token call
    _portal, grant = vault.install()
    real = vault.cipher.data_key

    def slow(member_id: str) -> Any:
        vault.clock.advance(25)
        return real(member_id)

    monkeypatch.setattr(vault.cipher, "data_key", slow)
    with pytest.raises(RefreshUnavailable, match="lease"):
        vault.coordinator(lease_seconds=30, token_call_seconds=12).fresh_access_token(
            "member-a", grant.access_token
        )
    assert vault.oauth.token_requests == 0
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert (stored.lease_owner, stored.last_refresh_attempt_at) == (None, None)


def test_rescue_message_round_trip_and_validation(vault: UnitVault) -> None:
    grant = vault.oauth.grant("member-a")
    sealed = vault.cipher.seal(grant)
    message = RescueMessage(base_version=7, sealed=sealed, created_at=123)
    parsed = RescueMessage.parse(message.to_json())
    assert parsed == message
    for broken, reason in (
        ({**json.loads(message.to_json()), "base_version": "7"}, "base_version"),
        ({**json.loads(message.to_json()), "ciphertext_b64": "***"}, "malformed ciphertext"),
        ({**json.loads(message.to_json()), "format": 2}, "unsupported"),
        ({**json.loads(message.to_json()), "member_id": ""}, "member_id"),
    ):
        with pytest.raises(ValueError, match=reason):
            RescueMessage.parse(broken)


# --- scheduled path ---------------------------------------------------------------------------------


def test_scheduled_refresh_of_a_due_portal(vault: UnitVault, metrics_capture: dict[str, Any]) -> None:
    portal, _grant = vault.install()
    vault.clock.advance(22 * DAY)
    outcome = vault.coordinator().refresh_if_due("member-a", portal.version)
    assert outcome is RefreshOutcome.REFRESHED
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert stored.version == portal.version + 1
    assert stored.refresh_due_at == int(vault.clock()) + 21 * DAY
    assert vault.oauth.token_requests == 1
    assert list(vault.portals.due_portals(vault.clock(), limit=10)) == []


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("not_due", RefreshOutcome.SKIPPED_NOT_DUE),
        ("version_moved", RefreshOutcome.SKIPPED_VERSION_MOVED),
        ("inactive", RefreshOutcome.SKIPPED_INACTIVE),
        ("attempted_recently", RefreshOutcome.SKIPPED_RECENT),
        ("busy", RefreshOutcome.BUSY),
        ("missing", RefreshOutcome.MISSING),
    ],
)
def test_scheduled_refresh_skips(vault: UnitVault, setup: str, expected: RefreshOutcome) -> None:
    portal, _ = vault.install()
    member, version = "member-a", portal.version
    if setup != "not_due":
        vault.clock.advance(22 * DAY)
    if setup == "version_moved":
        version += 1
    elif setup == "inactive":
        vault.portals.mark_needs_reauth(member, version)
    elif setup == "attempted_recently":
        vault.portals.take_lease(member, version, "earlier", lease_seconds=1)
        vault.clock.advance(3600)
    elif setup == "busy":
        vault.portals.take_lease(member, version, "other", lease_seconds=30)
    elif setup == "missing":
        member = "nobody"
    assert vault.coordinator().refresh_if_due(member, version) is expected
    assert vault.oauth.token_requests == 0


def test_scheduled_refresh_never_twice_within_the_minimum_interval(vault: UnitVault) -> None:
    # Given a due portal whose refresh failed transiently
    portal, _ = vault.install()
    vault.clock.advance(22 * DAY)
    vault.oauth.fail_next.append(OAuthTransientError("HTTP_503", "busy", http_status=503))
    coordinator = vault.coordinator()
    assert coordinator.refresh_if_due("member-a", portal.version) is RefreshOutcome.DEFERRED
    # Then it leaves the due window, and a duplicate message within 24 h is skipped
    assert list(vault.portals.due_portals(vault.clock(), limit=10)) == []
    vault.clock.advance(23 * 3600)
    assert coordinator.refresh_if_due("member-a", portal.version) is not RefreshOutcome.REFRESHED
    # and after 24 h it is due again and refreshed
    vault.clock.advance(3600 + 1)
    assert list(vault.portals.due_portals(vault.clock(), limit=10)) == [("member-a", portal.version)]
    assert coordinator.refresh_if_due("member-a", portal.version) is RefreshOutcome.REFRESHED
    assert vault.oauth.token_requests == 2


def _raw_portal(vault: UnitVault) -> dict[str, Any]:
    (item,) = vault.stack.raw_items(vault.stack.portals_table)
    return item


@pytest.mark.parametrize(
    "failure",
    [
        OAuthTransientError("CONNECTION_ERROR", "refused", request_sent=False),
        OAuthTransientError("TIMEOUT", "connect timed out", request_sent=False),
        SecretUnavailable("secret b24/client-secret could not be read (GetParameterError)"),
        ClientSecretNotSet("client secret not set: secret b24/client-secret still holds the deploy marker"),
    ],
    ids=["refused", "connect-timeout", "client-secret", "client-secret-not-set"],
)
def test_a_scheduled_refresh_that_never_reached_bitrix24_is_undone_and_retried_soon(
    vault: UnitVault, metrics_capture: dict[str, Any], failure: Exception
) -> None:
    # Given a due portal whose token request cannot leave this process
    portal, grant = vault.install()
    vault.clock.advance(22 * DAY)
    before = _raw_portal(vault)
    vault.oauth.fail_next.append(failure)
    coordinator = vault.coordinator()
    # When the worker refreshes it
    outcome = coordinator.refresh_if_due("member-a", portal.version)
    # Then the outcome is worth a redelivery, and the record is exactly as before (attempt undone)
    assert outcome is RefreshOutcome.TRANSIENT_FAILURE
    assert _raw_portal(vault) == before
    assert list(vault.portals.due_portals(vault.clock(), limit=10)) == [("member-a", portal.version)]
    assert _metric(metrics_capture, "TokenRefreshTransientFailure") == 1
    # And SQS's redelivery (a visibility timeout later) refreshes the unspent token
    vault.clock.advance(720)
    assert coordinator.refresh_if_due("member-a", portal.version) is RefreshOutcome.REFRESHED
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert stored.version == portal.version + 1
    assert vault.portals.tokens(stored).refresh_token != grant.refresh_token


def test_a_scheduled_refresh_that_may_have_reached_bitrix24_is_deferred_for_the_interval(
    vault: UnitVault, metrics_capture: dict[str, Any]
) -> None:
    # Given a due portal whose token request reached Bitrix24, which spent the token, but whose answer
    # was lost (a read timeout)
    portal, _ = vault.install()
    vault.clock.advance(22 * DAY)
    vault.oauth.fail_after_rotation.append(OAuthTransientError("TIMEOUT", "no answer"))
    coordinator = vault.coordinator()
    started = int(vault.clock())
    # When the worker refreshes it
    assert coordinator.refresh_if_due("member-a", portal.version) is RefreshOutcome.DEFERRED
    # Then the attempt stands: out of the due window for the whole interval, lease released
    stored = vault.portals.get("member-a", consistent=True)
    assert stored is not None
    assert (stored.version, stored.health, stored.lease_owner) == (portal.version, HEALTH_ACTIVE, None)
    assert stored.last_refresh_attempt_at == started
    assert stored.refresh_due_at == started + 24 * 3600
    assert _metric(metrics_capture, "TokenRefreshTransientFailure") == 1
    # And a redelivery within the interval makes no token call
    vault.clock.advance(720)
    assert coordinator.refresh_if_due("member-a", portal.version) is RefreshOutcome.SKIPPED_NOT_DUE
    assert vault.oauth.token_requests == 1
    # And the first sweep after the interval tries once more: the token was spent, so needs_reauth
    vault.clock.advance(24 * 3600)
    assert list(vault.portals.due_portals(vault.clock(), limit=10)) == [("member-a", portal.version)]
    assert coordinator.refresh_if_due("member-a", portal.version) is RefreshOutcome.NEEDS_REAUTH
    assert vault.oauth.token_requests == 2
    assert _metric(metrics_capture, "PortalNeedsReauth") == 1


def test_a_lazy_refresh_that_never_reached_bitrix24_does_not_hold_back_the_schedule(vault: UnitVault) -> None:
    # Given a portal due for its scheduled refresh, whose lazy refresh could not connect
    portal, grant = vault.install()
    vault.clock.advance(22 * DAY)
    before = _raw_portal(vault)
    vault.oauth.fail_next.append(OAuthTransientError("CONNECTION_ERROR", "refused", request_sent=False))
    with pytest.raises(RefreshUnavailable):
        vault.coordinator().fresh_access_token("member-a", grant.access_token)
    # Then no attempt is on record: the scheduled refresh is not skipped as recent
    assert _raw_portal(vault) == before
    assert vault.coordinator().refresh_if_due("member-a", portal.version) is RefreshOutcome.REFRESHED


def test_scheduled_refresh_with_dead_grant(vault: UnitVault) -> None:
    portal, _ = vault.install()
    vault.clock.advance(22 * DAY)
    vault.oauth.fail_next.append(InvalidGrant("invalid_grant", "expired", http_status=400))
    assert vault.coordinator().refresh_if_due("member-a", portal.version) is RefreshOutcome.NEEDS_REAUTH


def test_outcome_logs_name_tenant_version_outcome_and_never_a_token(
    vault: UnitVault, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, grant = vault.install()
    with caplog.at_level(logging.DEBUG):
        fresh = vault.coordinator().fresh_access_token("member-a", grant.access_token)
        _failing_commits(vault, monkeypatch)
        vault.clock.advance(300)  # past the lazy-refresh interval
        vault.coordinator().fresh_access_token("member-a", fresh.access_token)
    outcomes = [r for r in caplog.records if r.getMessage() == "token refresh"]
    assert [(r.member_id, r.outcome) for r in outcomes] == [  # type: ignore[attr-defined]
        ("member-a", "refreshed"),
        ("member-a", "rescued"),
    ]
    assert all(isinstance(r.version, int) for r in outcomes)  # type: ignore[attr-defined]
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (grant.access_token, grant.refresh_token, fresh.access_token, fresh.refresh_token):
        assert secret not in text


def test_scheduled_refresh_short_of_time_keeps_skip_outcomes_and_writes_nothing(vault: UnitVault) -> None:
    # Given a portal that is not due yet, and a worker with too little time left
    portal, _ = vault.install()
    coordinator = vault.coordinator(refresh_budget_ms=15_000)
    before = _raw_portal(vault)
    # Then a skip still reads as the skip, not as a lack of time
    assert (
        coordinator.refresh_if_due("member-a", portal.version, remaining_ms=lambda: 1_000)
        is RefreshOutcome.SKIPPED_NOT_DUE
    )
    assert coordinator.refresh_if_due("nobody", 1, remaining_ms=lambda: 1_000) is RefreshOutcome.MISSING
    # And a due portal is left alone (no lease, no attempt on record) for the next delivery
    vault.clock.advance(22 * DAY)
    assert (
        coordinator.refresh_if_due("member-a", portal.version, remaining_ms=lambda: 1_000)
        is RefreshOutcome.NOT_ENOUGH_TIME
    )
    assert _raw_portal(vault) == before
    assert vault.oauth.token_requests == 0
