"""CPU per request, by thread role: where a server's cores go.

Read from ``/proc`` before and after a load run and divided by the requests
answered: the CPU time (utime + stime) of the server process and every
descendant (the supervisor's worker processes included), and of each thread
by its kernel name — fusionserve names its decoder threads ``fs-decode`` and
its model-instance threads ``fs-model`` (``service/threadnames.py``). What is
left is the event loop (HTTP parsing, routing, batching, post-processing, the
answer, metrics) plus gRPC's and the runtime's own threads: the door and the
plumbing, the part issue 11 wants cut. CPU, not wall time: on a shared
machine a stage's wall time includes waiting for a core.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
ROLES = {"fs-decode": "decode", "fs-model": "model"}


def _cpu(stat: str) -> tuple[int, float]:
    """(parent pid, CPU seconds) from a ``/proc/.../stat`` line."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def _tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = _cpu((entry / "stat").read_text())[0]
            except (OSError, ValueError, IndexError):
                continue
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return pids


@dataclass
class Snapshot:
    """CPU seconds so far: ``total`` for the process tree, and by thread role."""

    total: float
    roles: dict[str, float]


def snapshot(root: int) -> Snapshot:
    total = 0.0
    roles = dict.fromkeys(ROLES.values(), 0.0)
    for pid in _tree(root):
        try:
            total += _cpu(Path(f"/proc/{pid}/stat").read_text())[1]
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except (OSError, ValueError, IndexError):
            continue
        for task in tasks:
            try:
                role = ROLES.get((task / "comm").read_text().strip())
                if role:
                    roles[role] += _cpu((task / "stat").read_text())[1]
            except (OSError, ValueError, IndexError):
                continue
    return Snapshot(total, roles)


@dataclass
class StageCpu:
    """Microseconds of CPU per request: total, decoder threads, model threads, the rest."""

    total_us: float
    decode_us: float
    model_us: float

    @property
    def rest_us(self) -> float:
        """Event loop (door, batching, answers) and every other thread."""
        return self.total_us - self.decode_us - self.model_us


def per_request(before: Snapshot, after: Snapshot, requests: int) -> StageCpu:
    """CPU per request between two snapshots that ``requests`` answers lie between."""
    if requests <= 0:
        return StageCpu(0.0, 0.0, 0.0)
    scale = 1e6 / requests
    return StageCpu(
        total_us=(after.total - before.total) * scale,
        decode_us=(after.roles["decode"] - before.roles["decode"]) * scale,
        model_us=(after.roles["model"] - before.roles["model"]) * scale,
    )
