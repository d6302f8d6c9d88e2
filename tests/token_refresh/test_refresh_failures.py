"""Crashes and lost answers around a refresh: rescue through SQS, dead lease holders, adoption.

What happens when a refreshed pair is lost for good (documented by these tests):
- the commit fails after Bitrix24 answered -> the ciphertext goes to the rescue queue, applied later;
- the rescue queue fails too -> the portal is flagged needs_reauth (metric), the error is raised;
- the rescue is late (past the holder's lease) -> the lapsed, never-released lease means "outcome
  unknown": nobody refreshes (RefreshUnsettled) until the rescue lands or the rescue window is over;
- the process dies after Bitrix24 answered (no chance to rescue) -> once its lease and the rescue
  window are over, the next worker spends the already spent token, gets invalid_grant, finds no newer
  commit -> needs_reauth + metric;
- the OAuth answer is lost in transit after the pair was issued -> transient error first, then the
  next refresh gets invalid_grant -> needs_reauth + metric. Nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from b24connector.token_refresh.lease_holder import TokenRefresher
from b24connector.token_refresh.outcomes import RescueOutcome
from b24connector.tokens import TokenSet
from b24connector.vault.errors import (
    GrantNeedsReauth,
    RefreshUnavailable,
    RefreshUnsettled,
    StateRefusal,
    StateRefused,
    TokenRescueFailed,
    VaultUnavailable,
)
from b24connector.vault.models import HEALTH_ACTIVE, HEALTH_NEEDS_REAUTH, bind_state_model
from b24connector.vault.states import StateStore
from tests.support.rig import BACKENDS, Scene
from tests.support.vault_fakes import FakeClock
from tests.support.workers import Workers, access_token_works, process_context, refresher_process

pytestmark = pytest.mark.integration


def _metric(metrics: dict[str, Any], name: str) -> int:
    return len(metrics.get(name, {}).get("Value", []))


def _break_commits(monkeypatch: pytest.MonkeyPatch, store: Any) -> None:
    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise VaultUnavailable("DynamoDB UpdateItem failed (ProvisionedThroughputExceededException)")

    monkeypatch.setattr(store, "commit_refresh", unavailable)


@pytest.mark.parametrize("backend", BACKENDS)
def test_commit_failure_after_bitrix24_answered_is_rescued_through_sqs(
    scene_factory: Callable[..., Scene], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker whose DynamoDB commit keeps failing right after the token endpoint answered
    scene = scene_factory(backend, commit_attempts=3, commit_backoff_seconds=0.01)
    calls = scene.token_requests()
    worker = scene.workers.worker()
    _break_commits(monkeypatch, worker.store)
    # When it refreshes
    fresh = worker.coordinator.fresh_access_token(scene.member_id, scene.grant.access_token)
    # Then its caller can go on, and the encrypted pair (never the plaintext) sits in the rescue queue
    assert access_token_works(scene.grant.client_endpoint, fresh.access_token)
    sqs = scene.stack.client("sqs")
    received = sqs.receive_message(QueueUrl=scene.stack.rescue_queue_url, WaitTimeSeconds=2)["Messages"]
    (message,) = received
    assert fresh.access_token not in message["Body"]
    assert fresh.refresh_token not in message["Body"]
    assert json.loads(message["Body"])["base_version"] == scene.portal.version
    assert scene.stored().version == scene.portal.version  # nothing landed yet
    # When the rescue function applies it (another container: cold cache)
    outcome = scene.workers.worker().coordinator.apply_rescue(message["Body"])
    # Then the pair is stored at version +1 and the chain lives on
    assert outcome is RescueOutcome.APPLIED
    stored = scene.stored()
    assert (stored.version, stored.health) == (scene.portal.version + 1, HEALTH_ACTIVE)
    tokens = scene.workers.worker().store.tokens(stored)
    assert tokens.access_token == fresh.access_token
    assert scene.token_requests() - calls == 1
    assert access_token_works(
        scene.grant.client_endpoint, scene.workers.oauth.refresh(tokens.refresh_token).access_token
    )
    # and applying the same message twice (SQS redelivery) is harmless
    assert scene.workers.worker().coordinator.apply_rescue(message["Body"]) is RescueOutcome.STALE


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lapsed_lease_whose_rescue_is_late_is_not_spent_again(
    scene_factory: Callable[..., Scene],
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    metrics_capture: dict[str, Any],
) -> None:
    # Given a refresh whose commit DynamoDB keeps refusing: the new pair went to the rescue queue
    scene = scene_factory(backend, commit_attempts=3, commit_backoff_seconds=0.01)
    clock = FakeClock(time.time())
    holder = scene.workers.worker(clock=clock)
    _break_commits(monkeypatch, holder.store)
    calls = scene.token_requests()
    fresh = holder.coordinator.fresh_access_token(scene.member_id, scene.grant.access_token)
    assert scene.token_requests() - calls == 1
    sqs = scene.stack.client("sqs")
    (message,) = sqs.receive_message(QueueUrl=scene.stack.rescue_queue_url, WaitTimeSeconds=2)["Messages"]
    # and the rescue is late (its function failing, the message back after each visibility timeout)
    # while the holder's lease lapses, past the lazy-refresh interval too
    policy = scene.workers.policy
    clock.advance(max(policy.lease_seconds, policy.lazy_min_interval_seconds) + 1)
    assert clock() < scene.stored().lease_expires_at + policy.rescue_window_seconds  # type: ignore[operator]
    # When the next lazy callers need a fresh pair (expired_token) or a newer one (invalid_token)
    following = scene.workers.worker(clock=clock)
    with pytest.raises(RefreshUnsettled) as unsettled:
        following.coordinator.fresh_access_token(scene.member_id, scene.grant.access_token)
    with pytest.raises(RefreshUnsettled):
        following.coordinator.stored_if_newer(scene.member_id, scene.grant.access_token)
    # Then nobody spent the old refresh token again: no token call, no needs_reauth, no false alarm
    assert unsettled.value.retryable
    assert 0 < unsettled.value.retry_after <= policy.rescue_window_seconds
    assert scene.token_requests() - calls == 1
    assert scene.stored().health == HEALTH_ACTIVE
    assert _metric(metrics_capture, "PortalNeedsReauth") == 0
    # When the rescue finally lands
    assert scene.workers.worker().coordinator.apply_rescue(message["Body"]) is RescueOutcome.APPLIED
    # Then reads work with the rescued pair, still without another token call
    adopted = following.coordinator.fresh_access_token(scene.member_id, scene.grant.access_token)
    assert adopted.access_token == fresh.access_token
    assert access_token_works(scene.grant.client_endpoint, adopted.access_token)
    assert scene.token_requests() - calls == 1
    assert scene.stored().lease_owner is None


def test_rescue_queue_down_too_flags_the_portal(
    scene_factory: Callable[..., Scene], monkeypatch: pytest.MonkeyPatch, metrics_capture: dict[str, Any]
) -> None:
    scene = scene_factory("moto", commit_attempts=2, commit_backoff_seconds=0.01)
    env = {**scene.rig.env, "RESCUE_QUEUE_URL": scene.stack.rescue_queue_url + "-missing"}
    worker = Workers.from_env(
        env, scene.emulator.client_secret, commit_attempts=2, commit_backoff_seconds=0.01
    ).worker()
    _break_commits(monkeypatch, worker.store)
    with pytest.raises(TokenRescueFailed) as caught:
        worker.coordinator.fresh_access_token(scene.member_id, scene.grant.access_token)
    assert scene.grant.refresh_token not in str(caught.value)
    assert scene.stored().health == HEALTH_NEEDS_REAUTH
    assert _metric(metrics_capture, "PortalNeedsReauth") == 1
    assert _metric(metrics_capture, "TokenRescueFailed") == 1


# The dead worker's lease: long enough that it is surely still held when the next worker starts, however
# loaded the machine is (the next worker's clock is a FakeClock, so waiting it out costs no real time).
DEAD_LEASE_SECONDS = 300.0
# The next worker polls the dead lease with bounded backoff and gives up only well after it expired.
TAKEOVER_POLICY = {"max_wait_seconds": 2 * DEAD_LEASE_SECONDS, "poll_max_seconds": 30.0}
CHILD_EXIT_TIMEOUT = 300.0  # a cold spawned interpreter under heavy load; bounded, and fails loudly


def _crash_in_child(scene: Scene, mode: str) -> None:
    """Run one refresher in a spawned process that takes the lease and dies (exit code 17)."""
    ctx = process_context()
    go, results = ctx.Event(), ctx.Queue()
    child = ctx.Process(
        target=refresher_process,
        kwargs={
            "env": scene.rig.env,
            "client_secret": scene.emulator.client_secret,
            "member_id": scene.member_id,
            "rejected_access_token": scene.grant.access_token,
            "threads": 1,
            "go": go,
            "results": results,
            "mode": mode,
            "policy": {"lease_seconds": DEAD_LEASE_SECONDS},
        },
    )
    child.start()
    go.set()
    child.join(CHILD_EXIT_TIMEOUT)
    if child.is_alive():
        child.kill()
        child.join(10)
        pytest.fail(f"the refresher process did not finish within {CHILD_EXIT_TIMEOUT:.0f} s")
    if child.exitcode != 17:
        # It ended without dying in the token call: say how (its callers' outcomes), not just "0 != 17".
        try:
            outcome = results.get(timeout=10)
        except queue.Empty:
            outcome = None
        pytest.fail(f"the refresher process exited with {child.exitcode}, outcomes {outcome}")


def _unsettled_until_the_window_ends(scene: Scene, worker: Any, clock: FakeClock, dead_until: float) -> None:
    """The next caller waits out the dead lease, is told the outcome is unknown, then the window passes."""
    with pytest.raises(RefreshUnsettled):
        worker.coordinator.fresh_access_token(scene.member_id, scene.grant.access_token)
    window = scene.workers.policy.rescue_window_seconds
    assert dead_until <= clock() < dead_until + window  # it never took the lease over early
    clock.advance(window)


def _next_worker(scene: Scene, dead_lease_until: float) -> tuple[Any, FakeClock]:
    """Another container's worker whose clock starts now and moves only when it waits."""
    clock = FakeClock(time.time())
    assert clock() < dead_lease_until  # the dead worker's lease is still running when it starts
    policy = dataclasses.replace(scene.workers.policy, **TAKEOVER_POLICY)
    return scene.workers.worker(clock=clock, policy=policy), clock


def _dead_lease(scene: Scene) -> float:
    stored = scene.stored()
    assert stored.lease_owner is not None  # it died holding the lease
    assert stored.lease_expires_at is not None
    return stored.lease_expires_at


@pytest.mark.slow
def test_worker_dying_with_the_lease_before_the_token_call_is_taken_over_after_the_window(
    scene_factory: Callable[..., Scene],
) -> None:
    # Given a worker process that took the refresh lease and died before calling the token endpoint
    scene = scene_factory("moto")
    calls = scene.token_requests()
    _crash_in_child(scene, "die_before_refresh")
    dead_until = _dead_lease(scene)
    # When another worker needs a fresh pair: nobody can tell whether the dead worker spent the token
    worker, clock = _next_worker(scene, dead_until)
    _unsettled_until_the_window_ends(scene, worker, clock, dead_until)
    assert scene.token_requests() == calls
    fresh = worker.coordinator.fresh_access_token(scene.member_id, scene.grant.access_token)
    # Then after the rescue window it took the lease over and refreshed once
    stored = scene.stored()
    assert stored.last_refresh_attempt_at is not None
    assert stored.last_refresh_attempt_at > dead_until
    assert access_token_works(scene.grant.client_endpoint, fresh.access_token)
    assert scene.token_requests() - calls == 1
    assert stored.version == scene.portal.version + 1


@pytest.mark.slow
def test_worker_dying_after_bitrix24_answered_ends_in_needs_reauth(
    scene_factory: Callable[..., Scene], metrics_capture: dict[str, Any]
) -> None:
    # Given a worker that spent the refresh token and died before it could commit or rescue
    scene = scene_factory("moto")
    calls = scene.token_requests()
    _crash_in_child(scene, "die_after_refresh")
    dead_until = _dead_lease(scene)
    # When the next worker needs a fresh pair (after the dead lease and the rescue window are over)
    worker, clock = _next_worker(scene, dead_until)
    _unsettled_until_the_window_ends(scene, worker, clock, dead_until)
    with pytest.raises(GrantNeedsReauth):
        worker.coordinator.fresh_access_token(scene.member_id, scene.grant.access_token)
    # Then Bitrix24 refused the spent token and the portal is flagged, visibly, for re-authorization
    assert clock() > dead_until
    assert scene.token_requests() - calls == 2
    assert scene.stored().health == HEALTH_NEEDS_REAUTH
    assert _metric(metrics_capture, "PortalNeedsReauth") == 1


def test_answer_lost_after_issue_is_transient_then_needs_reauth(
    scene_factory: Callable[..., Scene], metrics_capture: dict[str, Any]
) -> None:
    # The second refresh follows at once (no fake clock here): the lazy-refresh throttle is off.
    scene = scene_factory("moto", lazy_min_interval_seconds=0)
    scene.workers.oauth_timeout = (2.0, 0.3)
    scene.emulator.add_faults([{"target": "oauth", "kind": "timeout_after_issue", "delay": 1.0}])
    with pytest.raises(RefreshUnavailable):
        scene.workers.worker().coordinator.fresh_access_token(scene.member_id, scene.grant.access_token)
    stored = scene.stored()
    assert (stored.version, stored.health, stored.lease_owner) == (scene.portal.version, HEALTH_ACTIVE, None)
    with pytest.raises(GrantNeedsReauth):
        scene.workers.worker().coordinator.fresh_access_token(scene.member_id, scene.grant.access_token)
    assert scene.stored().health == HEALTH_NEEDS_REAUTH
    assert _metric(metrics_capture, "TokenRefreshTransientFailure") == 1
    assert _metric(metrics_capture, "PortalNeedsReauth") == 1


class _Choreographed:
    """Runs hooks around the real token call so two workers interleave exactly as a test needs."""

    def __init__(self, inner: TokenRefresher, before: Callable[[], None], after: Callable[[], None]) -> None:
        self.inner, self.before, self.after = inner, before, after

    def refresh(
        self, refresh_token: str, *, server_hint: str | None = None, deadline: float | None = None
    ) -> TokenSet:
        self.before()
        try:
            return self.inner.refresh(refresh_token, server_hint=server_hint)
        finally:
            self.after()


@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_grant_after_another_worker_committed_is_adopted(
    scene_factory: Callable[..., Scene], backend: str, metrics_capture: dict[str, Any]
) -> None:
    # Given worker A spent the token but answered slowly (its lease expired), and worker B took over
    # B refreshes half a second after A's attempt, as if A's lease had lapsed longer than the rescue
    # window ago: the lazy-refresh throttle and the rescue window are off for this race.
    scene = scene_factory(
        backend,
        lease_seconds=0.5,
        max_wait_seconds=10,
        lazy_min_interval_seconds=0,
        rescue_window_seconds=0,
        token_call_seconds=0,  # the half-second lease is all the token call gets here
    )
    b_has_lease, a_committed = threading.Event(), threading.Event()
    scene.workers.refresher_wrapper = lambda inner: _Choreographed(
        inner, lambda: None, lambda: b_has_lease.wait(10)
    )
    worker_a = scene.workers.worker()
    scene.workers.refresher_wrapper = lambda inner: _Choreographed(
        inner, lambda: (b_has_lease.set(), a_committed.wait(10)), lambda: None
    )
    worker_b = scene.workers.worker()
    results: dict[str, TokenSet | BaseException] = {}

    def run(name: str, worker: Any) -> None:
        try:
            results[name] = worker.coordinator.fresh_access_token(scene.member_id, scene.grant.access_token)
        except BaseException as exc:
            results[name] = exc
        if name == "a":
            a_committed.set()

    thread_a = threading.Thread(target=run, args=("a", worker_a))
    thread_a.start()
    while scene.stored().lease_owner is None:
        threading.Event().wait(0.02)
    threading.Event().wait(0.6)  # A's lease expires while its answer is "in flight"
    thread_b = threading.Thread(target=run, args=("b", worker_b))
    thread_b.start()
    thread_a.join(20)
    thread_b.join(20)
    # Then B's invalid_grant led to adoption of A's commit, not to needs_reauth
    a, b = results["a"], results["b"]
    assert isinstance(a, TokenSet), a
    assert isinstance(b, TokenSet), b
    assert a.access_token == b.access_token
    stored = scene.stored()
    assert (stored.version, stored.health) == (scene.portal.version + 1, HEALTH_ACTIVE)
    assert _metric(metrics_capture, "TokenAdopted") == 1
    assert _metric(metrics_capture, "PortalNeedsReauth") == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_oauth_state_is_consumed_by_exactly_one_of_50(
    aws_stack_factory: Callable[..., Any], backend: str
) -> None:
    stack = aws_stack_factory(dynamodb=backend)
    states = StateStore(bind_state_model(stack.states_table, stack.region), ttl_seconds=600)
    raw_state, nonce = uuid.uuid4().hex, uuid.uuid4().hex
    states.save(raw_state, nonce, "a.bitrix24.com")
    barrier = threading.Barrier(50)
    winners: list[object] = []
    refusals: list[StateRefusal] = []

    def consume() -> None:
        barrier.wait()
        try:
            consumed = states.consume(raw_state, nonce)
        except StateRefused as refused:
            refusals.append(refused.reason)
            return
        if consumed is not None:
            winners.append(consumed)

    threads = [threading.Thread(target=consume) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(winners) == 1
    # every loser is told the state was used (not that it is unknown)
    assert refusals == [StateRefusal.USED] * 49


@pytest.mark.parametrize("backend", BACKENDS)
def test_refresh_lease_has_exactly_one_winner_among_50(
    scene_factory: Callable[..., Scene], backend: str
) -> None:
    scene = scene_factory(backend)
    stores = [scene.workers.worker().store for _ in range(50)]
    for _ in range(5):
        barrier = threading.Barrier(50)
        winners: list[str] = []

        def take(store: Any, barrier: threading.Barrier = barrier, winners: list[str] = winners) -> None:
            owner = uuid.uuid4().hex
            barrier.wait()
            if store.take_lease(scene.member_id, scene.portal.version, owner, lease_seconds=60):
                winners.append(owner)

        threads = [threading.Thread(target=take, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(winners) == 1
        assert stores[0].release_lease(scene.member_id, winners[0])
