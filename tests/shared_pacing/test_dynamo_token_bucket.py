"""DynamoTokenBucket against real DynamoDB servers (moto, dynalite), with a virtual clock.

The bucket's arithmetic runs inside DynamoDB but every timestamp comes from the caller, so a fake
clock whose `sleep` advances time makes these tests exact and instant.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from b24connector.bitrix24.errors import QueryLimitExceeded
from b24connector.shared_pacing import BUCKET_PREFIX, DynamoTokenBucket
from tests.support.aws import AwsStack

pytestmark = pytest.mark.integration

BACKENDS = ["moto", "dynalite"]
START = 1_800_000_000.0


class VirtualClock:
    """Wall and monotonic time that only `sleep` moves (thread-safe)."""

    def __init__(self, start: float = START) -> None:
        self.now = start
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self.now

    def monotonic(self) -> float:
        return self.time() - START

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now += max(0.0, seconds)


def bucket(stack: AwsStack, clock: VirtualClock, **kwargs: Any) -> DynamoTokenBucket:
    options: dict[str, Any] = {"rate": 2.0, "burst": 50, "client": stack.client("dynamodb")}
    options.update(kwargs)
    return DynamoTokenBucket(
        stack.rate_limit_table,
        clock=clock.time,
        monotonic=clock.monotonic,
        sleep=clock.sleep,
        rand=lambda: 0.5,
        **options,
    )


def stored_tat(stack: AwsStack, key: str) -> float | None:
    item = (
        stack.client("dynamodb")
        .get_item(
            TableName=stack.rate_limit_table,
            Key={"bucket_id": {"S": BUCKET_PREFIX + key}},
            ConsistentRead=True,
        )
        .get("Item")
    )
    return float(item["tat"]["N"]) if item else None


@pytest.fixture(params=BACKENDS)
def stack(request: pytest.FixtureRequest, aws_stack_factory: Callable[..., AwsStack]) -> AwsStack:
    """A stack whose RateLimitTable lives on moto or on dynalite."""
    return aws_stack_factory(dynamodb=request.param)


def test_burst_is_granted_at_once_with_few_writes(stack: AwsStack) -> None:
    # Given an empty table (a full bucket) for a 2 req/s, 50-deep portal
    clock = VirtualClock()
    pacer = bucket(stack, clock)

    # When the usable capacity is taken in a burst
    for _ in range(pacer.capacity):
        pacer.acquire("portal-a", None)

    # Then nobody waited, the margin for leases is kept, and leases saved most DynamoDB writes
    assert clock.slept == []
    assert pacer.capacity == 50 - 3  # ceil(2 req/s x 1 s lease) + 1
    assert pacer.writes <= pacer.capacity // 2
    assert pacer.conflicts == 0
    # And the stored state says exactly `capacity` tokens are gone
    assert stored_tat(stack, "portal-a") == pytest.approx(START + pacer.capacity / 2.0)


def test_empty_bucket_paces_at_the_refill_rate_one_write_per_request(stack: AwsStack) -> None:
    # Given a drained bucket
    clock = VirtualClock()
    pacer = bucket(stack, clock)
    for _ in range(pacer.capacity):
        pacer.acquire("portal-a", None)
    writes_before = pacer.writes

    # When ten more requests are paced
    for _ in range(10):
        pacer.acquire("portal-a", None)

    # Then they come 0.5 s apart (2 req/s), each reserved alone: no instance sits on waiting tokens
    assert clock.now - START == pytest.approx(5.0)
    assert all(s == pytest.approx(0.5) for s in clock.slept)
    assert pacer.writes - writes_before == 10


def test_two_instances_share_one_budget(stack: AwsStack) -> None:
    # Given two pacers (two Lambda instances) on the same table and portal
    clock = VirtualClock()
    first, second = bucket(stack, clock), bucket(stack, clock)

    # When each takes tokens in turn, more than the capacity together
    for _ in range(30):
        first.acquire("portal-a", None)
        second.acquire("portal-a", None)

    # Then together they were held to capacity + 2/s: 60 tokens need (60 - 47) / 2 s
    assert clock.now - START == pytest.approx((60 - first.capacity) / 2.0, abs=0.51)
    # And the second instance's first write learned the shared state from a failed condition
    assert first.conflicts + second.conflicts >= 1


def test_tokens_still_to_come_are_reserved_one_at_a_time(stack: AwsStack) -> None:
    # Given a bucket another instance drained
    clock = VirtualClock()
    drainer = bucket(stack, clock)
    for _ in range(drainer.capacity):
        drainer.acquire("portal-a", None)
    before = stored_tat(stack, "portal-a")
    assert before is not None

    # When a fresh instance (which would lease 5 tokens from a full bucket) asks for one
    late = bucket(stack, clock)
    late.acquire("portal-a", None)

    # Then it reserved exactly one future slot (no tokens it may never use), after one failed guess
    assert stored_tat(stack, "portal-a") == pytest.approx(before + 0.5)
    assert (late.writes, late.conflicts) == (2, 1)
    assert clock.slept == [pytest.approx(0.5)]


def test_other_portals_have_their_own_bucket(stack: AwsStack) -> None:
    clock = VirtualClock()
    pacer = bucket(stack, clock)
    for _ in range(pacer.capacity):
        pacer.acquire("portal-a", None)

    pacer.acquire("portal-b", None)

    assert clock.slept == []


def test_a_deadline_too_soon_is_refused_without_spending_a_token(stack: AwsStack) -> None:
    # Given a drained bucket: the next token comes in 0.5 s
    clock = VirtualClock()
    pacer = bucket(stack, clock)
    for _ in range(pacer.capacity):
        pacer.acquire("portal-a", None)
    before = stored_tat(stack, "portal-a")

    # When a caller has only 0.2 s left
    with pytest.raises(QueryLimitExceeded) as refused:
        pacer.acquire("portal-a", clock.monotonic() + 0.2)

    # Then it is told at once (CLIENT_RATE_LIMIT, like the local pacer) and the bucket is untouched
    assert refused.value.code == "CLIENT_RATE_LIMIT"
    assert clock.slept == []
    assert stored_tat(stack, "portal-a") == before
    # And a caller with enough time gets its token at the right moment
    pacer.acquire("portal-a", clock.monotonic() + 1.0)
    assert clock.slept == [pytest.approx(0.5)]


def test_a_bucket_removed_by_ttl_counts_as_full(stack: AwsStack) -> None:
    # Given a drained bucket whose item then disappears (TTL)
    clock = VirtualClock()
    pacer = bucket(stack, clock)
    for _ in range(pacer.capacity):
        pacer.acquire("portal-a", None)
    stack.client("dynamodb").delete_item(
        TableName=stack.rate_limit_table, Key={"bucket_id": {"S": BUCKET_PREFIX + "portal-a"}}
    )

    # When another instance asks
    other = bucket(stack, clock)
    other.acquire("portal-a", None)

    # Then it gets a token at once, and the item carries a TTL after the bucket is full again
    assert clock.slept == []
    item = stack.client("dynamodb").get_item(
        TableName=stack.rate_limit_table, Key={"bucket_id": {"S": BUCKET_PREFIX + "portal-a"}}
    )["Item"]
    assert float(item["expires_at"]["N"]) >= float(item["tat"]["N"]) + 3600


def test_unused_leased_tokens_expire(stack: AwsStack) -> None:
    # Given an instance whose burst of two requests leased three tokens (the lease follows demand)
    clock = VirtualClock()
    pacer = bucket(stack, clock)
    pacer.acquire("portal-a", None)
    pacer.acquire("portal-a", None)
    assert pacer.writes == 2
    assert stored_tat(stack, "portal-a") == pytest.approx(START + 3 / 2.0)

    # When it comes back long after the lease time
    clock.sleep(5.0)
    pacer.acquire("portal-a", None)

    # Then the stale token was dropped (spending it now could overfill the portal) and a fresh one reserved
    assert pacer.writes == 3
    assert stored_tat(stack, "portal-a") == pytest.approx(START + 5.0 + 1 / 2.0)


def test_announced_requests_are_reserved_with_one_write(stack: AwsStack) -> None:
    # Given LeadsFunction's pacer (no speculative leases) about to start a planned read of 8 windows
    clock = VirtualClock()
    pacer = bucket(stack, clock, lease_size=1)
    pacer.expect("portal-a", 8)

    # When the 8 requests acquire their tokens
    for _ in range(8):
        pacer.acquire("portal-a", None)

    # Then one write reserved exactly 8 tokens, none waited, none is left over for later requests
    assert (pacer.writes, pacer.conflicts) == (1, 0)
    assert clock.slept == []
    assert stored_tat(stack, "portal-a") == pytest.approx(START + 8 / 2.0)
    pacer.acquire("portal-a", None)
    assert pacer.writes == 2  # the ninth (unannounced) request reserves its own token
    assert stored_tat(stack, "portal-a") == pytest.approx(START + 9 / 2.0)


def test_announced_requests_beyond_the_spare_burst_are_paced_one_at_a_time(stack: AwsStack) -> None:
    # Given a bucket with 7 usable tokens left (another instance took the rest)
    clock = VirtualClock()
    drainer = bucket(stack, clock, lease_size=1)
    drainer.expect("portal-a", drainer.capacity - 7)
    for _ in range(drainer.capacity - 7):
        drainer.acquire("portal-a", None)
    assert drainer.writes == 1

    # When an instance announces and sends 10 requests at once
    pacer = bucket(stack, clock, lease_size=1)
    pacer.expect("portal-a", 10)
    for _ in range(10):
        pacer.acquire("portal-a", None)

    # Then it leased only what was spare now (7, less the one token left for other instances) and
    # waited for the rest at the refill rate: the shared budget holds (47 + 2/s)
    assert stored_tat(stack, "portal-a") == pytest.approx(START + (drainer.capacity + 3) / 2.0)
    assert clock.now - START == pytest.approx(3 / 2.0)
    assert pacer.writes >= 4  # one lease, then one write per token still to come


def test_announced_requests_from_many_threads_never_exceed_the_budget(stack: AwsStack) -> None:
    # Given 16 instances' worth of threads, each announcing 3 windows (48 > the 47 usable tokens)
    clock = VirtualClock()
    pacers = [bucket(stack, clock, lease_size=1) for _ in range(16)]
    granted: list[float] = []
    lock = threading.Lock()

    def window(pacer: DynamoTokenBucket) -> None:
        pacer.acquire("portal-a", None)
        with lock:
            granted.append(clock.time())

    threads = []
    for pacer in pacers:
        pacer.expect("portal-a", 3)
        threads += [threading.Thread(target=window, args=(pacer,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then all 48 were granted within capacity + 2/s, with about one write per instance
    assert len(granted) == 48
    assert stored_tat(stack, "portal-a") == pytest.approx(START + 48 / 2.0)
    assert sum(p.writes - p.conflicts for p in pacers) <= 16 + 2


def test_concurrent_threads_never_exceed_the_budget(stack: AwsStack) -> None:
    # Given four threads of one instance sharing the pacer (the parallel list windows)
    clock = VirtualClock()
    pacer = bucket(stack, clock)
    granted: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(15):
            pacer.acquire("portal-a", None)
            with lock:
                granted.append(clock.time())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then the 60 grants fit capacity + 2/s from the start
    assert len(granted) == 60
    assert stored_tat(stack, "portal-a") == pytest.approx(START + 60 / 2.0)


def test_dynamodb_failure_falls_back_to_local_pacing(aws_stack: AwsStack) -> None:
    # Given a pacer pointed at a table that does not exist
    clock = VirtualClock()
    reasons: list[str] = []
    pacer = DynamoTokenBucket(
        "no-such-table",
        client=aws_stack.client("dynamodb"),
        clock=clock.time,
        monotonic=clock.monotonic,
        sleep=clock.sleep,
        on_fallback=reasons.append,
    )

    # When requests are paced
    for _ in range(pacer.lease_size + 1):
        pacer.acquire("portal-a", None)

    # Then they still go out, paced by a small local bucket, and the reason names the error only
    assert reasons
    assert set(reasons) == {"ResourceNotFoundException"}
    assert sum(clock.slept) == pytest.approx(0.5)


def test_the_shared_bucket_follows_the_settings(aws_stack: AwsStack) -> None:
    # Which pacer LeadsFunction picks (RATE_LIMIT_SHARED): tests/handlers/test_handler_imports.py
    shared = DynamoTokenBucket.from_settings(aws_stack.settings())
    assert (shared.table_name, shared.rate, shared.burst) == (aws_stack.rate_limit_table, 2.0, 50)
