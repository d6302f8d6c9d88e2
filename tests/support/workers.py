"""The rig's vault level: settings -> store + OAuthClient + SQS rescue + refresh coordinator, per worker.

`Rig.workers()` (tests/support/rig.py) builds one in this process; `refresher_process` builds one in a
child process (forkserver, so each is a cold interpreter like a separate Lambda container). Kept apart
from rig.py so a child imports the vault and not the handlers, servers or emulator.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from b24connector.bitrix24.oauth import OAuthClient
from b24connector.settings import Settings, load_settings
from b24connector.token_refresh.coordinator import RefreshCoordinator
from b24connector.token_refresh.lease_holder import TokenRefresher
from b24connector.token_refresh.policy import RefreshPolicy
from b24connector.token_refresh.rescue import SqsRescueQueue
from b24connector.tokens import TokenSet
from b24connector.vault.cipher import TokenCipher
from b24connector.vault.endpoints import EndpointGuard
from b24connector.vault.models import aws_region, bind_portal_model
from b24connector.vault.store import PortalStore
from tests.support.vault_fakes import FakeClock


@dataclass
class Worker:
    """One worker's view: its own cipher cache (like its own Lambda container) and coordinator."""

    store: PortalStore
    coordinator: RefreshCoordinator


@dataclass
class Workers:
    """Builds workers that share the AWS endpoints and the emulator but not their caches."""

    settings: Settings
    client_secret: str
    policy: RefreshPolicy
    kms_client: Any = None
    refresher_wrapper: Callable[[TokenRefresher], TokenRefresher] | None = None
    oauth_timeout: tuple[float, float] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], client_secret: str, **policy: Any) -> Workers:
        """Workers from a rig's environment-style mapping (plus OAUTH_SERVERS, LOCAL_MODE, client id)."""
        settings = load_settings(env)
        base = RefreshPolicy.from_settings(settings)
        import boto3

        kms = boto3.client("kms", region_name=aws_region())  # shared: botocore clients are thread-safe
        return cls(settings, client_secret, RefreshPolicy(**{**_policy_fields(base), **policy}), kms)

    @property
    def oauth(self) -> OAuthClient:
        """A new OAuth client on the emulator (http to loopback needs local mode)."""
        secret = self.client_secret
        extra: dict[str, Any] = {} if self.oauth_timeout is None else {"timeout": self.oauth_timeout}
        return OAuthClient(
            self.settings.client_id,
            lambda: secret,
            self.settings.oauth_servers,
            local_mode=self.settings.local_mode,
            **extra,
        )

    def worker(self, *, clock: FakeClock | None = None, policy: RefreshPolicy | None = None) -> Worker:
        """A fresh worker (new cipher cache, shared KMS client and table connection).

        With `clock`, the worker's store and coordinator read time from it and its waits advance it
        instead of sleeping (no jitter), so a test decides when leases expire, not the machine's load.
        """
        cipher = TokenCipher(self.settings.token_key_id, kms_client=self.kms_client)
        timing: dict[str, Any] = {}
        if clock is not None:
            timing = {"clock": clock, "sleep": clock.sleep, "jitter": lambda: 1.0}
        store = PortalStore(
            bind_portal_model(self.settings.portals_table, aws_region()),
            cipher,
            refresh_after_days=self.settings.refresh_after_days,
            due_index_shards=self.settings.due_index_shards,
            **({"clock": clock} if clock is not None else {}),
        )
        refresher: TokenRefresher = self.oauth
        if self.refresher_wrapper is not None:
            refresher = self.refresher_wrapper(refresher)
        rescue = SqsRescueQueue(self.settings.rescue_queue_url)
        coordinator = RefreshCoordinator(
            store,
            refresher,
            rescue,
            endpoints=EndpointGuard.from_settings(self.settings),
            policy=policy or self.policy,
            **timing,
        )
        return Worker(store, coordinator)


def _policy_fields(policy: RefreshPolicy) -> dict[str, Any]:
    return {name: getattr(policy, name) for name in policy.__dataclass_fields__}


def access_token_works(client_endpoint: str, access_token: str) -> bool:
    """True when the portal accepts the token for a REST call (app.info)."""
    answer = requests.post(f"{client_endpoint}app.info", data={"auth": access_token}, timeout=60)
    return answer.status_code == 200 and "result" in answer.json()


def run_concurrently(
    workers_of: Workers, member_id: str, rejected_access_token: str, callers: int
) -> list[TokenSet | BaseException]:
    """`callers` threads, each its own worker, released together at a barrier; results in order."""
    workers = [workers_of.worker() for _ in range(callers)]
    barrier = threading.Barrier(callers)
    results: list[TokenSet | BaseException] = [RuntimeError("not run")] * callers

    def call(index: int) -> None:
        barrier.wait()
        try:
            results[index] = workers[index].coordinator.fresh_access_token(member_id, rejected_access_token)
        except BaseException as exc:  # reported back to the test, which asserts on it
            results[index] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


@functools.cache
def process_context() -> Any:
    """A forkserver context with the vault preloaded: separate processes without re-importing per child."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.support.workers"])
    return ctx


def refresher_process(
    *,
    env: dict[str, str],
    client_secret: str,
    member_id: str,
    rejected_access_token: str,
    threads: int,
    go: Any,
    results: Any,
    mode: str = "normal",
    policy: dict[str, Any] | None = None,
) -> None:
    """Child-process entry: `threads` callers; mode "die_after_refresh"/"die_before_refresh" crashes hard."""
    # A forkserver child starts with the environment the forkserver had when it started (some earlier
    # test's), not this test's: drop endpoint overrides this stack does not set, or a stale
    # AWS_ENDPOINT_URL_DYNAMODB would send this child's DynamoDB calls to another test's server.
    for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL") and n not in env]:
        del os.environ[name]
    os.environ.update(env)
    workers_of = Workers.from_env(env, client_secret, **(policy or {}))
    if mode != "normal":
        workers_of.refresher_wrapper = lambda inner: _Crashing(inner, after=mode == "die_after_refresh")
    workers = [workers_of.worker() for _ in range(threads)]
    output: list[tuple[str, str]] = []
    lock = threading.Lock()

    def call(worker: Worker) -> None:
        try:
            tokens = worker.coordinator.fresh_access_token(member_id, rejected_access_token)
            entry = ("ok", tokens.access_token)
        except Exception as exc:
            entry = ("error", type(exc).__name__)
        with lock:
            output.append(entry)

    go.wait(60)
    pool = [threading.Thread(target=call, args=(w,)) for w in workers]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(120)
    results.put(output)


class _Crashing:
    """A refresher whose process dies right before or right after the token endpoint answered."""

    def __init__(self, inner: TokenRefresher, *, after: bool) -> None:
        self.inner = inner
        self.after = after

    def refresh(
        self, refresh_token: str, *, server_hint: str | None = None, deadline: float | None = None
    ) -> TokenSet:
        if not self.after:
            os._exit(17)
        self.inner.refresh(refresh_token, server_hint=server_hint)
        os._exit(17)  # Bitrix24 spent the old token and issued a pair nobody will ever store
