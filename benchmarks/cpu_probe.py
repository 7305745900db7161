"""CPU per request, by stage: where a server's cores go, from outside and from its own metrics.

Total CPU is read from ``/proc`` (utime + stime of the server process and every
descendant: the supervisor's worker processes included) before and after a
load run, and divided by the requests answered. The server's own histograms
give the stages it times on one thread each: decoding (per input, on the
decoder pool), compute (per batch, on an instance thread, single-threaded
sessions: wall ≈ CPU) and post-processing. What is left — HTTP parsing,
routing, the answer, thread hand-offs, batching, metrics — is the door and
the plumbing, the part issue 11 wants cut.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process's own threads) or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root`` and every live descendant."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            found = _stat(int(entry.name))
            if found is not None:
                parents[int(entry.name)], cpu[int(entry.name)] = found
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


def _sums(url: str) -> dict[str, float]:
    """Sums and counts of the stage histograms (all labels added up)."""
    wanted = (
        "fusionserve_decode_duration_seconds_sum",
        "fusionserve_compute_duration_seconds_sum",
        "fusionserve_postprocess_duration_seconds_sum",
        "fusionserve_requests_total",
    )
    out = dict.fromkeys(wanted, 0.0)
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return out
    for line in text.splitlines():
        for name in wanted:
            if line.startswith(name + "{") or line.startswith(name + " "):
                out[name] += float(line.rsplit(" ", 1)[1])
    return out


@dataclass
class Snapshot:
    cpu_s: float
    stages: dict[str, float]


@dataclass
class StageCpu:
    """Microseconds of CPU per request: total and by stage (stages only for fusionserve)."""

    total_us: float
    decode_us: float | None = None
    compute_us: float | None = None
    postprocess_us: float | None = None

    @property
    def door_us(self) -> float | None:
        """Everything outside decode, model and post-processing."""
        if self.decode_us is None or self.compute_us is None or self.postprocess_us is None:
            return None
        return self.total_us - self.decode_us - self.compute_us - self.postprocess_us


def snapshot(pid: int, url: str) -> Snapshot:
    return Snapshot(tree_cpu_seconds(pid), _sums(url))


def per_request(before: Snapshot, after: Snapshot, requests: int) -> StageCpu:
    """CPU per request between two snapshots that ``requests`` answers lie between."""
    if requests <= 0:
        return StageCpu(0.0)
    total = (after.cpu_s - before.cpu_s) / requests * 1e6
    delta = {k: after.stages[k] - before.stages[k] for k in after.stages}
    if not delta.get("fusionserve_requests_total"):
        return StageCpu(total)  # not fusionserve (the naive baseline has no metrics)
    return StageCpu(
        total_us=total,
        decode_us=delta["fusionserve_decode_duration_seconds_sum"] / requests * 1e6,
        compute_us=delta["fusionserve_compute_duration_seconds_sum"] / requests * 1e6,
        postprocess_us=delta["fusionserve_postprocess_duration_seconds_sum"] / requests * 1e6,
    )
