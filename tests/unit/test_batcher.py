"""The dynamic batcher, tested without clocks: batches form by count, gated compute, a fake clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
import pytest

from fusionserve.service.batching import DynamicBatcher, Pending
from fusionserve.service.errors import DeadlineExceeded, NotReady, Overloaded
from fusionserve.service.metrics import Metrics
from fusionserve.service.model.config import Batching
from fusionserve.service.model.rows import DecodedRow

FAR = 1e9  # a deadline/delay that never comes in a test


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def row(i: int) -> DecodedRow:
    return DecodedRow(text_ids=np.array([i], dtype=np.int64))


def make(
    clock: FakeClock | None = None, metrics: Metrics | None = None, **batching: object
) -> DynamicBatcher:
    options = {"max_queue_delay_ms": FAR, **batching}
    return DynamicBatcher(
        Batching.model_validate(options),
        model="m",
        version="1",
        metrics=metrics,
        clock=clock or time.monotonic,
    )


def tokens(p: Pending) -> np.ndarray:
    assert p.row.text_ids is not None
    return p.row.text_ids


def ids(batch: list[Pending]) -> list[int]:
    return [int(tokens(p)[0]) for p in batch]


def answer(batch: list[Pending]) -> None:
    for p in batch:
        p.resolve({"y": tokens(p) * 10})


async def until(predicate: Callable[[], object], steps: int = 100) -> None:
    """Let other tasks run until ``predicate()`` holds (event-loop steps, not time)."""
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def submit_all(batcher: DynamicBatcher, n: int, start: int = 0) -> list[asyncio.Task]:
    return [asyncio.create_task(batcher.submit(row(start + i), FAR)) for i in range(n)]


async def test_exactly_max_batch_size_submits_form_one_full_batch() -> None:
    batcher = make(max_batch_size=4)
    gate = asyncio.Event()
    sizes: list[int] = []

    async def instance() -> None:
        batch = await batcher.next_batch()
        sizes.append(len(batch))
        await gate.wait()  # the gated "compute"
        answer(batch)

    worker = asyncio.create_task(instance())
    callers = submit_all(batcher, 4)
    await until(lambda: sizes)
    assert sizes == [4]
    assert batcher.inflight == 4 and batcher.queued == 0
    gate.set()
    results = await asyncio.gather(*callers)
    assert [int(r["y"][0]) for r in results] == [0, 10, 20, 30]
    await worker
    assert batcher.inflight == 0


async def test_rows_accumulate_while_the_instance_is_busy() -> None:
    batcher = make(max_batch_size=8, max_queue_delay_ms=0)
    gate = asyncio.Event()
    sizes: list[int] = []

    async def instance() -> None:
        for _ in range(2):
            batch = await batcher.next_batch()
            sizes.append(len(batch))
            await gate.wait()
            answer(batch)

    worker = asyncio.create_task(instance())
    first = submit_all(batcher, 1)
    await until(lambda: sizes == [1])
    later = submit_all(batcher, 3, start=1)
    await until(lambda: batcher.queued == 3)
    gate.set()
    await asyncio.gather(*first, *later, worker)
    assert sizes == [1, 3]


async def test_batch_waits_for_more_rows_until_the_oldest_row_is_due() -> None:
    clock = FakeClock()
    batcher = make(clock, max_batch_size=4, max_queue_delay_ms=10)
    callers = submit_all(batcher, 2)
    taking = asyncio.create_task(batcher.next_batch())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not taking.done()  # the fake clock has not moved: not due, not full
    clock.now = 0.011  # the oldest row has now waited longer than 10 ms
    batch = await taking
    assert ids(batch) == [0, 1]
    answer(batch)
    await asyncio.gather(*callers)


async def test_queue_full_is_overloaded_at_once() -> None:
    batcher = make(max_queue_size=2)
    callers = submit_all(batcher, 2)
    await until(lambda: batcher.queued == 2)
    with pytest.raises(Overloaded, match=r"queue of model m is full \(max_queue_size=2\)"):
        await batcher.submit(row(9), FAR)
    assert batcher.queued == 2
    for c in callers:
        c.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    assert batcher.queued == 0


async def test_row_expired_in_the_queue_is_never_computed() -> None:
    clock = FakeClock()
    batcher = make(clock, max_batch_size=2, max_queue_delay_ms=0)
    keep = asyncio.create_task(batcher.submit(row(1), deadline=100.0))
    expire = asyncio.create_task(batcher.submit(row(2), deadline=10.0))
    await until(lambda: batcher.queued == 2)
    clock.now = 50.0
    batch = await batcher.next_batch()
    assert ids(batch) == [1]
    with pytest.raises(DeadlineExceeded):
        await expire
    answer(batch)
    assert int((await keep)["y"][0]) == 10


async def test_deadline_already_past_is_refused_without_queueing() -> None:
    clock = FakeClock()
    clock.now = 5.0
    batcher = make(clock)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(row(1), deadline=4.0)
    assert batcher.queued == 0


async def test_caller_deadline_removes_the_row_from_the_queue() -> None:
    batcher = make()  # no instance takes anything: the caller's own timer fires
    with pytest.raises(DeadlineExceeded, match="model m passed in the queue"):
        await batcher.submit(row(1), deadline=time.monotonic() + 0.01)
    assert batcher.queued == 0


async def test_deadline_during_compute_answers_the_caller_and_drops_the_result() -> None:
    batcher = make(max_batch_size=1)
    caller = asyncio.create_task(batcher.submit(row(1), deadline=time.monotonic() + 0.3))
    batch = await batcher.next_batch()  # taken at once: the compute "hangs" past the deadline
    with pytest.raises(DeadlineExceeded, match="while its batch was computing"):
        await caller
    assert batcher.inflight == 1  # still owned by its instance until it settles
    answer(batch)
    assert batcher.inflight == 0


async def test_cancelled_caller_is_dropped_before_compute() -> None:
    batcher = make(max_batch_size=2, max_queue_delay_ms=0)
    keep, gone = submit_all(batcher, 2)
    await until(lambda: batcher.queued == 2)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert batcher.queued == 1
    batch = await batcher.next_batch()
    assert ids(batch) == [0]
    answer(batch)
    await keep


async def test_cancelled_caller_after_take_does_not_break_the_batch() -> None:
    batcher = make(max_batch_size=2)
    keep, gone = submit_all(batcher, 2)
    batch = await batcher.next_batch()
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    answer(batch)  # resolving a row nobody waits for is harmless
    assert int((await keep)["y"][0]) == 0
    assert batcher.inflight == 0


@pytest.mark.parametrize(
    ("queued", "sizes"),
    [(5, [4, 1]), (3, [2, 1]), (1, [1]), (9, [8, 1]), (7, [4, 2, 1])],
)
async def test_preferred_sizes_take_the_largest_that_fits(queued: int, sizes: list[int]) -> None:
    clock = FakeClock()
    batcher = make(clock, max_batch_size=8, max_queue_delay_ms=10, preferred_batch_sizes=[2, 4])
    callers = submit_all(batcher, queued)
    await until(lambda: batcher.queued == queued)
    clock.now = 1.0  # every row is due
    taken = []
    for _ in sizes:
        batch = await batcher.next_batch()
        taken.append(len(batch))
        answer(batch)
    assert taken == sizes
    await asyncio.gather(*callers)


async def test_close_refuses_new_rows_but_hands_out_queued_ones_at_once() -> None:
    batcher = make(max_batch_size=8)
    caller = submit_all(batcher, 1)[0]
    await until(lambda: batcher.queued == 1)
    batcher.close()
    with pytest.raises(NotReady):
        await batcher.submit(row(5), FAR)
    batch = await batcher.next_batch()  # not full, delay "never" due: close makes it due
    assert ids(batch) == [0]
    answer(batch)
    await caller


async def test_drain_waits_for_queued_and_inflight_rows() -> None:
    batcher = make(max_batch_size=2)
    callers = submit_all(batcher, 3)
    await until(lambda: batcher.queued == 3)
    draining = asyncio.create_task(batcher.drain(timeout=FAR))
    first = await batcher.next_batch()
    second = await batcher.next_batch()
    assert (len(first), len(second)) == (2, 1)
    answer(first)
    await asyncio.sleep(0)
    assert not draining.done()  # one row still in flight
    answer(second)
    assert await draining is True
    await asyncio.gather(*callers)


async def test_drain_timeout_fails_what_is_left_with_not_ready() -> None:
    batcher = make(max_batch_size=1)
    queued, running = submit_all(batcher, 2)
    await until(lambda: batcher.queued == 2)
    batch = await batcher.next_batch()  # taken, never answered
    assert await batcher.drain(timeout=0.01) is False
    for caller in (queued, running):
        with pytest.raises(NotReady):
            await caller
    answer(batch)  # a late answer is a no-op
    assert batcher.queued == 0 and batcher.inflight == 0


async def test_metrics_track_queue_depth_and_wait() -> None:
    metrics = Metrics()
    clock = FakeClock()
    batcher = make(clock, metrics, max_batch_size=2)
    callers = submit_all(batcher, 2)
    await until(lambda: batcher.queued == 2)
    labels = {"model": "m", "version": "1"}
    assert metrics.registry.get_sample_value("fusionserve_queue_depth", labels) == 2
    clock.now = 0.003
    answer(await batcher.next_batch())
    await asyncio.gather(*callers)
    assert metrics.registry.get_sample_value("fusionserve_queue_depth", labels) == 0
    assert metrics.registry.get_sample_value("fusionserve_queue_duration_seconds_count", labels) == 2
    assert batcher.queue_ns == 6_000_000
    assert metrics.registry.get_sample_value(
        "fusionserve_queue_duration_seconds_sum", labels
    ) == pytest.approx(0.006)


# -- arrival tracking -------------------------------------------------------------


def make_tracking(**batching: object) -> DynamicBatcher:
    options = {"max_queue_delay_ms": FAR, **batching}
    return DynamicBatcher(
        Batching.model_validate(options), model="m", version="1", clock=FakeClock(), track_arrivals=True
    )


async def test_lone_row_goes_at_once_when_nothing_is_announced() -> None:
    """With no row on its way, the (endless) queue delay is skipped."""
    b = make_tracking(max_batch_size=8)
    a = b.expect(1)
    caller = asyncio.create_task(b.submit(row(1), FAR, announcement=a))
    batch = await asyncio.wait_for(b.next_batch(), timeout=5)
    assert ids(batch) == [1] and b.expected == 0
    answer(batch)
    assert (await caller)["y"].tolist() == [10]


async def test_announced_rows_are_waited_for() -> None:
    b = make_tracking(max_batch_size=8)
    a = b.expect(2)
    first = asyncio.create_task(b.submit(row(1), FAR, announcement=a))
    former = asyncio.create_task(b.next_batch())
    await until(lambda: b.queued == 1)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not former.done(), "dispatched while an announced row was still decoding"
    second = asyncio.create_task(b.submit(row(2), FAR, announcement=a))
    batch = await asyncio.wait_for(former, timeout=5)
    assert ids(batch) == [1, 2]
    answer(batch)
    await asyncio.gather(first, second)


async def test_retracted_rows_release_the_batch() -> None:
    b = make_tracking(max_batch_size=8)
    a = b.expect(2)
    first = asyncio.create_task(b.submit(row(1), FAR, announcement=a))
    former = asyncio.create_task(b.next_batch())
    await until(lambda: b.queued == 1)
    b.withdraw(a)  # the other request failed to decode: its row is settled
    batch = await asyncio.wait_for(former, timeout=5)
    assert ids(batch) == [1]
    answer(batch)
    await first


async def test_rows_are_shared_between_free_instances() -> None:
    """Two free instances, four rows that are not a full batch: two rows each, not four on one."""
    b = make_tracking(max_batch_size=8)
    a = b.expect(4)
    formers = [asyncio.create_task(b.next_batch()) for _ in range(2)]
    callers = [asyncio.create_task(b.submit(row(i), FAR, announcement=a)) for i in range(4)]
    batches = await asyncio.wait_for(asyncio.gather(*formers), timeout=5)
    assert sorted(len(batch) for batch in batches) == [2, 2]
    assert sorted(ids(batches[0]) + ids(batches[1])) == [0, 1, 2, 3]
    for batch in batches:
        answer(batch)
    await asyncio.gather(*callers)


async def test_a_full_batch_is_never_split() -> None:
    b = make_tracking(max_batch_size=4)
    callers = submit_all(b, 4)
    formers = [asyncio.create_task(b.next_batch()) for _ in range(2)]
    first = await asyncio.wait_for(asyncio.wait(formers, return_when=asyncio.FIRST_COMPLETED), timeout=5)
    (done,) = first[0]
    assert len(done.result()) == 4
    answer(done.result())
    await asyncio.gather(*callers)
    for former in formers:
        former.cancel()


async def test_admission_is_all_or_nothing_and_counts_rows_on_their_way() -> None:
    b = make_tracking(max_batch_size=8, max_queue_size=4)
    b.admit(4)  # fits whole
    a = b.expect(3)  # three rows decoding count as queued
    with pytest.raises(Overloaded, match="max_queue_size=4"):
        b.admit(2)  # 3 + 2 > 4: refused whole, before any decoding
    b.admit(1)
    b.withdraw(a)
    b.close()
    with pytest.raises(NotReady):
        b.admit(1)


async def test_withdraw_settles_rows_never_submitted_and_exports_the_count() -> None:
    metrics = Metrics()
    b = DynamicBatcher(
        Batching.model_validate({"max_queue_delay_ms": FAR}),
        model="m",
        version="1",
        metrics=metrics,
        clock=FakeClock(),
        track_arrivals=True,
    )
    gauge = metrics.announced_rows.labels("m", "1")
    a = b.expect(2)
    assert b.expected == 2 and gauge._value.get() == 2
    caller = asyncio.create_task(b.submit(row(1), FAR, announcement=a))
    await until(lambda: b.queued == 1)
    assert b.expected == 1
    b.withdraw(a)  # the second row's caller went away before submitting
    b.withdraw(a)  # idempotent
    assert b.expected == 0 and gauge._value.get() == 0
    batch = await asyncio.wait_for(b.next_batch(), timeout=5)  # nothing on its way: goes at once
    answer(batch)
    await caller


async def test_the_instance_back_last_takes_the_next_lone_row() -> None:
    """Light load: the most recently used (warm) instance serves again; the idle one steps down."""
    b = make_tracking(max_batch_size=8)

    async def instance(name: str, served: list[str]) -> None:
        while True:
            batch = await b.next_batch()
            served.append(name)
            answer(batch)

    served: list[str] = []
    idle = asyncio.create_task(instance("idle", served))
    await until(lambda: b.free_for_a_lone_row())
    warm = asyncio.create_task(instance("warm", served))  # back from a compute, after "idle" began waiting

    def settled() -> bool:  # the instance back last forms; the other waits behind it
        return b._former_idle and b._forming.waiting == 1 and not b._forming.fresh_waiting

    await until(settled)
    for i in range(5):
        await asyncio.wait_for(b.submit(row(i), FAR, announcement=b.expect(1)), timeout=5)
        await until(settled)
    assert served == ["warm"] * 5
    for task in (idle, warm):
        task.cancel()
    await asyncio.gather(idle, warm, return_exceptions=True)
    assert not b._forming.locked()
