"""Separate processes (as separate Lambda instances) pacing one portal through the shared bucket.

Real time, real HTTP: the emulated portal's leaky bucket is the judge. The portal is scaled up to
10 req/s with a 10-deep bucket so the test takes seconds; the arithmetic is the same as at 2/50.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from bitrix24_emulator import Emulator, EmulatorConfig
from tests.support.aws import AwsStack
from tests.support.servers import REPO_ROOT

pytestmark = pytest.mark.integration

RATE, BURST = 10.0, 10
PROCESSES, CALLS = 4, 12


@pytest.fixture
def portal() -> Iterator[Emulator]:
    """A portal with a 10/s, 10-deep leaky bucket and no operating limit."""
    config = EmulatorConfig(
        leads=0, rate_drain_per_second=RATE, rate_burst=BURST, operating_limit_seconds=0.0
    )
    with Emulator(config) as emulator:
        yield emulator


def run_processes(stack: AwsStack, portal: Emulator, mode: str) -> list[dict[str, Any]]:
    """Start PROCESSES paced clients, release them together, collect their reports."""
    token = portal.issue_tokens()["access_token"]
    job = {
        "mode": mode,
        "table": stack.rate_limit_table,
        "rate": RATE,
        "burst": BURST,
        "lease_seconds": 0.2,
        "calls": CALLS,
        "client_endpoint": portal.client_endpoint,
        "domain": portal.portal_domain,
        "token": token,
        "key": "member-1",
    }
    env = {**os.environ, **stack.aws_env(), "PYTHONPATH": os.pathsep.join(["functions", "infra", "."])}
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.shared_pacing.pacing_child", json.dumps(job)],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        portal.reset()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        reports = []
        for child in children:
            out, _ = child.communicate(timeout=60)
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


@pytest.mark.slow
def test_processes_sharing_the_bucket_never_overflow_the_portal(
    aws_stack: AwsStack, portal: Emulator
) -> None:
    # When four processes send 48 requests to one portal, paced by the shared DynamoDB bucket
    reports = run_processes(aws_stack, portal, "shared")

    # Then the portal refused none of them (its bucket never overflowed)
    stats = portal.stats()
    assert [r["errors"] for r in reports] == [[]] * PROCESSES
    assert stats["http_503"] == 0
    assert stats["requests"] == PROCESSES * CALLS
    # And the budget was used well: at least 80% of what the portal allows over the run
    duration = stats["last_request_at"] - stats["first_request_at"]
    allowed = BURST + RATE * duration
    assert stats["requests"] / allowed >= 0.8, (stats["requests"], duration)
    # And DynamoDB writes stayed near one per request: past the burst every token is reserved alone
    # (so nobody holds tokens others wait for) and failed conditions are rare
    assert sum(r["writes"] for r in reports) <= 1.5 * PROCESSES * CALLS


@pytest.mark.slow
def test_process_local_buckets_overflow_the_portal(aws_stack: AwsStack, portal: Emulator) -> None:
    # When the same four processes pace themselves only locally (each believes it owns the budget)
    reports = run_processes(aws_stack, portal, "local")

    # Then the portal answers 503 QUERY_LIMIT_EXCEEDED: the failure the shared bucket prevents
    refused = sum(len(r["errors"]) for r in reports)
    assert refused > 0
    assert portal.stats()["http_503"] == refused
