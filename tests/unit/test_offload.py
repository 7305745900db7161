"""offload(): a blocking call on a lane's thread, awaited from the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from fusionserve.service.lanes import Lanes
from fusionserve.service.offload import offload


@pytest.fixture
def lanes() -> Iterator[Lanes]:
    lanes = Lanes(1, "worker", "fs-test")
    yield lanes
    lanes.shutdown(wait=False)


async def test_result_and_thread_in_order(lanes: Lanes) -> None:
    name = await offload(lanes, lambda: threading.current_thread().name)
    assert name.startswith("worker")
    assert await offload(lanes, pow, 2, 10) == 1024
    seen = [await offload(lanes, lambda i=i: (i, threading.current_thread().name)) for i in range(3)]
    assert seen == [(0, "worker_0"), (1, "worker_0"), (2, "worker_0")]


async def test_exception_reaches_the_caller(lanes: Lanes) -> None:
    def boom() -> None:
        raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        await offload(lanes, boom)


async def test_work_dropped_at_shutdown_cancels_the_caller_and_more_is_refused(lanes: Lanes) -> None:
    started, release = threading.Event(), threading.Event()

    def hold() -> bool:
        started.set()
        return release.wait()

    busy = offload(lanes, hold)
    queued = offload(lanes, lambda: "never")
    assert started.wait(5)  # the lane took the first call before the shutdown
    lanes.shutdown(wait=False, cancel_futures=True)
    release.set()
    assert await busy is True
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(queued, timeout=5)
    with pytest.raises(RuntimeError, match="after shutdown"):
        offload(lanes, lambda: None)


async def test_a_caller_that_left_drops_the_result(lanes: Lanes) -> None:
    release = threading.Event()
    future = offload(lanes, release.wait)
    future.cancel()
    release.set()
    assert await offload(lanes, lambda: "still serving") == "still serving"
