"""Worker threads fed from one C-level queue: the cheapest hand-off from the event loop.

A request crosses from the loop to a thread twice (decode, then compute), or
once when it is a lone row for an idle model (decoded on the instance's thread).
``ThreadPoolExecutor.submit`` costs ~90 µs of loop CPU per crossing on the
2-core test machine (a ``Future``, a lock, a semaphore probe and a condition
variable per call); a ``queue.SimpleQueue`` put and a blocking ``get`` in the
worker cost ~60 µs (a loop → thread → loop round trip, 5,000 empty calls;
docs/performance.md, "The request path").
:func:`fusionserve.service.offload.offload` awaits work on them from the loop.

Threads are daemons: a thread stuck in a model call (the pool abandons it and
starts a fresh instance) must not keep the process from exiting.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from fusionserve.service.threadnames import name_os_thread

#: A unit of work and what to call instead if it is dropped before it runs.
Work = tuple[Callable[[], None], Callable[[], None]]
_STOP = None


class Lanes:
    """``threads`` workers taking :data:`Work` from one queue, in order."""

    def __init__(self, threads: int, name: str, os_name: str) -> None:
        self._queue: queue.SimpleQueue[Work | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, args=(os_name,), name=f"{name}_{i}", daemon=True)
            for i in range(max(1, threads))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, work: Callable[[], None], dropped: Callable[[], None]) -> None:
        """Run ``work`` on a lane; ``dropped`` instead if shutdown cancels it first."""
        if self._closed:
            raise RuntimeError("cannot schedule new work after shutdown")
        self._queue.put((work, dropped))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the lanes after the work already queued (or drop it: ``cancel_futures``)."""
        self._closed = True
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    item[1]()
        for _ in self._threads:
            self._queue.put(_STOP)
        if wait:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _serve(self, os_name: str) -> None:
        name_os_thread(os_name)
        get = self._queue.get
        while (item := get()) is not _STOP:
            item[0]()
