"""CPUs allowed, from fake cgroup trees: every self-sized thread pool follows the quota, not the host."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from fusionserve.service import cpus
from fusionserve.service.cpus import available_cpus, default_executor_threads, limited_cpus


@pytest.fixture(autouse=True)
def eight_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host of 8 cores, all in the affinity mask, unless a test narrows it."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(os, "cpu_count", lambda: 8)


def tree(root: Path, proc: str, files: dict[str, str]) -> Path:
    """A fake ``/sys/fs/cgroup`` under ``root`` and a fake ``/proc/self/cgroup`` (returned)."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc_file = root.parent / f"{root.name}-proc-cgroup"
    proc_file.write_text(proc)
    return proc_file


def test_v2_quota_of_an_ancestor_binds_a_nested_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    proc = tree(
        root,
        "0::/system.slice/app.service\n",
        {
            "cpu.max": "max 100000\n",
            "system.slice/cpu.max": "250000 100000\n",  # 2.5 CPUs: rounded up
            "system.slice/app.service/cpu.max": "max 100000\n",
        },
    )
    assert available_cpus(root, proc) == 3
    (root / "system.slice/app.service/cpu.max").write_text("50000 100000\n")  # half a CPU: at least 1
    assert available_cpus(root, proc) == 1


def test_v2_in_a_cgroup_namespace_reads_the_mount_root(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    # The host path is not under the container's mount: the root is the container's cgroup.
    proc = tree(root, "0::/kubepods/pod1/abc\n", {"cpu.max": "200000 100000\n"})
    assert available_cpus(root, proc) == 2
    (root / "cpu.max").write_text("max 100000\n")
    assert available_cpus(root, proc) == 8


def test_v1_quota_under_a_combined_controller_mount(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    proc = tree(
        root,
        "5:memory:/x\n4:cpu,cpuacct:/docker/abc\n0::/\n",
        {
            "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert available_cpus(root, proc) == 3
    (root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us").write_text("-1\n")
    assert available_cpus(root, proc) == 8


def test_affinity_narrower_than_the_quota_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cg"
    proc = tree(root, "0::/\n", {"cpu.max": "400000 100000\n"})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert available_cpus(root, proc) == 2
    assert available_cpus(tmp_path / "nothing", tmp_path / "no-proc") == 2  # no cgroup files: affinity


def test_libraries_keep_their_default_unless_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "available_cpus", lambda: 8)
    assert limited_cpus() is None
    assert default_executor_threads() == 12
    monkeypatch.setattr(cpus, "available_cpus", lambda: 2)
    assert limited_cpus() == 2
    assert default_executor_threads() == 6


def test_onnx_sessions_default_threads_follow_the_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    from fusionserve.service.runtimes import onnx
    from tests.unit.test_adaptive_threads import config

    monkeypatch.setattr(onnx, "limited_cpus", lambda: 2)
    options = onnx.session_options(config(intra_op_threads=0, inter_op_threads=0))
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 2)
    options = onnx.session_options(config(intra_op_threads=1, inter_op_threads=1))
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert onnx.session_options(config(), intra_op_threads=2).intra_op_num_threads == 2  # the wide session
    monkeypatch.setattr(onnx, "limited_cpus", lambda: None)
    assert onnx.session_options(config(intra_op_threads=0)).intra_op_num_threads == 0  # ORT's own default
    monkeypatch.setattr(onnx, "available_cpus", lambda: 3)
    assert onnx.lone_batch_threads(config(), onnx.DeviceSpec("cpu")) == 3


class FakeTorch:
    def __init__(self, threads: int, interop: int) -> None:
        self.threads, self.interop = threads, interop

    def get_num_threads(self) -> int:
        return self.threads

    def set_num_threads(self, n: int) -> None:
        self.threads = n

    def get_num_interop_threads(self) -> int:
        return self.interop

    def set_num_interop_threads(self, n: int) -> Any:
        raise RuntimeError("already started")


def test_torch_pools_are_capped_never_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    from fusionserve.service.runtimes import torchscript

    torch = FakeTorch(threads=8, interop=8)
    monkeypatch.setattr(torchscript, "limited_cpus", lambda: 2)
    torchscript.fit_threads(torch)
    assert torch.threads == 2 and torch.interop == 8  # interop no longer settable: left alone
    torch = FakeTorch(threads=1, interop=1)  # OMP_NUM_THREADS=1, say: kept
    torchscript.fit_threads(torch)
    assert torch.threads == 1
    monkeypatch.setattr(torchscript, "limited_cpus", lambda: None)
    torch = FakeTorch(threads=8, interop=8)
    torchscript.fit_threads(torch)
    assert torch.threads == 8
