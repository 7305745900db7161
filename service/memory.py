"""The per-process memory budget for request bytes in flight, shared by every door.

HTTP bodies (``fusionserve.service.http.budget``) and gRPC messages (``fusionserve.service.grpc.budget``)
are charged against one limit, so a flood over either door, or both at once,
meets refusals instead of the OOM killer. The default budget is the smaller of
512 MiB and a quarter of the memory the process may use (the cgroup limit
when there is one, else physical memory).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fusionserve.service.config import Settings
    from fusionserve.service.metrics import Metrics

#: Bytes a request holds per body byte while it is parsed (chunks + joined body + parts).
CHARGE = 3
DEFAULT_CAP = 512 * 1024 * 1024


def memory_allowed() -> int | None:
    """The memory this process may use: the cgroup limit (v2 or v1), else physical memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 writes a huge number for "no limit"
            return int(text)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_budget() -> int:
    """The budget when ``max_inflight_bytes`` is 0 (see the module's docstring)."""
    allowed = memory_allowed()
    return DEFAULT_CAP if allowed is None else min(DEFAULT_CAP, allowed // 4)


class MemoryBudget:
    """Bytes charged to requests in flight against one limit.

    Event-loop only, no lock: uvicorn and the grpc.aio server run on the same loop.
    """

    def __init__(self, limit: int, metrics: Metrics | None = None) -> None:
        self.limit = limit
        self.held = 0
        self._metrics = metrics
        if metrics is not None:
            metrics.inflight_bytes_limit.set(limit)

    def try_charge(self, n: int) -> bool:
        # One request alone may always use the whole budget, or a body the
        # size limit allows could never be served.
        if self.held and self.held + n > self.limit:
            return False
        self.held += n
        self._export()
        return True

    def release(self, n: int) -> None:
        self.held = max(0, self.held - n)
        self._export()

    def _export(self) -> None:
        if self._metrics is not None:
            self._metrics.inflight_bytes.set(self.held)


def process_budget(settings: Settings, metrics: Metrics | None) -> MemoryBudget:
    """The process's budget: ``max_inflight_bytes``, or the default when it is 0."""
    return MemoryBudget(settings.max_inflight_bytes or default_budget(), metrics)
