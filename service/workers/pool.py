"""The instances of one model version, each pulling batches from the batcher.

Every backend is one instance with its own single-thread executor, so a
session is only ever called from one thread and a busy instance never holds
up a free one. Each instance runs a supervised asyncio task:

    batch = await batcher.next_batch() → collate → backend.run (own thread)
    → split_outputs → resolve each row's future

Anything that goes wrong with one batch (collation, the runtime, a wrong row
count) fails exactly that batch's futures with :class:`InternalError` and the
loop carries on; a loop that dies anyway is logged and restarted. No future
is ever left hanging: a batch interrupted by :meth:`WorkerPool.stop` fails
with :class:`NotReady`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.batching import DynamicBatcher, Pending
from service.errors import InternalError, NotReady
from service.metrics import Metrics
from service.model.config import ModelConfig
from service.model.feeds import collate, split_outputs
from service.model.rows import DecodedRow, RowOutputs
from service.offload import offload
from service.runtimes.base import Backend

log = logging.getLogger(__name__)

#: Backoff cap when an instance loop keeps dying (it should never die at all).
_MAX_RESTART_DELAY = 1.0


@dataclass(frozen=True)
class Timing:
    """What one batch cost: runtime seconds and padding ratio per modality."""

    seconds: float
    padding: dict[str, float]


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
    executor: ThreadPoolExecutor
    task: asyncio.Task[None] | None = None
    batches: int = 0
    failures: int = 0
    restarts: int = 0

    @property
    def kind(self) -> str:
        return "cpu" if self.backend.device == "cpu" else "gpu"


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
    ) -> None:
        if not backends:
            raise ValueError("a worker pool needs at least one backend")
        self.batcher = batcher
        self.config = config
        self.model = model
        self.version = version
        self._metrics = metrics
        self.instances = [
            Instance(i, b, ThreadPoolExecutor(1, thread_name_prefix=f"{model}-v{version}-i{i}"))
            for i, b in enumerate(backends)
        ]
        self._stopping = False
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

    async def stop(self) -> None:
        """Stop the instances: call after ``batcher.drain`` so nothing is lost.

        Cancels the tasks (a batch still running fails with ``NotReady``),
        waits for each thread to finish its call, then closes the backends.
        """
        self._stopping = True
        tasks = [inst.task for inst in self.instances if inst.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for inst in self.instances:
            if inst.task is not None:
                self._count_instance(inst, -1)
                inst.task = None
            await asyncio.to_thread(inst.executor.shutdown, wait=True)
            try:
                inst.backend.close()
            except Exception:
                log.exception(
                    "model %s v%s: instance %d failed to close", self.model, self.version, inst.index
                )

    def _count_instance(self, inst: Instance, delta: int) -> None:
        if self._metrics is not None:
            self._metrics.instances.labels(self.model, self.version, inst.kind).inc(delta)

    # -- the instance loop -------------------------------------------------

    async def _supervise(self, inst: Instance) -> None:
        """Keep the instance's loop alive: an escaped exception is logged, then it restarts."""
        delay = 0.0
        while not self._stopping:
            try:
                await self._serve(inst)
            except asyncio.CancelledError:
                raise
            except Exception:
                inst.restarts += 1
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

    async def _compute_and_settle(self, inst: Instance, batch: list[Pending]) -> None:
        try:
            outputs, timing = await self._compute(inst, [p.row for p in batch])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            inst.failures += 1
            if self._metrics is not None:
                self._metrics.instance_failures.labels(self.model, self.version, str(inst.index)).inc()
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
        inst.batches += 1
        self.stats.execution_count += 1
        self.stats.compute_ns += int(timing.seconds * 1e9)
        for pending, row in zip(batch, outputs, strict=True):
            pending.resolve(row)
        self._observe(inst, len(batch), timing)

    @staticmethod
    def _fail(batch: list[Pending], kind: type[InternalError | NotReady], message: str) -> None:
        for pending in batch:
            pending.fail(kind(message))

    async def _compute(self, inst: Instance, rows: list[DecodedRow]) -> tuple[list[RowOutputs], Timing]:
        """Collate, run on the instance's thread, split (raises on any fault)."""
        feeds, padding = collate(rows, self.config)
        start = time.perf_counter()
        outputs = await offload(inst.executor, inst.backend.run, feeds)
        seconds = time.perf_counter() - start
        return split_outputs(outputs, len(rows)), Timing(seconds, padding)

    def _observe(self, inst: Instance, size: int, timing: Timing) -> None:
        """Record a served batch (warm-up batches are not recorded)."""
        m = self._metrics
        if m is None:
            return
        m.child(m.batch_size, self.model, self.version).observe(size)
        m.child(m.compute_seconds, self.model, self.version).observe(timing.seconds)
        m.child(m.instance_busy_seconds, self.model, self.version, str(inst.index)).inc(timing.seconds)
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
        batches = [[self._synthetic(self._modalities())], [self._synthetic([m]) for m in self._modalities()]]
        for inst in self.instances:
            for rows in batches:
                try:
                    await self._compute(inst, rows)
                except Exception as exc:
                    raise InternalError(
                        f"warm-up of model {self.model} version {self.version} failed on instance "
                        f"{inst.index} ({inst.backend.device}): {exc}",
                        model=self.model,
                    ) from exc

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
