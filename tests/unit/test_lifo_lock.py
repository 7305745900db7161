"""The forming lock goes to its newest waiter; cancelled waiters never keep it."""

from __future__ import annotations

import asyncio

import pytest

from fusionserve.service.batching.lifo_lock import LifoLock


async def _holder(lock: LifoLock, name: str, order: list[str], *, last: bool = False) -> None:
    await lock.acquire(last=last)
    order.append(name)
    await asyncio.sleep(0)
    lock.release()


async def test_the_newest_waiter_gets_the_lock_and_last_waits_behind_all() -> None:
    lock = LifoLock()
    await lock.acquire()
    order: list[str] = []
    tasks = [asyncio.ensure_future(_holder(lock, "old", order))]
    await asyncio.sleep(0)
    tasks.append(asyncio.ensure_future(_holder(lock, "stepped-down", order, last=True)))
    await asyncio.sleep(0)
    tasks.append(asyncio.ensure_future(_holder(lock, "new", order)))
    await asyncio.sleep(0)
    assert lock.waiting == 3
    lock.release()
    await asyncio.gather(*tasks)
    assert order == ["new", "old", "stepped-down"]
    assert not lock.locked()


async def test_a_cancelled_waiter_is_skipped() -> None:
    lock = LifoLock()
    await lock.acquire()
    order: list[str] = []
    first = asyncio.ensure_future(_holder(lock, "first", order))
    await asyncio.sleep(0)
    gone = asyncio.ensure_future(_holder(lock, "gone", order))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    lock.release()
    await first
    assert order == ["first"] and not lock.locked()
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_a_waiter_cancelled_after_the_hand_over_passes_the_lock_on() -> None:
    lock = LifoLock()
    await lock.acquire()
    order: list[str] = []
    older = asyncio.ensure_future(_holder(lock, "older", order))
    await asyncio.sleep(0)
    newest = asyncio.ensure_future(_holder(lock, "newest", order))
    await asyncio.sleep(0)
    lock.release()  # handed to "newest" ...
    newest.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await newest
    await older
    assert order == ["older"] and not lock.locked()


def test_releasing_an_unlocked_lock_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        LifoLock().release()


async def test_only_waiters_that_came_fresh_count_as_fresh() -> None:
    lock = LifoLock()
    await lock.acquire()
    order: list[str] = []
    stale = asyncio.ensure_future(_holder(lock, "stale", order, last=True))
    await asyncio.sleep(0)
    assert lock.waiting == 1 and not lock.fresh_waiting
    fresh = asyncio.ensure_future(_holder(lock, "fresh", order))
    await asyncio.sleep(0)
    assert lock.fresh_waiting
    lock.release()
    await asyncio.gather(stale, fresh)
    assert order == ["fresh", "stale"]
