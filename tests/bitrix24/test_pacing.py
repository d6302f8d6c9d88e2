"""LocalTokenBucket: burst, sustained rate, per-key buckets, deadlines, thread safety (fake clock)."""

from __future__ import annotations

import threading

import pytest

from b24connector.bitrix24.errors import QueryLimitExceeded
from b24connector.bitrix24.pacing import LocalTokenBucket
from tests.bitrix24.fakes import FakeTime


def bucket(fake_time: FakeTime, rate: float = 2.0, burst: int = 50) -> LocalTokenBucket:
    return LocalTokenBucket(rate, burst, clock=fake_time.monotonic, sleep=fake_time.sleep)


def test_a_full_burst_goes_out_without_waiting(fake_time: FakeTime) -> None:
    pacer = bucket(fake_time)
    for _ in range(50):
        pacer.acquire("acme.bitrix24.com", None)
    assert fake_time.sleeps == []


def test_after_the_burst_requests_are_paced_at_the_rate(fake_time: FakeTime) -> None:
    pacer = bucket(fake_time)
    start = fake_time.mono
    for _ in range(60):
        pacer.acquire("acme.bitrix24.com", None)
    # 50 at once, then 10 more at 2 per second
    assert fake_time.mono - start == pytest.approx(5.0)
    assert all(s == pytest.approx(0.5) for s in fake_time.sleeps)


def test_the_bucket_refills_while_idle(fake_time: FakeTime) -> None:
    pacer = bucket(fake_time, rate=2, burst=4)
    for _ in range(4):
        pacer.acquire("k", None)
    fake_time.mono += 1.0  # two tokens drip back
    pacer.acquire("k", None)
    pacer.acquire("k", None)
    assert fake_time.sleeps == []
    pacer.acquire("k", None)
    assert fake_time.sleeps == [pytest.approx(0.5)]


def test_refill_never_exceeds_the_burst(fake_time: FakeTime) -> None:
    pacer = bucket(fake_time, rate=2, burst=3)
    fake_time.mono += 3600
    for _ in range(3):
        pacer.acquire("k", None)
    pacer.acquire("k", None)
    assert len(fake_time.sleeps) == 1


def test_portals_have_separate_buckets(fake_time: FakeTime) -> None:
    pacer = bucket(fake_time, burst=1)
    pacer.acquire("a.bitrix24.com", None)
    pacer.acquire("b.bitrix24.com", None)
    assert fake_time.sleeps == []


def test_enterprise_figures(fake_time: FakeTime) -> None:
    pacer = bucket(fake_time, rate=5, burst=250)
    for _ in range(255):
        pacer.acquire("k", None)
    assert sum(fake_time.sleeps) == pytest.approx(1.0)


def test_a_wait_past_the_deadline_raises_instead(fake_time: FakeTime) -> None:
    pacer = bucket(fake_time, burst=1)
    pacer.acquire("k", fake_time.mono + 0.1)
    with pytest.raises(QueryLimitExceeded) as caught:
        pacer.acquire("k", fake_time.mono + 0.1)
    assert caught.value.code == "CLIENT_RATE_LIMIT"
    assert fake_time.sleeps == []
    pacer.acquire("k", fake_time.mono + 1.0)  # a longer budget fits the 0.5 s wait
    assert fake_time.sleeps == [pytest.approx(0.5)]


def test_threads_never_exceed_the_budget() -> None:
    # A real lock with a fake clock: 8 threads x 25 acquisitions with no time passing except sleeps.
    clock_lock = threading.Lock()
    state = {"now": 0.0}

    def clock() -> float:
        with clock_lock:
            return state["now"]

    def sleep(seconds: float) -> None:
        with clock_lock:
            state["now"] += seconds / 8  # threads sleep concurrently; advance the shared clock a little

    pacer = LocalTokenBucket(2, 50, clock=clock, sleep=sleep)
    granted: list[float] = []
    granted_lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            pacer.acquire("k", None)
            with granted_lock:
                granted.append(clock())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 200
    # Whatever the interleaving, no more than burst + rate * elapsed tokens were handed out.
    assert 50 + 2 * state["now"] + 1 >= 200


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="rate"):
        LocalTokenBucket(0, 50)
    with pytest.raises(ValueError, match="burst"):
        LocalTokenBucket(2, 0)


def test_the_local_bucket_shows_its_figures() -> None:
    assert "rate=2.0, burst=50" in repr(LocalTokenBucket())
