"""offload(): a blocking call on a worker thread, awaited from the loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from fusionserve.service.lanes import Lanes
from fusionserve.service.offload import offload


async def test_result_and_thread() -> None:
    with ThreadPoolExecutor(1, thread_name_prefix="worker") as pool:
        name = await offload(pool, lambda: threading.current_thread().name)
        assert name.startswith("worker")
        assert await offload(pool, pow, 2, 10) == 1024


async def test_exception_reaches_the_caller() -> None:
    def boom() -> None:
        raise ValueError("bad row")

    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="bad row"):
        await offload(pool, boom)


async def test_work_dropped_at_shutdown_cancels_the_caller() -> None:
    release = threading.Event()
    pool = ThreadPoolExecutor(1)
    busy = offload(pool, release.wait)
    queued = offload(pool, lambda: "never")
    pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    assert await busy is True
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(queued, timeout=5)


async def test_a_caller_that_left_drops_the_result() -> None:
    release = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        future = offload(pool, release.wait)
        future.cancel()
        release.set()
        assert await offload(pool, lambda: "still serving") == "still serving"


async def test_lanes_run_work_in_order_on_named_threads() -> None:
    lanes = Lanes(1, "lane", "fs-test")
    try:
        seen = [await offload(lanes, lambda i=i: (i, threading.current_thread().name)) for i in range(3)]
        assert seen == [(0, "lane_0"), (1, "lane_0"), (2, "lane_0")]
        with pytest.raises(ValueError, match="bad row"):
            await offload(lanes, _raise_bad_row)
    finally:
        lanes.shutdown()


async def test_lanes_shutdown_with_cancel_drops_queued_work_and_refuses_more() -> None:
    started, release = threading.Event(), threading.Event()
    lanes = Lanes(1, "lane", "fs-test")

    def hold() -> bool:
        started.set()
        return release.wait()

    busy = offload(lanes, hold)
    queued = offload(lanes, lambda: "never")
    assert started.wait(5)
    lanes.shutdown(wait=False, cancel_futures=True)
    release.set()
    assert await busy is True
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(queued, timeout=5)
    with pytest.raises(RuntimeError, match="after shutdown"):
        offload(lanes, lambda: None)


def _raise_bad_row() -> None:
    raise ValueError("bad row")
