"""How many CPUs this process may really use: affinity and the cgroup CPU quota.

``os.cpu_count()`` is the host's core count; inside a container limited to
two CPUs on a 64-core host it sizes thread pools 32 times too large (each
thread a stack, each decode its buffers, all contending for two CPUs).
Every thread count the server picks on its own (decoders, ``--workers``,
ONNX Runtime and torch pools, the event loop's default executor) comes from
``available_cpus``.

The quota is read along the process's own cgroup (``/proc/self/cgroup``) and
its ancestors, the smallest winning, as the kernel throttles at every level:
a systemd unit's ``CPUQuota`` sits below the mount root, a container's
(with its own cgroup namespace) at the root itself.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _own_paths(proc_cgroup: Path) -> dict[str, str]:
    """The process's cgroup path per hierarchy: ``""`` for v2, each v1 controller by name."""
    paths: dict[str, str] = {}
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            paths[""] = path
        for controller in controllers.split(","):
            if controller:
                paths[controller] = path
    return paths


def _levels(base: Path, own: str) -> Iterator[Path]:
    """``base`` joined with ``own`` and each of its ancestors, up to ``base`` itself.

    Levels that are not there (a host path seen from inside a container's
    namespace) are skipped: ``base`` is then the container's own cgroup.
    """
    relative = PurePosixPath(own.lstrip("/"))
    for level in [relative, *relative.parents]:
        path = base / level
        if path.is_dir():
            yield path


def _read_v2(level: Path) -> float | None:
    try:
        quota, period = (level / "cpu.max").read_text().split()[:2]
        return int(quota) / int(period) if quota != "max" and int(period) > 0 else None
    except (OSError, ValueError):
        return None


def _read_v1(level: Path) -> float | None:
    try:
        quota_us = int((level / "cpu.cfs_quota_us").read_text())
        period_us = int((level / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _cgroup_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None when unlimited."""
    own = _own_paths(proc_cgroup)
    quotas = [q for level in _levels(root, own.get("", "/")) if (q := _read_v2(level)) is not None]
    if not quotas:  # v1: the cpu controller's own mount (``cpu`` or ``cpu,cpuacct``)
        v1_base = next((root / name for name in ("cpu", "cpu,cpuacct") if (root / name).is_dir()), None)
        if v1_base is not None:
            levels = _levels(v1_base, own.get("cpu", "/"))
            quotas = [q for level in levels if (q := _read_v1(level)) is not None]
    return min(quotas) if quotas else None


def available_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPUs this process may use: the affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        count = os.cpu_count() or 1
    quota = _cgroup_quota(root, proc_cgroup)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def limited_cpus() -> int | None:
    """``available_cpus()`` when affinity or quota hold this process below the host's cores, else None.

    For libraries whose own default (ONNX Runtime's and torch's: the physical
    cores) is right on an unconstrained host but blind to the quota: they keep
    it unless this says otherwise.
    """
    allowed = available_cpus()
    return allowed if allowed < (os.cpu_count() or 1) else None


def default_executor_threads() -> int:
    """Threads of the event loop's default executor: Python's ``min(32, cpus + 4)`` over the CPUs allowed."""
    return min(32, available_cpus() + 4)
