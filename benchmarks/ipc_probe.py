"""What the "fronts hand rows to one model owner" design would add per request.

    python benchmarks/ipc_probe.py

The alternative to N full replicas (``--workers N``) is N front processes
that parse and decode, then hand each decoded row to one process that owns
the model (so batches form across all fronts) and wait for its outputs. This
measures the hop alone: a decoded row of each workload sent to another
process and ten logits sent back, through a ``multiprocessing`` pipe
(pickled) and through shared memory with a pipe only for the notification,
in CPU microseconds per round trip (both processes) and wall time.
"""

from __future__ import annotations

import statistics
import sys
import time
from multiprocessing import Pipe, Process, shared_memory
from multiprocessing.connection import Connection

import numpy as np

ROWS = {
    "digits-fusion": {"image": (28, 28, 3), "audio": (16000,), "text": (16,)},
    "heavy-fusion": {"image": (128, 128, 3), "audio": (16000,), "text": (32,)},
}


def _row(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 255, shapes["image"], dtype=np.uint8),
        "audio": rng.standard_normal(shapes["audio"]).astype(np.float32),
        "text": rng.integers(0, 100, shapes["text"], dtype=np.int64),
    }


def _owner_pickle(conn: Connection) -> None:
    logits = np.zeros(10, dtype=np.float32)
    while True:
        row = conn.recv()
        if row is None:
            return
        conn.send(logits)


def _owner_shm(conn: Connection, name: str) -> None:
    shm = shared_memory.SharedMemory(name=name)
    logits = np.zeros(10, dtype=np.float32)
    while True:
        msg = conn.recv_bytes()
        if msg == b"stop":
            shm.close()
            return
        # the owner would view the row in place here (np.ndarray over shm.buf)
        conn.send_bytes(logits.tobytes())


def _measure(kind: str, shapes: dict[str, tuple[int, ...]], n: int) -> tuple[float, float]:
    """(CPU µs per round trip, both processes; wall µs per round trip)."""
    row = _row(shapes)
    parent, child = Pipe()
    shm = None
    if kind == "pickle":
        proc = Process(target=_owner_pickle, args=(child,))
    else:
        size = sum(a.nbytes for a in row.values())
        shm = shared_memory.SharedMemory(create=True, size=size)
        proc = Process(target=_owner_shm, args=(child, shm.name))
    proc.start()
    walls = []
    cpu0 = time.process_time()
    child_cpu0 = _children_cpu()
    for _ in range(n):
        t0 = time.perf_counter()
        if shm is None:
            parent.send(row)
            parent.recv()
        else:
            offset = 0
            for array in row.values():
                flat = array.reshape(-1).view(np.uint8)
                buffer = shm.buf
                assert buffer is not None
                np.frombuffer(buffer, np.uint8, flat.nbytes, offset)[:] = flat
                offset += flat.nbytes
            parent.send_bytes(b"row")
            parent.recv_bytes()
        walls.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    if shm is None:
        parent.send(None)
    else:
        parent.send_bytes(b"stop")
    proc.join()
    child_cpu = _children_cpu() - child_cpu0
    if shm is not None:
        shm.close()
        shm.unlink()
    return (cpu + child_cpu) / n * 1e6, statistics.median(walls) * 1e6


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    print("| row | hand-off | CPU µs per round trip (both processes) | wall µs (median) |")
    print("|---|---|---|---|")
    for name, shapes in ROWS.items():
        for kind in ("pickle", "shared memory"):
            cpu, wall = _measure(kind, shapes, 3000)
            print(f"| {name} | {kind} | {cpu:.0f} | {wall:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
