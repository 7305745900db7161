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
import mmap
import threading
from collections.abc import Iterator


class Occupancy:
    """Batches computing now, in this process (and the other processes' busy flags)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._board: mmap.mmap | None = None
        self._slot = 0
        self._slots: range = range(0)

    def share(self, board: mmap.mmap, offset: int, index: int, count: int) -> None:
        """Publish this process's busy flag at ``board[offset + index]`` and read the others'."""
        self._board = board
        self._slot = offset + index
        self._slots = range(offset, offset + count)

    def unshare(self) -> None:
        with self._lock:
            self._board = None
            self._slots = range(0)

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
