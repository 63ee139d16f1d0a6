"""Blocking-query mechanics of the Consul adapter, without sockets."""

from __future__ import annotations

import asyncio
import threading

import pytest

from meshagent.adapters.consul_watch import Backoff, TokenBucket, next_index, run_blocking


@pytest.mark.parametrize(
    ("previous", "reported", "expected"),
    [
        (0, 5, 5),  # first answer
        (5, 9, 9),  # moved forward
        (9, 9, 9),  # the wait ran out: same index
        (9, 3, 0),  # went backwards: reset, next query is a full read
        (0, 0, 1),  # index 0 would never block: clamp to 1
        (7, 0, 1),  # a zero index is a bug, not a restore: clamp
        (0, -4, 1),
    ],
)
def test_next_index_follows_consuls_rules(previous: int, reported: int, expected: int) -> None:
    assert next_index(previous, reported) == expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_paces_at_qps() -> None:
    clock = FakeClock()
    bucket = TokenBucket(qps=10, burst=3, clock=clock)
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.1)
    assert bucket.reserve() == pytest.approx(0.2)  # reservations queue up, in order


def test_token_bucket_refills_but_never_beyond_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(qps=10, burst=2, clock=clock)
    bucket.reserve(), bucket.reserve()
    clock.now += 60.0  # a long quiet time refills at most `burst` tokens
    assert [bucket.reserve() for _ in range(2)] == [0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.1)


def test_token_bucket_bounds_the_rate_of_a_spinning_loop() -> None:
    clock = FakeClock()
    bucket = TokenBucket(qps=20, burst=20, clock=clock)
    spent = 0.0
    for _ in range(220):  # a loop that would otherwise spin: each query waits its turn
        delay = bucket.reserve()
        clock.now += delay
        spent += delay
    assert spent == pytest.approx((220 - 20) / 20)


def test_token_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(qps=0, burst=1)


def test_backoff_grows_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(base=0.1, cap=1.0, rand=lambda: 1.0)
    assert [round(backoff.next_delay(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.1)
    low = Backoff(base=0.1, cap=1.0, rand=lambda: 0.0)
    assert low.next_delay() == pytest.approx(0.05)  # never 0: a dead server is not hammered


async def test_run_blocking_returns_raises_and_can_be_cancelled() -> None:
    assert await run_blocking(lambda: 42) == 42
    with pytest.raises(ZeroDivisionError):
        await run_blocking(lambda: 1 // 0)
    gate = threading.Event()
    task = asyncio.create_task(run_blocking(gate.wait))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()  # the abandoned thread ends; its answer is dropped
