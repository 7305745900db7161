"""The dynamic batcher of one model version: a bounded queue that forms batches.

Pull model: each free instance of the worker pool calls :meth:`next_batch`;
while every instance is busy, rows pile up and the next batch is bigger. A
batch is handed out when it holds ``max_batch_size`` rows, or when the OLDEST
queued row has waited ``max_queue_delay_ms`` (or at once, when the batcher is
closed). Only one instance forms a batch at a time; when several instances
are free and a batch is due before it is full, the rows are shared out
(each takes ``ceil(rows / free instances)``) so no free instance idles while
another computes a backlog.

Preferred batch sizes: when a batch is handed out with ``n`` rows available
and ``n < max_batch_size``, it takes the largest preferred size ``<= n``; when
no preferred size fits, it takes all ``n``. The rest stay queued with their
original arrival time, so the next free instance takes them without waiting
again.

Deadlines: a row whose deadline passes while it is queued is removed and its
caller gets :class:`DeadlineExceeded`; it is never computed. A caller that is
cancelled while queued has its row removed too. Once a row is in a batch its
compute is already paid for; a caller whose deadline passes during compute
still gets ``DeadlineExceeded`` at its deadline, and the result is discarded.

Arrivals (``track_arrivals=True``): the data plane announces rows with
:meth:`expect` when their request starts decoding; each :meth:`submit` settles
one announced row and :meth:`withdraw` settles whatever is left when the
request ends (a failed decode, a client that gave up between decoding and
submitting). The count is exported as ``fusionserve_batcher_announced_rows``
and always returns to 0. When no announced row is on its way, waiting for
``max_queue_delay_ms`` can only add latency, so the batch goes at once. A
lone client then pays no batching delay (measured: with a 2 ms delay,
batching at concurrency 1 was 3x slower than no batching), while concurrent rows still meet in one batch.

Lone rows: a single-row request that finds the batcher free
(:meth:`free_for_a_lone_row`) is submitted undecoded, as a
:class:`~fusionserve.service.model.rows.DeferredRow` costed as one row; the
instance decodes it on its own thread before collating.

Cost (each row's from its decoded sizes and ``Batching.costs``): a batch
also closes, at once, when the queued rows' cost reaches ``max_batch_cost``
(it takes the longest prefix of the queue within the bound, at least one
row). Admission by cost (``max_queue_cost``) happens earlier, before pixels
are decoded: :mod:`.cost_gate`, held here as ``cost_gate``.

Every time is ``time.monotonic()`` seconds (injectable as ``clock`` for tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from fusionserve.service.batching.cost_gate import CostGate
from fusionserve.service.batching.lifo_lock import LifoLock
from fusionserve.service.errors import DeadlineExceeded, FusionServeError, NotReady, Overloaded
from fusionserve.service.metrics import Metrics
from fusionserve.service.model.config import Batching
from fusionserve.service.model.rows import QueuedRow, RowOutputs

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(eq=False)
class Announcement:
    """Rows one request announced with :meth:`DynamicBatcher.expect` and not yet settled."""

    rows: int


@dataclass(eq=False)
class Pending:
    """One queued row and the future its caller awaits."""

    row: QueuedRow
    future: asyncio.Future[RowOutputs]
    enqueued: float
    deadline: float
    #: The row's cost (``Batching.costs``), for ``max_batch_cost`` / ``max_queue_cost``.
    cost: float = 1.0
    #: Called once when the row is settled (the batcher's in-flight accounting).
    on_settle: Callable[[Pending], None] | None = field(default=None, repr=False)
    #: True once resolved or failed by the batcher's side (the caller may have left earlier).
    settled: bool = False

    def resolve(self, outputs: RowOutputs) -> None:
        """Hand the caller its row's outputs (no-op if it already gave up)."""
        if not self.future.done():
            self.future.set_result(outputs)
        self._settled()

    def fail(self, exc: BaseException) -> None:
        """Fail the caller's future (no-op if it already gave up)."""
        if not self.future.done():
            self.future.set_exception(exc)
        self._settled()

    def _settled(self) -> None:
        self.settled = True
        callback, self.on_settle = self.on_settle, None
        if callback is not None:
            callback(self)


class _SteppedDown(Exception):
    """The idle former hands the forming lock to an instance that just came back."""


def _retrieve(future: asyncio.Future[RowOutputs]) -> None:
    """Mark an exception as seen: a caller that timed out never reads its future."""
    if not future.cancelled():
        future.exception()


class DynamicBatcher:
    """Queue and batch formation for one model version (see the module docstring)."""

    def __init__(
        self,
        batching: Batching,
        *,
        model: str,
        version: str,
        metrics: Metrics | None = None,
        clock: Clock = time.monotonic,
        track_arrivals: bool = False,
    ) -> None:
        self.batching = batching
        self._track_arrivals = track_arrivals
        self._expected = 0  # announced rows still decoding
        self._waiting = 0  # instances inside next_batch (free to compute)
        self.model = model
        self.version = version
        self._metrics = metrics
        self._clock = clock
        self._queue: deque[Pending] = deque()
        self._inflight: set[Pending] = set()
        self._closed = False
        self._changed = asyncio.Event()  # set on every arrival/close; waited on by the batch former
        self._idle = asyncio.Event()  # set while nothing is queued or in flight
        self._idle.set()
        #: Held by the instance forming the next batch; passed to the newest waiter (.lifo_lock).
        self._forming = LifoLock()
        #: The forming instance waits for a first row (nothing queued).
        self._former_idle = False
        self._preferred = sorted(set(batching.preferred_batch_sizes))
        #: Admission by cost (``max_queue_cost``), reserved by decode threads.
        self.cost_gate = CostGate(batching.max_queue_cost, model)
        #: Total time rows waited before their batch was taken (V2 statistics' ``queue``).
        self.queue_ns = 0

    # -- state -------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        """Rows waiting for an instance."""
        return len(self._queue)

    @property
    def queued_cost(self) -> float:
        """The cost of the rows waiting for an instance."""
        return sum(p.cost for p in self._queue)

    def _within_cost(self, available: int) -> tuple[int, bool]:
        """How many head rows fit ``max_batch_cost`` (at least 1), and whether the bound is reached."""
        bound = self.batching.max_batch_cost
        if bound is None:
            return available, False
        total = 0.0
        for i, pending in enumerate(self._queue):
            if i == available:
                return available, total >= bound
            total += pending.cost
            if total > bound:
                return max(1, i), True
            if total == bound:
                return i + 1, True
        return available, total >= bound

    @property
    def inflight(self) -> int:
        """Rows handed to an instance and not yet settled."""
        return len(self._inflight)

    def _update(self) -> None:
        if self._metrics is not None:
            self._metrics.child(self._metrics.queue_depth, self.model, self.version).set(len(self._queue))
        if self._queue or self._inflight:
            self._idle.clear()
        else:
            self._idle.set()

    # -- callers -----------------------------------------------------------

    def admit(self, rows: int) -> None:
        """Refuse, before any decoding, a request whose rows cannot all be queued.

        Rows already announced (decoding) count as queued: they will be, less
        one per free instance, which takes a row as soon as it arrives. A
        request is admitted all or nothing, so a batch-form request never
        leaves some rows computing for nobody after its later rows are shed.
        """
        if self._closed:
            raise NotReady(f"model {self.model} version {self.version} is not taking new requests (draining)")
        limit = self.batching.max_queue_size
        # A free instance (waiting in next_batch) takes an arriving row at once.
        if len(self._queue) + self._expected + rows > limit + self._waiting:
            raise Overloaded(
                f"queue of model {self.model} is full (max_queue_size={limit}; "
                f"{len(self._queue)} queued, {self._expected} arriving, {rows} asked)",
                model=self.model,
                max_queue_size=limit,
            )

    def expect(self, rows: int) -> Announcement:
        """Announce rows that are being decoded and will be submitted soon.

        The caller must :meth:`withdraw` the returned announcement when its
        request ends, however it ends (a ``finally``).
        """
        self._expected += rows
        self._export_expected()
        return Announcement(rows)

    def withdraw(self, announcement: Announcement) -> None:
        """Settle the announced rows that were never submitted (idempotent)."""
        if announcement.rows:
            self._expected = max(0, self._expected - announcement.rows)
            announcement.rows = 0
            self._export_expected()
            self._changed.set()

    def retract(self, rows: int) -> None:
        """Withdraw ``rows`` announced rows that will never be submitted."""
        self.withdraw(Announcement(rows))

    def _export_expected(self) -> None:
        if self._metrics is not None:
            self._metrics.child(self._metrics.announced_rows, self.model, self.version).set(self._expected)

    @property
    def expected(self) -> int:
        return self._expected

    def free_for_a_lone_row(self) -> bool:
        """True when a row submitted now goes straight to a free instance, alone.

        Nothing queued, nothing announced (decoding elsewhere), an instance
        waiting for work, and arrivals tracked (so no batching delay applies):
        the data plane then hands that instance the row undecoded
        (:class:`~fusionserve.service.model.rows.DeferredRow`), and it decodes
        and computes it on its own thread in one crossing.
        """
        return (
            self._track_arrivals
            and not self._closed
            and self._waiting > 0
            and not self._queue
            and self._expected == 0
        )

    async def submit(
        self, row: QueuedRow, deadline: float, *, announcement: Announcement | None = None
    ) -> RowOutputs:
        """Queue one row and wait for its outputs.

        ``announcement``: the row was announced with :meth:`expect`; submitting
        settles one of its rows. Raises :class:`NotReady` when closed,
        :class:`Overloaded` when the queue is full, and
        :class:`DeadlineExceeded` when ``deadline`` passes first.
        """
        if announcement is not None and announcement.rows:
            announcement.rows -= 1
            self._expected = max(0, self._expected - 1)
            self._export_expected()
            self._changed.set()
        if self._closed:
            raise NotReady(f"model {self.model} version {self.version} is not taking new requests (draining)")
        if len(self._queue) >= self.batching.max_queue_size:
            raise Overloaded(
                f"queue of model {self.model} is full (max_queue_size={self.batching.max_queue_size})",
                model=self.model,
                max_queue_size=self.batching.max_queue_size,
            )
        cost = self.batching.costs.of(row.sizes)
        now = self._clock()
        if deadline <= now:
            raise self._expired_error(0.0, "before it was queued")
        # The future exists before the row is visible to any instance.
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RowOutputs] = loop.create_future()
        future.add_done_callback(_retrieve)
        pending = Pending(row, future, now, deadline, cost)
        self._queue.append(pending)
        self._update()
        self._changed.set()
        # A timer rather than wait_for(shield(...)): one handle instead of two
        # extra futures and a task per row (the request path's hottest await).
        timer = loop.call_later(deadline - now, self._expire, pending)
        try:
            return await future
        except asyncio.CancelledError:
            self._withdraw(pending)
            raise
        finally:
            timer.cancel()

    def _expire(self, pending: Pending) -> None:
        """The row's deadline passed: drop it if still queued; either way its caller gets the error."""
        waited = self._clock() - pending.enqueued
        where = "in the queue" if self._withdraw(pending) else "while its batch was computing"
        if not pending.future.done():
            pending.future.set_exception(self._expired_error(waited, where))

    def _withdraw(self, pending: Pending) -> bool:
        """Take a given-up row out of the queue so it is never computed; False if already taken."""
        try:
            self._queue.remove(pending)
        except ValueError:  # already in a batch: it finishes there, and the result is dropped
            return False
        self._update()
        return True

    def _expired_error(self, waited: float, where: str = "in the queue") -> DeadlineExceeded:
        return DeadlineExceeded(
            f"deadline of the request to model {self.model} passed {where} after {waited * 1000:.0f} ms",
            model=self.model,
        )

    # -- instances ---------------------------------------------------------

    async def next_batch(self) -> list[Pending]:
        """Wait for, form and hand out the next batch (never empty).

        Expired and cancelled rows are dropped here and never returned. At
        light load the instance back last from a compute takes the next
        batch: a former with nothing queued steps down for an instance that
        came back while it held the lock, and waits behind every other
        (:mod:`.lifo_lock`), so one warm instance takes request after request.
        """
        self._waiting += 1
        stepped_down = False
        try:
            while True:
                if self._former_idle:
                    self._changed.set()  # wake the idle former: it steps down for this instance
                await self._forming.acquire(last=stepped_down)
                try:
                    while True:
                        await self._wait_for_first()
                        size = await self._collect()
                        if size:
                            return self._take(size)
                except _SteppedDown:
                    stepped_down = True
                finally:
                    self._forming.release()
        finally:
            self._waiting -= 1

    async def _wait_for_first(self) -> None:
        while True:
            self._drop_dead()
            if self._queue:
                return
            if self._forming.fresh_waiting:  # an instance back from a compute: warmer than this one
                raise _SteppedDown
            self._changed.clear()
            self._former_idle = True
            try:
                await self._changed.wait()
            finally:
                self._former_idle = False

    async def _collect(self) -> int:
        """Wait until a batch is due; returns its size (0 if the queue emptied meanwhile)."""
        delay = self.batching.max_queue_delay_ms / 1000
        while True:
            self._drop_dead()
            available = len(self._queue)
            if available == 0:
                return 0
            if available >= self.batching.max_batch_size:
                available = self.batching.max_batch_size
                return self._within_cost(available)[0]
            fitting, cost_full = self._within_cost(available)
            if cost_full:  # the batch closes on cost, as it would on rows
                return fitting
            remaining = self._queue[0].enqueued + delay - self._clock()
            nothing_coming = self._track_arrivals and self._expected == 0
            if remaining <= 0 or self._closed or nothing_coming:
                return self._preferred_size(self._fair_share(available))
            self._changed.clear()
            # asyncio.TimeoutError, not TimeoutError: they are one class only from 3.11 on.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)

    def _fair_share(self, available: int) -> int:
        """Rows for this instance when several are free: split, don't queue behind one.

        On a CPU a batch costs about the same per row as single rows, so four
        rows on one instance while another idles took longer than two each
        (measured: batching 570 vs no batching 690 req/s at concurrency 4).
        Full batches (``max_batch_size`` rows waiting) are never split.
        """
        return -(-available // max(1, self._waiting))

    def _preferred_size(self, available: int) -> int:
        fitting = [s for s in self._preferred if s <= available]
        return fitting[-1] if fitting else available

    def _drop_dead(self) -> None:
        """Remove cancelled rows and fail expired ones; neither is ever computed."""
        now = self._clock()
        alive: deque[Pending] = deque()
        for pending in self._queue:
            if pending.future.done():
                continue
            if now >= pending.deadline:
                pending.fail(self._expired_error(now - pending.enqueued))
                continue
            alive.append(pending)
        if len(alive) != len(self._queue):
            self._queue = alive
            self._update()

    def _take(self, size: int) -> list[Pending]:
        now = self._clock()
        batch = [self._queue.popleft() for _ in range(size)]
        for pending in batch:
            pending.on_settle = self._settled
            self._inflight.add(pending)
            waited = now - pending.enqueued
            self.queue_ns += int(waited * 1e9)
            if self._metrics is not None:
                self._metrics.child(self._metrics.queue_seconds, self.model, self.version).observe(waited)
        self._update()
        return batch

    def _settled(self, pending: Pending) -> None:
        self._inflight.discard(pending)
        self._update()

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        """Refuse new rows (``NotReady``); queued rows are still handed out, at once."""
        self._closed = True
        self._changed.set()

    async def drain(self, timeout: float) -> bool:
        """Close, then wait until nothing is queued or in flight.

        Returns True when everything finished; after ``timeout`` seconds the
        rest fail with :class:`NotReady` and it returns False.
        """
        self.close()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout)
            return True
        except asyncio.TimeoutError:  # TimeoutError misses it on Python 3.10
            left = len(self._queue) + len(self._inflight)
            log.warning(
                "model %s version %s: drain timed out, failing %d rows", self.model, self.version, left
            )
            self.fail_all(NotReady(f"model {self.model} version {self.version} shut down before answering"))
            return False

    def fail_all(self, exc: FusionServeError) -> None:
        """Fail every queued and in-flight row (shutdown)."""
        queued, self._queue = list(self._queue), deque()
        for pending in [*queued, *self._inflight]:
            pending.fail(type(exc)(exc.message, **exc.details))
        self._inflight.clear()
        self._update()
