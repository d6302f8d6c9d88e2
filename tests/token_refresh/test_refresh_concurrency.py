"""Many workers, one expired pair, single-use rotating refresh tokens (the emulator over HTTP).

Every test runs against two DynamoDB implementations in their own processes: moto's server and
dynalite (which serialises writes per table), so a pass cannot hinge on one server's luck.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from b24connector.tokens import TokenSet
from b24connector.vault.models import HEALTH_ACTIVE
from tests.support.rig import BACKENDS, Scene
from tests.support.workers import access_token_works, process_context, refresher_process, run_concurrently

# Threads stand in for concurrent containers: they share one Powertools metric set only through this.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_metric_flush_at_a_time")]


def _assert_one_refresh_for_all(scene: Scene, results: list[TokenSet | BaseException], calls: int) -> None:
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    tokens = {r.access_token for r in results if isinstance(r, TokenSet)}
    # exactly one token-endpoint call, every caller holds the same working access token
    assert scene.token_requests() - calls == 1
    assert len(tokens) == 1
    (token,) = tokens
    assert token != scene.grant.access_token
    assert access_token_works(scene.grant.client_endpoint, token)
    assert not access_token_works(scene.grant.client_endpoint, scene.grant.access_token)
    stored = scene.stored()
    assert stored.version == scene.portal.version + 1
    assert stored.health == HEALTH_ACTIVE
    assert stored.lease_owner is None
    # the chain is intact: the stored refresh token is the live one (nothing lost)
    stored_tokens = scene.workers.worker().store.tokens(stored)
    assert stored_tokens.access_token == token
    raw = repr(scene.stack.raw_items(scene.stack.portals_table))
    for secret in (token, stored_tokens.refresh_token, scene.grant.access_token, scene.grant.refresh_token):
        assert secret not in raw
    assert access_token_works(
        scene.grant.client_endpoint, scene.workers.oauth.refresh(stored_tokens.refresh_token).access_token
    )


# VAULT_STRESS_RUNS=20 repeats every case (how moto's and dynalite's atomicity were measured).
REPEATS = range(int(os.environ.get("VAULT_STRESS_RUNS", "1")))


@pytest.mark.parametrize("repeat", REPEATS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("callers", [2, 10, 50])
def test_concurrent_refreshers_in_threads(
    scene_factory: Callable[..., Scene], backend: str, callers: int, repeat: int
) -> None:
    # Given a portal whose access token Bitrix24 just rejected, and `callers` workers that noticed
    scene = scene_factory(backend)
    calls = scene.token_requests()
    # When all of them ask for a fresh pair at once
    results = run_concurrently(scene.workers, scene.member_id, scene.grant.access_token, callers)
    # Then one refresh happened and everyone got its pair
    _assert_one_refresh_for_all(scene, results, calls)


@pytest.mark.parametrize("backend", BACKENDS)
def test_callers_with_the_old_token_after_a_refresh_cause_no_refresh(
    scene_factory: Callable[..., Scene], backend: str
) -> None:
    scene = scene_factory(backend)
    fresh = scene.workers.worker().coordinator.fresh_access_token(scene.member_id, scene.grant.access_token)
    calls = scene.token_requests()
    results = run_concurrently(scene.workers, scene.member_id, scene.grant.access_token, 50)
    assert scene.token_requests() == calls
    assert {r.access_token for r in results if isinstance(r, TokenSet)} == {fresh.access_token}
    assert scene.stored().version == scene.portal.version + 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_refreshers_in_processes(scene_factory: Callable[..., Scene], backend: str) -> None:
    # Given 4 processes (separate interpreters, like Lambda containers) with 5 workers each
    scene = scene_factory(backend)
    calls = scene.token_requests()
    ctx = process_context()
    go, results = ctx.Event(), ctx.Queue()
    env = scene.rig.env
    processes = [
        ctx.Process(
            target=refresher_process,
            kwargs={
                "env": env,
                "client_secret": scene.emulator.client_secret,
                "member_id": scene.member_id,
                "rejected_access_token": scene.grant.access_token,
                "threads": 5,
                "go": go,
                "results": results,
            },
        )
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    # When they all start at once (after every interpreter finished importing)
    go.set()
    outputs = [entry for _ in processes for entry in results.get(timeout=120)]
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    # Then one refresh served all 20
    assert len(outputs) == 20
    assert {kind for kind, _ in outputs} == {"ok"}
    _assert_one_refresh_for_all(
        scene, [TokenSet(v, "", 0, scene.member_id, "", "") for _, v in outputs], calls
    )
