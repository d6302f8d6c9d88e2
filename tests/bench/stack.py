"""The local stack as the bench uses it: started once, the emulated portal installed, handy clients."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.config import Config

from local_stack import LocalStack, StackConfig
from local_stack.resources import aws_client
from tests.bench.common import peak_rss_kb
from tests.bench.dynamo_proxy import DynamoSerializingProxy

# The modeled portal of section 1: 50 ms per request and modeled server time as real delay at 1/100.
EXPORT_EMULATOR = {"latency_seconds": 0.05, "time_scale": 0.01, "rate_plan": "standard"}


@dataclass
class BenchStack:
    """A running local stack with its emulated portal installed through InstallFunction."""

    stack: LocalStack
    member_id: str

    @property
    def emulator(self) -> Any:
        """The stack's Bitrix24 emulator (in this process)."""
        return self.stack.emulator

    def client(self, service: str) -> Any:
        """A boto3 client on the stack's moto server."""
        return aws_client(service, self.stack.aws_endpoint_url, self.stack.aws_region)

    def lambda_client(self) -> Any:
        """A boto3 Lambda client on the stack's Invoke API."""
        import boto3

        return boto3.client(
            "lambda",
            endpoint_url=self.stack.lambda_endpoint_url,
            region_name=self.stack.aws_region,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(read_timeout=300, retries={"max_attempts": 1}, max_pool_connections=64),
        )

    def table(self, logical_id: str) -> str:
        """Physical name of a template table."""
        return self.stack.running_info().tables[logical_id]

    def invoke(self, function: str, payload: Mapping[str, Any]) -> Any:
        """Invoke a function synchronously and return its decoded answer."""
        return self.stack.invoke(function, dict(payload))

    def warm(self, function: str, payload: Mapping[str, Any], workers: int) -> None:
        """Start `workers` workers of a function and give each one invocation (caches filled, as when warm)."""
        from concurrent.futures import ThreadPoolExecutor

        runtime = self.stack.runtimes[function]
        started = [runtime._acquire() for _ in range(workers)]  # spawn them all before any call
        for worker in started:
            runtime._release(worker, discard=False)
        # Held at once by `workers` concurrent calls, each idle worker takes one invocation.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda _: self.invoke(function, payload), range(workers)))

    def reset_pacing(self, key: str | None = None) -> None:
        """Forget the shared request budget of the portal (as the emulator's reset empties its bucket)."""
        self.client("dynamodb").delete_item(
            TableName=self.table("RateLimitTable"),
            Key={"bucket_id": {"S": f"portal#{key or self.member_id}"}},
        )

    def reset_portal(self, *, operating_limit: float = 480.0) -> None:
        """Zero the emulator's counters, leaky bucket and operating windows; empty our pacing bucket."""
        self.emulator.configure(operating_limit_seconds=operating_limit)
        self.emulator.reset()
        self.reset_pacing()

    def worker_peak_rss_kb(self, function: str) -> int | None:
        """The largest VmHWM among the function's worker processes (peak since each started)."""
        runtime = self.stack.runtimes[function]
        with runtime._cond:  # read-only look at the pool's processes
            pids = [worker.process.pid for worker in runtime._all]
        peaks = [p for p in (peak_rss_kb(pid) for pid in pids) if p is not None]
        return max(peaks) if peaks else None

    def function_env(self, function: str) -> dict[str, str]:
        """The environment the stack gives a function's workers."""
        return dict(self.stack.runtimes[function].spec.environment)


def install_portal(stack: LocalStack) -> str:
    """Install the emulated portal as an API-only app's portal does: ONAPPINSTALL, applied from the journal."""
    emulator = stack.emulator
    event = emulator.send_install(f"{stack.api_url}/events", "event")
    if event["status"] != 200 or json.loads(event["body"]) != {"status": "accepted"}:
        raise RuntimeError(f"install failed: ONAPPINSTALL answered {event['status']}")
    drain = stack.drain_queues()  # LifecycleFunction verifies, stores and subscribes
    if drain.failed:
        raise RuntimeError(f"install failed: LifecycleFunction left {drain.failed} messages")
    emulator.reset()
    return str(emulator.member_id)


@contextlib.contextmanager
def bench_stack(
    *,
    leads: int,
    workers: int,
    emulator_settings: Mapping[str, Any] | None = None,
    env_overrides: Mapping[str, str] | None = None,
    install: bool = True,
    atomic_dynamodb: bool = False,
    template: Path | None = None,
) -> Iterator[BenchStack]:
    """Start a local stack (moto, emulator, function workers) and install its portal.

    `atomic_dynamodb` puts the functions' DynamoDB traffic through DynamoSerializingProxy, for
    measurements where many processes write one item (moto alone can lose such updates).
    """
    env = dict(env_overrides or {})
    proxy = DynamoSerializingProxy().start() if atomic_dynamodb else None
    if proxy is not None:
        env["AWS_ENDPOINT_URL_DYNAMODB"] = proxy.url
    config = StackConfig(
        **({"template": template} if template is not None else {}),
        leads=leads,
        workers_per_function=workers,
        emulator_settings=dict(emulator_settings or {}),
        env_overrides=env,
    )
    try:
        with LocalStack(config) as stack:
            if proxy is not None:
                proxy.upstream = stack.aws_endpoint_url
            member_id = install_portal(stack) if install else str(stack.emulator.member_id)
            yield BenchStack(stack, member_id)
    finally:
        if proxy is not None:
            proxy.stop()
