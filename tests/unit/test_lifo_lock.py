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


async def _queue(lock: LifoLock, order: list[str], name: str, *, last: bool = False) -> asyncio.Future[None]:
    """A holder that starts waiting now (one loop step later it is in the lock's queue)."""
    holder = asyncio.ensure_future(_holder(lock, name, order, last=last))
    await asyncio.sleep(0)
    return holder


async def _held() -> tuple[LifoLock, list[str]]:
    lock = LifoLock()
    await lock.acquire()
    return lock, []


async def test_the_newest_waiter_gets_the_lock_and_last_waits_behind_all() -> None:
    lock, order = await _held()
    tasks = [
        await _queue(lock, order, "old"),
        await _queue(lock, order, "stepped-down", last=True),
        await _queue(lock, order, "new"),
    ]
    assert lock.waiting == 3
    lock.release()
    await asyncio.gather(*tasks)
    assert order == ["new", "old", "stepped-down"]
    assert not lock.locked()


async def test_a_cancelled_waiter_is_skipped() -> None:
    lock, order = await _held()
    first = await _queue(lock, order, "first")
    gone = await _queue(lock, order, "gone")
    gone.cancel()
    await asyncio.sleep(0)
    lock.release()
    await first
    assert order == ["first"] and not lock.locked()
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_a_waiter_cancelled_after_the_hand_over_passes_the_lock_on() -> None:
    lock, order = await _held()
    older = await _queue(lock, order, "older")
    newest = await _queue(lock, order, "newest")
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
    lock, order = await _held()
    stale = await _queue(lock, order, "stale", last=True)
    assert lock.waiting == 1 and not lock.fresh_waiting
    fresh = await _queue(lock, order, "fresh")
    assert lock.fresh_waiting
    lock.release()
    await asyncio.gather(stale, fresh)
    assert order == ["fresh", "stale"]
