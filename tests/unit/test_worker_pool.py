"""The worker pool with fake backends: routing, failure isolation, several instances, lifecycle."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from fusionserve.service.batching import DynamicBatcher
from fusionserve.service.errors import InternalError, InvalidInput, NotReady
from fusionserve.service.metrics import Metrics
from fusionserve.service.model.config import Batching, ModelConfig
from fusionserve.service.model.rows import DecodedRow, DeferredRow, RawInputs
from fusionserve.service.workers import WorkerPool

FAR = 1e9
CONFIG = ModelConfig.model_validate(
    {
        "name": "m",
        "task": "classify",
        "modalities": {
            "image": {"height": 2, "width": 2},
            "audio": {"sample_rate": 100, "max_samples": 50, "min_samples": 4},
            "text": {"max_tokens": 8},
        },
        "outputs": [{"name": "class_logits", "kind": "logits", "dims": 2}],
    }
)
LABELS = {"model": "m", "version": "1"}


class EchoBackend:
    """Identity-like model: row i answers [its first token, the instance's index]."""

    input_names = CONFIG.graph_input_names()
    output_names = ["class_logits"]
    device = "cpu"

    def __init__(self, index: int = 0, gate: threading.Event | None = None) -> None:
        self.index = index
        self.gate = gate
        self.entered = threading.Event()
        self.calls: list[dict[str, np.ndarray]] = []
        self.fail_on_token: int | None = None
        self.drop_a_row = False
        self.closed = False

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(feeds)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        ids = feeds["text_ids"][:, 0]
        if self.fail_on_token is not None and self.fail_on_token in ids:
            raise RuntimeError("boom from the runtime")
        out = np.stack([ids.astype(np.float32), np.full(len(ids), self.index, np.float32)], axis=1)
        return {"class_logits": out[:-1] if self.drop_a_row else out}

    def close(self) -> None:
        self.closed = True


def row(token: int, length: int = 1) -> DecodedRow:
    return DecodedRow(text_ids=np.full(length, token, dtype=np.int64))


def setup(
    backends: list[EchoBackend], metrics: Metrics | None = None, **batching: object
) -> tuple[DynamicBatcher, WorkerPool]:
    batcher = DynamicBatcher(
        Batching.model_validate({"max_queue_delay_ms": 0, **batching}),
        model="m",
        version="1",
        metrics=metrics,
    )
    pool = WorkerPool(batcher, list(backends), CONFIG, model="m", version="1", metrics=metrics)
    return batcher, pool


async def shutdown(batcher: DynamicBatcher, pool: WorkerPool) -> None:
    await batcher.drain(timeout=30)
    await pool.stop()


async def test_each_row_gets_its_own_output() -> None:
    gate = threading.Event()
    backend = EchoBackend(gate=gate)
    batcher, pool = setup([backend], max_batch_size=4, max_queue_delay_ms=FAR)
    pool.start()
    callers = [asyncio.create_task(batcher.submit(row(t, length=t), FAR)) for t in (3, 1, 4, 2)]
    await asyncio.to_thread(backend.entered.wait, 30)
    gate.set()
    results = await asyncio.gather(*callers)
    assert [r["class_logits"][0] for r in results] == [3, 1, 4, 2]
    assert len(backend.calls) == 1  # one full batch of 4, padded to the longest text
    assert backend.calls[0]["text_ids"].shape == (4, 4)
    await shutdown(batcher, pool)


async def test_a_raising_instance_fails_only_its_batch_and_keeps_serving() -> None:
    metrics = Metrics()
    backend = EchoBackend()
    backend.fail_on_token = 666
    batcher, pool = setup([backend], metrics, max_batch_size=2, max_queue_delay_ms=FAR)
    pool.start()
    bad = await asyncio.gather(
        batcher.submit(row(666), FAR), batcher.submit(row(1), FAR), return_exceptions=True
    )
    assert all(isinstance(e, InternalError) for e in bad)
    assert all("boom from the runtime" in str(e) for e in bad)
    good = await asyncio.gather(batcher.submit(row(2), FAR), batcher.submit(row(3), FAR))
    assert [r["class_logits"][0] for r in good] == [2, 3]
    assert pool.instances[0].failures == 1
    assert pool.instances[0].restarts == 0  # the loop itself never died
    failures = {**LABELS, "model_instance": "0"}
    assert metrics.registry.get_sample_value("fusionserve_instance_failures_total", failures) == 1
    assert metrics.registry.get_sample_value("fusionserve_batch_size_count", LABELS) == 1
    await shutdown(batcher, pool)


async def test_wrong_row_count_is_an_internal_error() -> None:
    backend = EchoBackend()
    backend.drop_a_row = True
    batcher, pool = setup([backend], max_batch_size=2, max_queue_delay_ms=FAR)
    pool.start()
    results = await asyncio.gather(
        batcher.submit(row(1), FAR), batcher.submit(row(2), FAR), return_exceptions=True
    )
    for exc in results:
        assert isinstance(exc, InternalError)
        assert "model returned 1 rows for a batch of 2" in str(exc)
    await shutdown(batcher, pool)


async def until_one_entered(backends: list[EchoBackend], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(b.entered.is_set() for b in backends):
        assert time.monotonic() < deadline, "no instance took the row"
        await asyncio.sleep(0.005)


async def test_a_free_instance_takes_work_while_another_is_busy() -> None:
    gates = [threading.Event(), threading.Event()]
    backends = [EchoBackend(0, gates[0]), EchoBackend(1, gates[1])]
    metrics = Metrics()
    batcher, pool = setup(backends, metrics, max_batch_size=1)
    pool.start()
    assert metrics.registry.get_sample_value("fusionserve_instances", {**LABELS, "kind": "cpu"}) == 2
    first = asyncio.create_task(batcher.submit(row(10), FAR))
    await until_one_entered(backends)  # whichever instance took it is now busy
    busy = next(i for i, b in enumerate(backends) if b.entered.is_set())
    free = 1 - busy
    second = asyncio.create_task(batcher.submit(row(20), FAR))
    await asyncio.to_thread(backends[free].entered.wait, 30)  # so the other took the next row
    gates[free].set()
    assert (await second)["class_logits"].tolist() == [20, free]
    gates[busy].set()
    assert (await first)["class_logits"].tolist() == [10, busy]
    await shutdown(batcher, pool)
    assert metrics.registry.get_sample_value("fusionserve_instances", {**LABELS, "kind": "cpu"}) == 0
    assert all(b.closed for b in backends)


async def test_padding_and_compute_metrics_are_recorded() -> None:
    metrics = Metrics()
    batcher, pool = setup([EchoBackend()], metrics, max_batch_size=2, max_queue_delay_ms=FAR)
    pool.start()
    await asyncio.gather(batcher.submit(row(1, length=1), FAR), batcher.submit(row(2, length=3), FAR))
    text = {**LABELS, "modality": "text"}
    assert metrics.registry.get_sample_value("fusionserve_padding_ratio_count", text) == 1
    assert metrics.registry.get_sample_value("fusionserve_padding_ratio_sum", text) == pytest.approx(2 / 6)
    assert metrics.registry.get_sample_value("fusionserve_compute_duration_seconds_count", LABELS) == 1
    assert metrics.registry.get_sample_value("fusionserve_batch_size_sum", LABELS) == 2
    assert pool.stats.execution_count == 1
    await shutdown(batcher, pool)


async def test_a_dying_loop_is_restarted() -> None:
    batcher, pool = setup([EchoBackend()])
    real = batcher.next_batch
    broken = {"left": 1}

    async def flaky() -> list:
        if broken["left"]:
            broken["left"] -= 1
            raise RuntimeError("unexpected")
        return await real()

    batcher.next_batch = flaky  # type: ignore[method-assign]
    pool.start()
    assert (await batcher.submit(row(5), FAR))["class_logits"][0] == 5
    assert pool.instances[0].restarts == 1
    await shutdown(batcher, pool)


async def test_stop_during_compute_fails_the_batch_with_not_ready() -> None:
    gate = threading.Event()
    backend = EchoBackend(gate=gate)
    batcher, pool = setup([backend])
    pool.start()
    caller = asyncio.create_task(batcher.submit(row(1), FAR))
    await asyncio.to_thread(backend.entered.wait, 30)
    stopping = asyncio.create_task(pool.stop())
    with pytest.raises(NotReady):
        await caller
    gate.set()  # let the thread finish so the executor can shut down
    await stopping
    assert backend.closed


async def test_drain_then_stop_answers_everything_queued() -> None:
    gate = threading.Event()
    backend = EchoBackend(gate=gate)
    batcher, pool = setup([backend], max_batch_size=2)
    pool.start()
    callers = [asyncio.create_task(batcher.submit(row(t), FAR)) for t in range(5)]
    await asyncio.to_thread(backend.entered.wait, 30)
    draining = asyncio.create_task(batcher.drain(timeout=30))
    await asyncio.sleep(0)  # drain has started: the batcher is closed
    assert batcher.closed
    with pytest.raises(NotReady):
        await batcher.submit(row(9), FAR)
    gate.set()
    assert await draining is True
    await pool.stop()
    assert [(await c)["class_logits"][0] for c in callers] == [0, 1, 2, 3, 4]


async def test_warmup_runs_every_instance_with_full_and_single_modality_rows() -> None:
    backends = [EchoBackend(0), EchoBackend(1)]
    metrics = Metrics()
    _, pool = setup(backends, metrics)
    await pool.warmup()
    # warm-up is not traffic: the batch-size histogram stays empty
    assert metrics.registry.get_sample_value("fusionserve_batch_size_count", LABELS) is None
    assert pool.stats.execution_count == 0
    for backend in backends:
        full, singles = backend.calls
        assert full["image_mask"].tolist() == [True]
        assert full["audio_mask"].tolist() == [True] and full["text_mask"].tolist() == [True]
        assert singles["image_mask"].tolist() == [True, False, False]
        assert singles["audio_mask"].tolist() == [False, True, False]
        assert singles["text_mask"].tolist() == [False, False, True]
    await pool.stop()


async def test_warmup_failure_raises_naming_the_instance() -> None:
    backends = [EchoBackend(0), EchoBackend(1)]
    backends[1].drop_a_row = True
    _, pool = setup(backends)
    with pytest.raises(InternalError, match="instance 1"):
        await pool.warmup()
    await pool.stop()


async def test_a_fault_after_compute_still_answers_and_the_pool_keeps_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batcher, pool = setup([EchoBackend()])

    def broken_metrics(*_: object) -> None:
        raise RuntimeError("metrics bug")

    monkeypatch.setattr(pool, "_observe", broken_metrics)
    pool.start()
    assert (await batcher.submit(row(7), FAR))["class_logits"][0] == 7
    assert (await batcher.submit(row(8), FAR))["class_logits"][0] == 8
    assert pool.instances[0].restarts >= 1
    await shutdown(batcher, pool)


def deferred(token: int, *, fails: Exception | None = None, reserve: float = 0.0) -> DeferredRow:
    """A lone row the instance decodes itself; records the thread it was decoded on."""

    def decode(raw: RawInputs) -> DecodedRow:
        deferred_threads.append(threading.current_thread().name)
        if fails is not None:
            raise fails
        decoded = row(int(raw.text or 0))
        decoded.reserved = reserve
        return decoded

    return DeferredRow(RawInputs(text=str(token)), decode)


deferred_threads: list[str] = []


async def test_a_deferred_row_is_decoded_and_computed_on_the_instance_thread() -> None:
    metrics = Metrics()
    backend = EchoBackend()
    batcher, pool = setup([backend], metrics, max_batch_size=4)
    batcher.cost_gate.reserve(2.5)  # what the row's decode reserves, as the preprocessor would
    pool.start()
    lone = deferred(7, reserve=2.5)
    deferred_threads.clear()
    result = await batcher.submit(lone, FAR)
    assert result["class_logits"][0] == 7
    assert lone.decoded is not None and lone.decoded.text_ids is not None
    assert deferred_threads == ["m-v1-i0_0"]  # the instance's own lane, not a decode thread
    assert batcher.cost_gate.held == 0  # the pool gave the row's cost back before answering
    assert lone.decoded.reserved == 0  # so the caller's release cannot count it twice
    assert pool.stats.execution_count == 1
    assert metrics.registry.get_sample_value("fusionserve_batch_size_count", LABELS) == 1
    await shutdown(batcher, pool)


async def test_a_deferred_row_that_fails_to_decode_fails_alone_and_runs_nothing() -> None:
    metrics = Metrics()
    backend = EchoBackend()
    batcher, pool = setup([backend], metrics, max_batch_size=4, max_queue_delay_ms=FAR)
    pool.start()
    bad_input = InvalidInput("not an image")
    results = await asyncio.gather(  # four rows: one full batch
        batcher.submit(row(1), FAR),
        batcher.submit(deferred(0, fails=bad_input), FAR),
        batcher.submit(row(2), FAR),
        batcher.submit(deferred(3), FAR),
        return_exceptions=True,
    )
    assert results[1] is bad_input  # the caller's own error (a 400), not an instance fault
    assert [r["class_logits"][0] for r in (results[0], results[2], results[3])] == [1, 2, 3]  # type: ignore[index]
    assert pool.instances[0].failures == 0
    assert len(backend.calls) == 1 and backend.calls[0]["text_ids"].shape[0] == 3
    await shutdown(batcher, pool)
    # A batch whose only row fails to decode runs nothing and counts no execution.
    backend = EchoBackend()
    batcher, pool = setup([backend], metrics, max_batch_size=4)
    pool.start()
    with pytest.raises(InvalidInput):
        await asyncio.wait_for(batcher.submit(deferred(0, fails=InvalidInput("bad")), FAR), 10)
    assert pool.stats.execution_count == 0 and not backend.calls
    assert metrics.registry.get_sample_value("fusionserve_batch_size_count", LABELS) == 1
    await shutdown(batcher, pool)


async def test_the_batcher_offers_lone_rows_only_when_an_instance_waits_and_nothing_else_is_coming() -> None:
    batcher = DynamicBatcher(
        Batching.model_validate({"max_queue_delay_ms": FAR}), model="m", version="1", track_arrivals=True
    )
    pool = WorkerPool(batcher, [EchoBackend()], CONFIG, model="m", version="1")
    assert not batcher.free_for_a_lone_row()  # no instance waiting yet
    pool.start()
    await asyncio.sleep(0.01)
    assert batcher.free_for_a_lone_row()
    announcement = batcher.expect(1)  # another request is decoding
    assert not batcher.free_for_a_lone_row()
    batcher.withdraw(announcement)
    assert batcher.free_for_a_lone_row()
    untracked = DynamicBatcher(Batching.model_validate({}), model="m", version="1")
    assert not untracked.free_for_a_lone_row()  # its rows wait max_queue_delay_ms: never alone
    await shutdown(batcher, pool)
