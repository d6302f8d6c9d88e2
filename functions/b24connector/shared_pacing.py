"""Per-portal request pacing shared by every Lambda instance: a token bucket item in the RateLimitTable.

A Pacer (bitrix24.pacing) for the REST client; LeadsFunction uses it unless RATE_LIMIT_SHARED is false
(settings.rate_limit_shared), in which case each process paces itself with bitrix24.pacing.LocalTokenBucket.

Why it exists: Bitrix24 meters a portal with one leaky bucket (docs/bitrix24-facts.md#f-limit-1: 2
requests/s drain, 50 deep on most plans) no matter how many of our Lambda instances talk to it, and
instances share no memory. A process-local bucket lets N concurrent instances send N times the budget
and collect 503 QUERY_LIMIT_EXCEEDED.

The bucket is stored in GCRA form (the "theoretical arrival time" formulation of a token bucket): one
item per portal, `bucket_id` = "portal#<key>", attribute `tat` = the Unix time at which the bucket is
full again. With refill rate r and capacity C, tokens(now) = C - max(0, tat - now) * r. Taking n
tokens moves tat to max(tat, now) + n/r; the k-th of them may be used at max(now, tat_before + k/r - C/r).
That makes both cases one conditional UpdateItem each, with no read before the write:

- bucket partly drained (tat >= now): ``SET tat = tat + :n_over_r IF tat BETWEEN :now AND :latest``.
  The arithmetic happens inside DynamoDB, so any number of concurrent writers succeed without
  retries; ``:latest`` refuses a reservation whose tokens would come after the caller's deadline.
- bucket full, or item absent / removed by TTL (tat < now): ``SET tat = :now + :n_over_r IF
  attribute_not_exists(tat) OR tat < :now``.

A writer that guessed the wrong case gets ConditionalCheckFailed with the current item
(ReturnValuesOnConditionCheckFailure) and switches case after a short random pause; only the
moment the bucket runs full or empty can produce such a conflict.

Cost control (leases): one write reserves up to `lease_size` tokens while the bucket has burst to
spare and this process is asking at that pace (its requests within the last `lease_seconds`), so a
burst of requests costs one DynamoDB write per `lease_size` REST requests, not one each. A token that
must be waited for is reserved alone, for its exact future slot, so an instance never sits on tokens
that others are waiting for. Trade-offs, both bounded:
- a leased token can be spent up to `lease_seconds` after its slot, which could let a window see a
  little more than C + r*w requests; the capacity is therefore lowered by ceil(r * lease_seconds) + 1
  tokens (50 -> 47 with the defaults) so the portal's own bucket never overflows;
- tokens leased but not used when an invocation ends are lost (at most lease_size - 1 per instance,
  and only while the bucket had burst to spare).
A caller that knows how many requests it is about to start at once (a planned read of N ID windows)
says so with `expect(key, N)`: the first of them reserves all N in one write, whatever `lease_size`
(still only while the bucket has them all to spare now; otherwise one at a time as above). Nothing
is speculative there, so nothing is wasted: LeadsFunction keeps `lease_size` 1 and still pays one
write per invocation's round of windows instead of one per request.
If DynamoDB fails (throttled after botocore's retries, unreachable), the process paces itself with a
small local bucket instead of failing the read; the REST client's 503 backoff covers the rest.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from b24connector.bitrix24.errors import QueryLimitExceeded
from b24connector.bitrix24.pacing import LocalTokenBucket
from b24connector.vault.models import aws_region

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from b24connector.settings import Settings

BUCKET_PREFIX = "portal#"
# Reservations further out than this are refused even without a deadline (a caller with no budget).
MAX_WAIT_SECONDS = 120.0
# Idle buckets disappear this long after they are full again (TTL); an absent item is a full bucket.
_TTL_AFTER_FULL_SECONDS = 3600
_MAX_ATTEMPTS = 6
_CONDITION_FAILED = "ConditionalCheckFailedException"
_MAX_KEYS = 1024


class _Conflict(Exception):
    """The guessed case did not hold; `tat` is the current value (None: no item or no tat)."""

    def __init__(self, tat: float | None) -> None:
        super().__init__("bucket changed")
        self.tat = tat


class _BrokenAnswer(Exception):
    """DynamoDB answered in a shape this code cannot use."""


def _reason(exc: Exception) -> str:
    """A short, secret-free name for why DynamoDB could not be used."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "ClientError")
    return type(exc).__name__


class _Lease:
    """Tokens reserved by this process for one key: their slot times (Unix seconds), oldest first."""

    __slots__ = ("demand", "expected", "lock", "slots", "tat")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.slots: deque[float] = deque()
        self.tat: float | None = None  # last tat this process saw (an estimate of the shared state)
        self.demand: deque[float] = deque()  # when this process asked lately (the lease follows demand)
        self.expected = 0  # acquires announced by expect() and not yet reserved

    def note_demand(self, now: float, window: float) -> int:
        """Record one request at `now`; how many were asked for within the last `window` seconds."""
        self.demand.append(now)
        while self.demand and self.demand[0] < now - window:
            self.demand.popleft()
        return len(self.demand)


def _number(value: float) -> dict[str, str]:
    return {"N": f"{value:.6f}"}


def _tat_of(item: Mapping[str, Any] | None) -> float | None:
    if not item or "tat" not in item:
        return None
    return float(item["tat"]["N"])


def pacing_client() -> DynamoDBClient:
    """The DynamoDB client a bucket builds on first use: short timeouts, few retries (it paces every call)."""
    client: DynamoDBClient = boto3.client(
        "dynamodb",
        region_name=aws_region(),
        # Pacing sits in front of every portal request: fail over to local pacing quickly.
        config=Config(
            connect_timeout=1,
            read_timeout=2,
            retries={"mode": "standard", "max_attempts": 3},
            max_pool_connections=50,
        ),
    )
    return client


class DynamoTokenBucket:
    """A Pacer whose per-key token bucket lives in DynamoDB, shared by every process that uses the table.

    Thread-safe. `rate` requests/s sustained and `burst` at once are the portal's published figures;
    the usable capacity is `burst` minus the lease safety margin (see the module docstring).
    """

    def __init__(
        self,
        table_name: str,
        rate: float = 2.0,
        burst: int = 50,
        *,
        lease_size: int = 5,
        lease_seconds: float = 1.0,
        client: DynamoDBClient | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        if rate <= 0 or burst < 1 or lease_size < 1 or lease_seconds <= 0:
            raise ValueError("rate and lease_seconds must be positive, burst and lease_size at least 1")
        self.table_name = table_name
        self.rate = rate
        self.burst = burst
        self.margin = math.ceil(rate * lease_seconds) + 1
        self.capacity = max(1, burst - self.margin)
        self.lease_size = max(1, min(lease_size, self.capacity))
        self.lease_seconds = lease_seconds
        self._client = client
        self._client_lock = threading.Lock()
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._rand = rand
        self._on_fallback = on_fallback
        self._leases: dict[str, _Lease] = {}
        self._leases_lock = threading.Lock()
        self._fallback = LocalTokenBucket(rate, self.lease_size, clock=monotonic, sleep=sleep)
        self.writes = 0  # DynamoDB UpdateItem calls made (for measurements)
        self.conflicts = 0  # of those, the ones that hit ConditionalCheckFailed

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> DynamoTokenBucket:
        """The bucket for RATE_LIMIT_TABLE with RATE_LIMIT_PER_SECOND and RATE_LIMIT_BURST."""
        return cls(
            settings.rate_limit_table, settings.rate_limit_per_second, settings.rate_limit_burst, **kwargs
        )

    def __repr__(self) -> str:
        return (
            f"DynamoTokenBucket(table={self.table_name!r}, rate={self.rate}, burst={self.burst}, "
            f"capacity={self.capacity}, lease_size={self.lease_size})"
        )

    # --- Pacer ------------------------------------------------------------------------------------

    def expect(self, key: str, requests: int) -> None:
        """The next `requests` acquires for `key` start together: reserve them with one write if the bucket has them."""
        lease = self._lease(key)
        with lease.lock:
            lease.expected = max(0, requests)

    def acquire(self, key: str, deadline: float | None) -> None:
        """Take one token for `key`, sleeping until its slot; QueryLimitExceeded if that is after `deadline`."""
        wall_deadline = None if deadline is None else self._clock() + (deadline - self._monotonic())
        lease = self._lease(key)
        failure: str | None = None
        with lease.lock:
            demand = max(lease.note_demand(self._clock(), self.lease_seconds), lease.expected)
            slot = self._leased_slot(lease, wall_deadline)
            if slot is None:
                try:
                    slots = self._reserve(key, lease, wall_deadline, demand)
                except (ClientError, BotoCoreError, _BrokenAnswer) as exc:
                    failure = _reason(exc)
                else:
                    lease.expected = max(0, lease.expected - len(slots))
                    slot = slots.popleft()
                    lease.slots.extend(slots)
        if slot is None:
            if self._on_fallback is not None:
                self._on_fallback(failure or "unknown")
            self._fallback.acquire(key, deadline)
            return
        wait = slot - self._clock()
        if wait > 0:
            self._sleep(wait)

    # --- leases -----------------------------------------------------------------------------------

    def _lease(self, key: str) -> _Lease:
        with self._leases_lock:
            lease = self._leases.get(key)
            if lease is None:
                if len(self._leases) >= _MAX_KEYS:
                    self._leases.clear()
                lease = self._leases[key] = _Lease()
            return lease

    def _leased_slot(self, lease: _Lease, wall_deadline: float | None) -> float | None:
        """The earliest still-valid leased slot, or None when the lease is empty."""
        now = self._clock()
        while lease.slots and lease.slots[0] + self.lease_seconds < now:
            lease.slots.popleft()  # its moment passed unused: spending it now could overfill the portal
        if not lease.slots:
            return None
        if wall_deadline is not None and lease.slots[0] > wall_deadline:
            raise _too_late()
        return lease.slots.popleft()

    def _lease_size(self, available: float, wanted: int = 0) -> int:
        """Tokens to take in one write: several while burst is to spare, else exactly one.

        `wanted` is announced demand (expect()): those requests start now, so up to that many are
        taken even above `lease_size`, which only caps speculative leases (tokens that might go unused).
        """
        spare = math.floor(available) - self.lease_size  # leave a lease's worth for other instances
        return max(1, min(max(self.lease_size, wanted), spare))

    def _available(self, tat: float | None, now: float) -> float:
        """Tokens in the bucket at `now` if the shared state is `tat` (None: unknown, guess full)."""
        return self.capacity - max(0.0, (tat or now) - now) * self.rate

    # --- DynamoDB ---------------------------------------------------------------------------------

    def _dynamodb(self) -> DynamoDBClient:
        with self._client_lock:
            if self._client is None:
                self._client = pacing_client()
            return self._client

    def _reserve(self, key: str, lease: _Lease, wall_deadline: float | None, demand: int) -> deque[float]:
        """Reserve tokens with one conditional write (more only on a case switch); their slot times.

        Several tokens are taken only when all of them are in the bucket now and this process asked
        for that many within the lease time; a token that has to be waited for is reserved alone, so
        no instance holds tokens it is unlikely to use.
        """
        interval = 1.0 / self.rate
        now = self._clock()
        # Guess from what this process saw last; a wrong guess costs one conditional failure.
        count = min(demand, self._lease_size(self._available(lease.tat, now), lease.expected))
        full = lease.tat is None or lease.tat < now
        for attempt in range(_MAX_ATTEMPTS):
            now = self._clock()
            # The last token's slot, tat_before + count/r - C/r, must not be later than the limit.
            latest = self._limit(count, now, wall_deadline) + (self.capacity - count) * interval
            try:
                if full:
                    before = now
                    after = self._write_full(key, now, count * interval)
                else:
                    if latest < now:
                        raise _too_late()
                    after = self._write_drained(key, now, latest, count * interval)
                    before = after - count * interval
            except _Conflict as conflict:
                self.conflicts += 1
                count, full = self._after_conflict(conflict.tat, now, latest, count, lease.expected)
                if attempt:
                    # Someone else flipped the bucket between our reads: step aside a little.
                    self._sleep(self._rand() * 0.01 * attempt)
                continue
            lease.tat = after
            first = before - self.capacity * interval
            return deque(max(now, first + k * interval) for k in range(1, count + 1))
        raise _too_late()

    @staticmethod
    def _limit(count: int, now: float, wall_deadline: float | None) -> float:
        """The latest acceptable slot for the last of `count` tokens."""
        if count > 1:
            return now  # a lease: every token in it must be usable at once
        if wall_deadline is None:
            return now + MAX_WAIT_SECONDS
        return min(wall_deadline, now + MAX_WAIT_SECONDS)

    def _after_conflict(
        self, current: float | None, now: float, latest: float, count: int, wanted: int = 0
    ) -> tuple[int, bool]:
        """(tokens to ask for, whether the bucket is full) given the state a failed condition showed."""
        if current is None or current < now:
            return count, True
        if current <= latest:
            return count, False
        if count > 1:
            return min(count, self._lease_size(self._available(current, now), wanted)), False
        raise _too_late()

    def _update(self, **kwargs: Any) -> float:
        self.writes += 1
        try:
            answer = self._dynamodb().update_item(
                TableName=self.table_name,
                ReturnValues="UPDATED_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **kwargs,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != _CONDITION_FAILED:
                raise
            returned: Any = exc.response.get("Item")
            item = returned if isinstance(returned, Mapping) else self._current(kwargs["Key"])
            raise _Conflict(_tat_of(item)) from None
        tat = _tat_of(answer.get("Attributes"))
        if tat is None:
            raise _BrokenAnswer("UpdateItem answered without the attribute it wrote")
        return tat

    def _current(self, key: Mapping[str, Any]) -> Mapping[str, Any] | None:
        # Only for DynamoDB implementations that do not return the item on a failed condition.
        answer = self._dynamodb().get_item(TableName=self.table_name, Key=dict(key), ConsistentRead=True)
        return answer.get("Item")

    def _expires(self, tat: float) -> dict[str, str]:
        return {"N": str(math.ceil(tat + _TTL_AFTER_FULL_SECONDS))}

    def _write_full(self, key: str, now: float, amount: float) -> float:
        return self._update(
            Key={"bucket_id": {"S": BUCKET_PREFIX + key}},
            UpdateExpression="SET #tat = :tat, #exp = :exp",
            ConditionExpression="attribute_not_exists(#tat) OR #tat < :now",
            ExpressionAttributeNames={"#tat": "tat", "#exp": "expires_at"},
            ExpressionAttributeValues={
                ":tat": _number(now + amount),
                ":now": _number(now),
                ":exp": self._expires(now + amount),
            },
        )

    def _write_drained(self, key: str, now: float, latest: float, amount: float) -> float:
        return self._update(
            Key={"bucket_id": {"S": BUCKET_PREFIX + key}},
            UpdateExpression="SET #tat = #tat + :amount, #exp = :exp",
            ConditionExpression="#tat BETWEEN :now AND :latest",
            ExpressionAttributeNames={"#tat": "tat", "#exp": "expires_at"},
            ExpressionAttributeValues={
                ":amount": _number(amount),
                ":now": _number(now),
                ":latest": _number(latest),
                ":exp": self._expires(latest + amount),
            },
        )


def _too_late() -> QueryLimitExceeded:
    return QueryLimitExceeded(
        "CLIENT_RATE_LIMIT", "the request budget ends before the shared pacing allows another request"
    )
