"""How many cores this process may really use: affinity and the cgroup CPU quota.

``os.cpu_count()`` reports the host's cores; a container limited to two CPUs
on a 64-core host would start 64 server processes. The default worker count
reads the CPU affinity mask and the cgroup v2 (``cpu.max``) or v1
(``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) quota and takes the smaller.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _quota_cores(
    v2: Path = _CGROUP_V2, v1_quota: Path = _CGROUP_V1_QUOTA, v1_period: Path = _CGROUP_V1_PERIOD
) -> int | None:
    """Cores the cgroup quota allows (rounded up), or None when there is no quota."""
    try:
        quota_s, period_s = v2.read_text().split()[:2]
        if quota_s != "max":
            return max(1, math.ceil(int(quota_s) / int(period_s)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int(v1_quota.read_text())
        period = int(v1_period.read_text())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def available_cpus() -> int:
    """Cores this process may run on: affinity mask, capped by the cgroup quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = _quota_cores()
    return max(1, min(cores, quota) if quota else cores)
