"""A slow client costs the agent a bounded queue: samples are dropped oldest first, responses
and events never; a client too far behind is marked ``overflowed`` for the server to cut."""

from __future__ import annotations

import asyncio

import pytest

from agents.serve.outbox import Outbox

DEADLINE = 5.0  # seconds a test waits for something that should happen at once


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(
    *,
    max_samples: int = 3,
    max_other: int = 10,
    max_behind: float = 10.0,
    clock: FakeClock | None = None,
) -> Outbox:
    return Outbox(
        max_samples=max_samples,
        max_other=max_other,
        max_behind=max_behind,
        monotonic=clock or FakeClock(),
    )


async def take_now(outbox: Outbox) -> list[bytes]:
    return await asyncio.wait_for(outbox.take(), DEADLINE)


async def test_order_is_preserved() -> None:
    outbox = make(max_samples=10)
    outbox.put_sample(b"s1")
    outbox.put(b"e1")
    outbox.put_sample(b"s2")
    outbox.put(b"r1")
    outbox.put(b"e2")
    assert len(outbox) == 5
    assert await take_now(outbox) == [b"s1", b"e1", b"s2", b"r1", b"e2"]
    assert len(outbox) == 0
    assert outbox.dropped == 0
    assert outbox.overflowed is None


async def test_oldest_sample_is_dropped_never_another_frame() -> None:
    outbox = make(max_samples=2)
    outbox.put(b"e0")
    outbox.put_sample(b"s1")
    outbox.put(b"e1")
    outbox.put_sample(b"s2")
    outbox.put_sample(b"s3")  # one sample too many: s1 goes, e0 and e1 stay
    assert outbox.dropped == 1
    outbox.put(b"e2")
    outbox.put_sample(b"s4")  # s2 goes
    assert outbox.dropped == 2
    assert await take_now(outbox) == [b"e0", b"e1", b"s3", b"e2", b"s4"]
    assert outbox.overflowed is None


async def test_dropped_counts_every_dropped_sample_and_survives_take() -> None:
    outbox = make(max_samples=1, max_behind=1e9)
    for i in range(5):
        outbox.put_sample(b"s%d" % i)
    assert outbox.dropped == 4
    assert await take_now(outbox) == [b"s4"]
    outbox.put_sample(b"a")
    outbox.put_sample(b"b")
    assert outbox.dropped == 5  # in all, not since the last take
    assert await take_now(outbox) == [b"b"]


async def test_samples_do_not_count_against_the_other_limit() -> None:
    outbox = make(max_samples=50, max_other=3)
    for i in range(40):
        outbox.put_sample(b"s%d" % i)
    for i in range(3):
        outbox.put(b"e%d" % i)
    assert outbox.overflowed is None
    assert len(outbox) == 43


async def test_non_sample_overflow_sets_overflowed() -> None:
    outbox = make(max_other=3)
    for i in range(3):
        outbox.put(b"e%d" % i)
    assert outbox.overflowed is None
    outbox.put(b"e3")
    overflowed: str | None = outbox.overflowed  # mypy: put() changes it
    assert overflowed is not None
    assert "3" in overflowed
    # Nothing that must arrive was dropped to make room.
    assert await take_now(outbox) == [b"e0", b"e1", b"e2", b"e3"]


async def test_overflowed_outbox_takes_no_more_frames() -> None:
    outbox = make(max_other=1)
    outbox.put(b"e0")
    outbox.put(b"e1")
    assert outbox.overflowed
    n = len(outbox)
    outbox.put(b"e2")
    outbox.put_sample(b"s0")
    assert len(outbox) == n


async def test_behind_longer_than_max_behind_sets_overflowed() -> None:
    clock = FakeClock(1000.0)
    outbox = make(max_samples=1, max_behind=10.0, clock=clock)
    outbox.put_sample(b"s0")
    outbox.put_sample(b"s1")  # first drop at t=1000
    assert outbox.dropped == 1
    clock.now = 1005.0
    outbox.put_sample(b"s2")
    clock.now = 1010.0
    outbox.put_sample(b"s3")  # exactly max_behind: still tolerated
    assert outbox.overflowed is None
    clock.now = 1010.5
    outbox.put_sample(b"s4")
    overflowed: str | None = outbox.overflowed  # mypy: put_sample() changes it
    assert overflowed is not None
    assert "10" in overflowed


async def test_dropping_briefly_is_not_overflow() -> None:
    clock = FakeClock(0.0)
    outbox = make(max_samples=1, max_behind=10.0, clock=clock)
    for i in range(100):  # many drops, all within the same instant
        outbox.put_sample(b"s%d" % i)
    assert outbox.dropped == 99
    assert outbox.overflowed is None


async def test_take_waits_until_something_is_queued() -> None:
    outbox = make()
    task = asyncio.create_task(outbox.take())
    for _ in range(5):  # let the task run until it blocks
        await asyncio.sleep(0)
    assert not task.done()
    outbox.put(b"e1")
    assert await asyncio.wait_for(task, DEADLINE) == [b"e1"]


async def test_take_wakes_for_a_sample_too() -> None:
    outbox = make()
    task = asyncio.create_task(outbox.take())
    await asyncio.sleep(0)
    assert not task.done()
    outbox.put_sample(b"s1")
    assert await asyncio.wait_for(task, DEADLINE) == [b"s1"]


async def test_take_after_take_waits_again() -> None:
    outbox = make()
    outbox.put(b"e1")
    assert await take_now(outbox) == [b"e1"]
    second = asyncio.create_task(outbox.take())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not second.done()  # the earlier wake-up does not leak into this take
    outbox.put(b"e2")
    assert await asyncio.wait_for(second, DEADLINE) == [b"e2"]


async def test_take_does_not_return_empty_when_nothing_is_queued() -> None:
    outbox = make()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(outbox.take(), 0.05)


async def test_take_clears_the_dropping_state() -> None:
    clock = FakeClock(0.0)
    outbox = make(max_samples=1, max_behind=10.0, clock=clock)
    outbox.put_sample(b"s0")
    outbox.put_sample(b"s1")  # dropping since t=0
    assert await take_now(outbox) == [b"s1"]  # the client caught up
    clock.now = 1000.0
    outbox.put_sample(b"s2")
    outbox.put_sample(b"s3")  # dropping again, since t=1000, not t=0
    assert outbox.overflowed is None
    clock.now = 1009.0
    outbox.put_sample(b"s4")
    assert outbox.overflowed is None
    clock.now = 1011.0
    outbox.put_sample(b"s5")
    assert outbox.overflowed is not None


async def test_take_resets_the_sample_count() -> None:
    outbox = make(max_samples=2)
    outbox.put_sample(b"s0")
    outbox.put_sample(b"s1")
    assert await take_now(outbox) == [b"s0", b"s1"]
    outbox.put_sample(b"s2")
    outbox.put_sample(b"s3")  # two queued again: within the limit, nothing dropped
    assert outbox.dropped == 0
    assert await take_now(outbox) == [b"s2", b"s3"]
