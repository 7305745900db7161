"""The instances of one model version, each pulling batches from the batcher.

Every backend is one instance with its own single-thread executor, so a
session is only ever called from one thread and a busy instance never holds
up a free one. Each instance runs a supervised asyncio task:

    batch = await batcher.next_batch() → [decode deferred rows] → collate
    → backend.run (own thread) → split_outputs → resolve each row's future

A deferred row (a lone request for an idle model, ``DeferredRow``) is
decoded on the instance's thread first; one that fails to decode fails alone
with its own error, and the instance's ``timeout_ms`` covers its decode too.

Anything that goes wrong with one batch (collation, the runtime, a wrong row
count) fails exactly that batch's futures with :class:`InternalError` and the
loop carries on; a loop that dies anyway is logged and restarted. No future
is ever left hanging: a batch interrupted by :meth:`WorkerPool.stop` fails
with :class:`NotReady`.

Stuck instances: a batch that runs past its instance's ``timeout_ms`` fails
with :class:`NotReady` (503, "being replaced"), and the instance leaves the
pool: its thread cannot be killed, so it is abandoned (counted in
``fusionserve_stuck_threads``; its backend is closed if the call ever
returns) and a fresh backend from ``factory`` is loaded, warmed up and put in
its place (``fusionserve_instance_restarts_total{reason="timeout"}``). The
other instances keep serving meanwhile; with none healthy the version is not
ready, and the registry says why.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fusionserve.service.batching import DynamicBatcher, Pending
from fusionserve.service.errors import InternalError, NotReady
from fusionserve.service.lanes import Lanes
from fusionserve.service.metrics import Metrics
from fusionserve.service.model.config import ModelConfig
from fusionserve.service.model.feeds import collate, split_outputs
from fusionserve.service.model.rows import DecodedRow, DeferredRow, QueuedRow, RowOutputs
from fusionserve.service.offload import offload
from fusionserve.service.runtimes.base import Backend

log = logging.getLogger(__name__)

#: Backoff cap when an instance loop keeps dying (it should never die at all).
_MAX_RESTART_DELAY = 1.0

#: Loads a fresh backend for instance ``index`` (runs on a worker thread).
BackendFactory = Callable[[int], Backend]

#: Threads stuck in a call that never returned, over every pool of the process.
_stuck_lock = threading.Lock()
_stuck_threads = 0


def stuck_threads() -> int:
    """Compute threads abandoned inside a call that has not returned (process-wide)."""
    return _stuck_threads


def _count_stuck(delta: int) -> None:
    global _stuck_threads
    with _stuck_lock:
        _stuck_threads += delta


class InstanceStuck(Exception):
    """A batch ran past its instance's ``timeout_ms``."""


class _Call:
    """One compute call on an instance's thread; knows when it has returned."""

    def __init__(self) -> None:
        self.returned = threading.Event()
        self.on_return: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def finish(self) -> None:
        with self._lock:
            self.returned.set()
            callback, self.on_return = self.on_return, None
        if callback is not None:
            callback()

    def when_returned(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when the call returns (at once if it has)."""
        with self._lock:
            if not self.returned.is_set():
                self.on_return = callback
                return
        callback()


@dataclass(frozen=True)
class Timing:
    """What one batch cost: runtime seconds and padding ratio per modality."""

    seconds: float
    padding: dict[str, float]


@dataclass(frozen=True)
class Computed:
    """What one batch gave: outputs of the rows that ran, and why the others did not."""

    #: One entry per row that ran, in batch order (rows in ``failed`` skipped).
    outputs: list[RowOutputs]
    #: None when no row was left to run (every deferred row failed to decode).
    timing: Timing | None
    #: Batch index -> the error of a deferred row that could not be decoded.
    failed: dict[int, BaseException]


@dataclass
class PoolStats:
    """Cumulative counters of served batches (V2 statistics' ``execution_count``, ``compute_infer``)."""

    execution_count: int = 0
    compute_ns: int = 0


@dataclass(eq=False)
class Instance:
    """One backend, its thread and its task."""

    index: int
    backend: Backend
    executor: Lanes
    timeout_s: float | None = None
    task: asyncio.Task[None] | None = None
    batches: int = 0
    failures: int = 0
    restarts: int = 0
    #: False while the instance is stuck or being replaced.
    healthy: bool = True
    #: The compute call running on the instance's thread, if any.
    call: _Call | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return "cpu" if self.backend.device == "cpu" else "gpu"


def _decode_deferred(rows: Sequence[QueuedRow]) -> tuple[list[DecodedRow], dict[int, BaseException]]:
    """Decode the batch's deferred rows here, on the instance thread; a row that fails fails alone."""
    decoded: list[DecodedRow] = []
    failed: dict[int, BaseException] = {}
    for index, row in enumerate(rows):
        if isinstance(row, DeferredRow):
            try:
                row.decoded = row.decode(row.raw)
            except Exception as exc:  # bad input or over cost: that row's caller gets it
                failed[index] = exc
                continue
            decoded.append(row.decoded)
        else:
            decoded.append(row)
    return decoded, failed


def _collate_and_run(
    backend: Backend, rows: list[DecodedRow], config: ModelConfig
) -> tuple[dict[str, np.ndarray], Timing]:
    """Feeds for the batch, then the runtime; only the runtime counts as compute time."""
    feeds, padding = collate(rows, config)
    start = time.perf_counter()
    outputs = backend.run(feeds)
    return outputs, Timing(time.perf_counter() - start, padding)


class WorkerPool:
    """Runs the batches of one model version on its instances."""

    def __init__(
        self,
        batcher: DynamicBatcher,
        backends: list[Backend],
        config: ModelConfig,
        *,
        model: str,
        version: str,
        metrics: Metrics | None = None,
        timeouts_s: list[float | None] | None = None,
        factory: BackendFactory | None = None,
    ) -> None:
        if not backends:
            raise ValueError("a worker pool needs at least one backend")
        self.batcher = batcher
        self.config = config
        self.model = model
        self.version = version
        self._metrics = metrics
        self._factory = factory
        timeouts = timeouts_s or [None] * len(backends)
        self.instances = [
            Instance(i, b, self._executor(i), timeout_s=timeouts[i]) for i, b in enumerate(backends)
        ]
        self._stopping = False
        #: Threads of this pool abandoned inside a call that never returned.
        self.stuck = 0
        self._export_health()
        #: Served batches only; warm-up is not counted.
        self.stats = PoolStats()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Launch one supervised task per instance."""
        for inst in self.instances:
            if inst.task is None:
                inst.task = asyncio.create_task(
                    self._supervise(inst), name=f"{self.model}-v{self.version}-i{inst.index}"
                )
                self._count_instance(inst, +1)

    def _executor(self, index: int) -> Lanes:
        return Lanes(1, f"{self.model}-v{self.version}-i{index}", "fs-model")

    @property
    def healthy(self) -> int:
        """Instances able to take a batch now."""
        return sum(1 for inst in self.instances if inst.healthy)

    def _export_health(self) -> None:
        if self._metrics is not None:
            self._metrics.healthy_instances.labels(self.model, self.version).set(self.healthy)

    async def stop(self, timeout_s: float | None = None) -> bool:
        """Stop the instances: call after ``batcher.drain`` so nothing is lost.

        Cancels the tasks (a batch still running fails with ``NotReady``),
        waits up to ``timeout_s`` in all for each thread to finish its call,
        then closes the backends. A thread still inside a call after that is
        abandoned (it cannot be killed; its backend is closed if it ever
        returns). Returns False when one was.
        """
        self._stopping = True
        tasks = [inst.task for inst in self.instances if inst.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        clean = True
        for inst in self.instances:
            if inst.task is not None:
                self._count_instance(inst, -1)
                inst.task = None
            call = inst.call
            if call is not None and not call.returned.is_set():
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not await _wait_event(call.returned, left):
                    log.error(
                        "model %s v%s: instance %d is still inside a call; abandoning its thread",
                        self.model,
                        self.version,
                        inst.index,
                    )
                    self._abandon(inst, call)
                    clean = False
                    continue
            inst.executor.shutdown(wait=False)
            self._close_backend(inst.backend, inst.index)
        self._export_health()
        return clean

    def _close_backend(self, backend: Backend, index: int) -> None:
        try:
            backend.close()
        except Exception:
            log.exception("model %s v%s: instance %d failed to close", self.model, self.version, index)

    def _abandon(self, inst: Instance, call: _Call) -> None:
        """Leave a thread stuck in ``call``; close its backend if the call ever returns."""
        inst.healthy = False
        self.stuck += 1
        _count_stuck(+1)
        if self._metrics is not None:
            self._metrics.stuck_threads.set(stuck_threads())
        backend, index, executor = inst.backend, inst.index, inst.executor
        executor.shutdown(wait=False)

        def returned() -> None:
            self.stuck -= 1
            _count_stuck(-1)
            if self._metrics is not None:
                self._metrics.stuck_threads.set(stuck_threads())
            self._close_backend(backend, index)

        call.when_returned(returned)

    def _count_instance(self, inst: Instance, delta: int) -> None:
        if self._metrics is not None:
            self._metrics.instances.labels(self.model, self.version, inst.kind).inc(delta)

    # -- the instance loop -------------------------------------------------

    async def _supervise(self, inst: Instance) -> None:
        """Keep the instance's loop alive: an escaped exception is logged, then it restarts.

        A stuck instance is replaced by a fresh backend before its loop goes on.
        """
        delay = 0.0
        while not self._stopping:
            try:
                await self._serve(inst)
            except asyncio.CancelledError:
                raise
            except InstanceStuck:
                await self._replace(inst)
            except Exception:
                inst.restarts += 1
                if self._metrics is not None:
                    self._metrics.instance_restarts.labels(self.model, "loop_died").inc()
                log.exception(
                    "model %s v%s: instance %d loop died; restarting", self.model, self.version, inst.index
                )
                delay = min(max(delay * 2, 0.01), _MAX_RESTART_DELAY)
                await asyncio.sleep(delay)

    async def _serve(self, inst: Instance) -> None:
        while True:
            batch = await self.batcher.next_batch()
            await self._run_batch(inst, batch)

    async def _run_batch(self, inst: Instance, batch: list[Pending]) -> None:
        """Compute one batch and settle every one of its futures, whatever happens."""
        try:
            await self._compute_and_settle(inst, batch)
        except asyncio.CancelledError:
            self._fail(batch, NotReady, f"model {self.model} version {self.version} stopped during compute")
            raise
        finally:  # a fault past the compute (metrics, a bug) must not leave a caller waiting
            self._fail(
                [p for p in batch if not p.settled], InternalError, f"model {self.model}: internal fault"
            )

    async def _replace(self, inst: Instance) -> None:
        """Swap a stuck instance's backend for a fresh, warmed-up one (retrying with backoff)."""
        inst.healthy = False
        self._export_health()
        if inst.call is not None and not inst.call.returned.is_set():
            self._abandon(inst, inst.call)
            inst.call = None
        inst.restarts += 1
        if self._metrics is not None:
            self._metrics.instance_restarts.labels(self.model, "timeout").inc()
        factory = self._factory
        if factory is None:
            log.error("model %s v%s: instance %d cannot be replaced", self.model, self.version, inst.index)
            await asyncio.Event().wait()  # out of the pool until stop()
            return
        delay = 0.1
        while not self._stopping:
            executor = self._executor(inst.index)
            try:
                backend = await offload(executor, factory, inst.index)
            except Exception as exc:
                executor.shutdown(wait=False)
                log.error(
                    "model %s v%s: replacing instance %d failed: %s",
                    self.model,
                    self.version,
                    inst.index,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            inst.backend, inst.executor = backend, executor
            try:
                await self._warm_instance(inst)
            except InstanceStuck:
                if inst.call is not None:
                    self._abandon(inst, inst.call)
                inst.call = None
                continue
            except Exception as exc:
                log.error(
                    "model %s v%s: warm-up of the replacement of instance %d failed: %s",
                    self.model,
                    self.version,
                    inst.index,
                    exc,
                )
                executor.shutdown(wait=False)
                self._close_backend(backend, inst.index)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            inst.healthy = True
            self._export_health()
            log.warning(
                "model %s v%s: instance %d replaced and serving", self.model, self.version, inst.index
            )
            return

    async def _compute_and_settle(self, inst: Instance, batch: list[Pending]) -> None:
        rows = [p.row for p in batch]
        try:
            try:
                computed = await self._compute(inst, rows)
            finally:  # before any caller resumes: its cost is no longer held
                self._release_deferred_cost(rows)
        except asyncio.CancelledError:
            raise
        except InstanceStuck as exc:
            inst.failures += 1
            log.error("model %s v%s: %s", self.model, self.version, exc)
            self._fail(batch, NotReady, f"model {self.model}: {exc}")
            raise
        except Exception as exc:
            inst.failures += 1
            if self._metrics is not None:
                self._metrics.instance_failures.labels(
                    self.model, self.version, self._metrics.instance_label(inst.index)
                ).inc()
            log.error(
                "model %s v%s: instance %d failed a batch of %d: %s",
                self.model,
                self.version,
                inst.index,
                len(batch),
                exc,
                exc_info=exc,
            )
            message = exc.message if isinstance(exc, InternalError) else f"{type(exc).__name__}: {exc}"
            self._fail(
                batch, InternalError, f"model {self.model} failed on a batch of {len(batch)}: {message}"
            )
            return
        outputs = iter(computed.outputs)
        for index, pending in enumerate(batch):
            if index in computed.failed:
                pending.fail(computed.failed[index])
            else:
                pending.resolve(next(outputs))
        if computed.timing is not None:
            inst.batches += 1
            self.stats.execution_count += 1
            self.stats.compute_ns += int(computed.timing.seconds * 1e9)
            self._observe(inst, len(batch) - len(computed.failed), computed.timing)

    def _release_deferred_cost(self, rows: Sequence[QueuedRow]) -> None:
        """Give back the cost deferred rows reserved while decoding on the instance thread.

        The pool holds it, not the caller: a caller that left while its row
        was decoding would otherwise never give it back. (A decode still
        running in a thread abandoned as stuck keeps what it reserves.)
        """
        for row in rows:
            if isinstance(row, DeferredRow) and row.decoded is not None and row.decoded.reserved:
                self.batcher.cost_gate.release(row.decoded.reserved)
                row.decoded.reserved = 0.0

    @staticmethod
    def _fail(batch: list[Pending], kind: type[InternalError | NotReady], message: str) -> None:
        for pending in batch:
            pending.fail(kind(message))

    async def _compute(self, inst: Instance, rows: Sequence[QueuedRow]) -> Computed:
        """Decode deferred rows, collate and run on the instance's thread, split (raises on any fault).

        Collating (stacking and padding the rows: a copy of every input) runs
        on the instance thread, not the event loop, which is each process's
        bottleneck: with 128x128 images it is a few hundred µs per batch.
        Raises :class:`InstanceStuck` when the call outlives the instance's
        ``timeout_s``; the call is left running (``inst.call`` says when it returns).
        """
        call = inst.call = _Call()
        backend = inst.backend
        config = self.config

        def run() -> tuple[dict[str, np.ndarray] | None, Timing | None, dict[int, BaseException]]:
            try:
                decoded, failed = _decode_deferred(rows)
                if not decoded:
                    return None, None, failed
                outputs, timing = _collate_and_run(backend, decoded, config)
                return outputs, timing, failed
            finally:
                call.finish()

        future = offload(inst.executor, run)
        if inst.timeout_s is None:
            outputs, timing, failed = await future
        else:
            try:
                outputs, timing, failed = await asyncio.wait_for(future, inst.timeout_s)
            except asyncio.TimeoutError:  # TimeoutError misses it on Python 3.10
                raise InstanceStuck(
                    f"instance {inst.index} did not finish a batch of {len(rows)} within "
                    f"timeout_ms={inst.timeout_s * 1000:g}; the instance is being replaced, retry"
                ) from None
        inst.call = None
        ran = len(rows) - len(failed)
        split = split_outputs(outputs, ran) if outputs is not None else []
        return Computed(split, timing, failed)

    def _observe(self, inst: Instance, size: int, timing: Timing) -> None:
        """Record a served batch (warm-up batches are not recorded)."""
        m = self._metrics
        if m is None:
            return
        m.child(m.batch_size, self.model, self.version).observe(size)
        m.child(m.compute_seconds, self.model, self.version).observe(timing.seconds)
        m.child(m.instance_busy_seconds, self.model, self.version, m.instance_label(inst.index)).inc(
            timing.seconds
        )
        for modality, ratio in timing.padding.items():
            m.child(m.padding_ratio, self.model, self.version, modality).observe(ratio)

    # -- warm-up -----------------------------------------------------------

    async def warmup(self) -> None:
        """Run synthetic batches through every instance; raises if any fails.

        One row with every modality, then one row per modality with only that
        one (exercising masks and padding); the registry marks the version
        ready only after this succeeds. Warm-up batches stay out of the
        metrics, so the batch-size histogram shows only served traffic.
        """
        for inst in self.instances:
            try:
                await self._warm_instance(inst)
            except Exception as exc:
                raise InternalError(
                    f"warm-up of model {self.model} version {self.version} failed on instance "
                    f"{inst.index} ({inst.backend.device}): {exc}",
                    model=self.model,
                ) from exc

    async def _warm_instance(self, inst: Instance) -> None:
        batches = [[self._synthetic(self._modalities())], [self._synthetic([m]) for m in self._modalities()]]
        for rows in batches:
            await self._compute(inst, rows)
        await self._calibrate(inst, batches[0])

    async def _calibrate(self, inst: Instance, rows: list[DecodedRow]) -> None:
        """Let a backend with a choice of thread counts measure which one a lone batch wants."""
        calibrate = getattr(inst.backend, "calibrate", None)
        if calibrate is None:
            return
        config = self.config
        result = await offload(inst.executor, lambda: calibrate(collate(rows, config)[0]))
        if result is not None:
            log.info(
                "model %s v%s instance %d: a lone batch takes %.3f ms on one thread, %.3f ms on "
                "every core (median of %d pairs): %s",
                self.model,
                self.version,
                inst.index,
                result.narrow_s * 1000,
                result.wide_s * 1000,
                result.pairs,
                "lone batches run on every core" if result.wide_is_faster else "stays on one thread",
            )

    def _modalities(self) -> list[str]:
        return [m.value for m in self.config.modalities.present()]

    def _synthetic(self, modalities: list[str]) -> DecodedRow:
        spec = self.config.modalities
        row = DecodedRow()
        if "image" in modalities and spec.image is not None:
            row.image = np.full((spec.image.height, spec.image.width, 3), 128, dtype=np.uint8)
        if "audio" in modalities and spec.audio is not None:
            n = min(spec.audio.max_samples, spec.audio.sample_rate)
            row.audio = (0.1 * np.sin(np.arange(n, dtype=np.float32) * 0.05)).astype(np.float32)
        if "text" in modalities and spec.text is not None:
            row.text_ids = np.ones(min(spec.text.max_tokens, 8), dtype=np.int64)  # [UNK] ids
        return row


async def _wait_event(event: threading.Event, timeout_s: float | None) -> bool:
    """Wait for a thread-side event without blocking the loop or holding a thread."""
    step = 0.005
    waited = 0.0
    while not event.is_set():
        if timeout_s is not None and waited >= timeout_s:
            return False
        await asyncio.sleep(step)
        waited += step
        step = min(step * 2, 0.1)
    return True
