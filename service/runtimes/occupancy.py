"""Is this batch the only one computing? Decides how many cores one batch may use.

Adaptive intra-op parallelism (docs/performance.md): a CPU instance keeps
two ONNX Runtime sessions over the same graph, a single-threaded one and a
wide one using every available core. A batch that starts while no other batch
computes — in this process and, with ``--workers N``, in any other (a byte per
process in the shared board, ``service/peers.py``) — runs on the wide session,
so a lone request gets all the cores; under load every instance runs
single-threaded side by side, which is what saturation wants.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import threading
from collections.abc import Iterator
from pathlib import Path


class Occupancy:
    """Batches computing now, in this process (and the other processes' busy flags)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._board: mmap.mmap | None = None
        self._slot = 0
        self._slots: range = range(0)
        self._calibrating = threading.Lock()
        self._calibration_file: Path | None = None

    def share(
        self, board: mmap.mmap, offset: int, index: int, count: int, calibration_file: Path | None = None
    ) -> None:
        """Publish this process's busy flag at ``board[offset + index]`` and read the others'.

        ``calibration_file``: a file every process of the server locks while it
        calibrates (:meth:`calibration`).
        """
        self._board = board
        self._slot = offset + index
        self._slots = range(offset, offset + count)
        self._calibration_file = calibration_file

    @contextlib.contextmanager
    def calibration(self) -> Iterator[None]:
        """One calibration at a time in the whole server, not only in this process.

        Worker processes start together and warm up together: two processes
        timing a wide session at once on a 2-core host each saw the other's
        threads and measured the wide session 1.5-3x slower than it is alone
        (``heavy-fusion``: 2.36-2.59 ms wide vs 2.30 narrow), so every
        instance chose one thread. An ``flock`` on a file of the server's
        control directory serialises them across processes.
        """
        with self._calibrating:
            path = self._calibration_file
            if path is None:
                yield
                return
            with path.open("a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def unshare(self) -> None:
        with self._lock:
            self._board = None
            self._slots = range(0)
            self._calibration_file = None

    @contextlib.contextmanager
    def batch(self) -> Iterator[bool]:
        """Count a batch as computing; yields whether it started alone (server-wide)."""
        with self._lock:
            alone = self._running == 0
            self._running += 1
            board = self._board
            if board is not None:
                if alone:
                    alone = all(board[i] == 0 for i in self._slots if i != self._slot)
                board[self._slot] = 1
        try:
            yield alone
        finally:
            with self._lock:
                self._running -= 1
                if self._board is not None and self._running == 0:
                    with contextlib.suppress(ValueError):  # the board was closed at shutdown
                        self._board[self._slot] = 0


#: One per process: every backend of every model counts here.
OCCUPANCY = Occupancy()
