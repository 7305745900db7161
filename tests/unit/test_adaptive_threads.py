"""Adaptive intra-op threads: a lone batch runs on the wide session, concurrent ones on their own."""

from __future__ import annotations

import mmap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fusionserve.service.model.config import ModelConfig
from fusionserve.service.runtimes import DeviceSpec
from fusionserve.service.runtimes.occupancy import Occupancy
from fusionserve.service.runtimes.onnx import OnnxBackend, lone_batch_threads
from tests.unit.test_runtimes import CONFIG, EXPECTED, FEEDS, text_graph


def config(**onnx: object) -> ModelConfig:
    return ModelConfig.model_validate({**CONFIG, "backend": "onnx", "onnx": {**CONFIG["onnx"], **onnx}})


def test_a_batch_alone_is_told_so_and_a_concurrent_one_is_not() -> None:
    occupancy = Occupancy()
    with occupancy.batch() as first, occupancy.batch() as second:
        assert (first, second) == (True, False)
    with occupancy.batch() as again:
        assert again


def test_another_process_computing_makes_a_batch_not_alone() -> None:
    board = mmap.mmap(-1, 4)  # 2 readiness bytes, then 2 busy bytes
    mine, theirs = Occupancy(), Occupancy()
    mine.share(board, 2, 0, 2)
    theirs.share(board, 2, 1, 2)
    with theirs.batch() as their_alone:
        assert their_alone and board[3] == 1
        with mine.batch() as my_alone:
            assert not my_alone
    assert board[2:4] == b"\0\0"
    with mine.batch() as my_alone:
        assert my_alone


def test_wide_session_only_for_single_threaded_cpu_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fusionserve.service.runtimes.onnx.available_cpus", lambda: 8)
    assert lone_batch_threads(config(), DeviceSpec("cpu")) == 8
    assert lone_batch_threads(config(adaptive_intra_op=False), DeviceSpec("cpu")) == 0
    assert lone_batch_threads(config(intra_op_threads=2), DeviceSpec("cpu")) == 0
    assert lone_batch_threads(config(), DeviceSpec("gpu", 0)) == 0
    monkeypatch.setattr("fusionserve.service.runtimes.onnx.available_cpus", lambda: 1)
    assert lone_batch_threads(config(), DeviceSpec("cpu")) == 0


ONE_ROW = {name: value[:1] for name, value in FEEDS.items()}


def test_backend_runs_a_lone_row_wide_and_concurrent_or_bigger_batches_narrow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fusionserve.service.runtimes.onnx.available_cpus", lambda: 2)
    backend = OnnxBackend(config(), text_graph(tmp_path / "model.onnx"), DeviceSpec("cpu"))
    assert backend.wide is not None
    assert backend.wide.get_session_options().intra_op_num_threads == 2
    assert backend.session.get_session_options().intra_op_num_threads == 1
    used: list[str] = []
    for name in ("session", "wide"):
        real = getattr(backend, name)

        class Spy:
            def __init__(self, name: str = name, real: object = real) -> None:
                self.name, self.real = name, real

            def run(self, *args: object) -> object:
                used.append(self.name)
                return self.real.run(*args)  # type: ignore[attr-defined]

        setattr(backend, name, Spy())
    np.testing.assert_array_equal(backend.run(ONE_ROW)["class_logits"], EXPECTED[:1])
    assert used == ["wide"]
    from fusionserve.service.runtimes.occupancy import OCCUPANCY

    with OCCUPANCY.batch():  # another batch computing in this process
        np.testing.assert_array_equal(backend.run(ONE_ROW)["class_logits"], EXPECTED[:1])
    assert used == ["wide", "session"]
    # Two rows are load, not a lone request: one thread even when nothing else computes.
    np.testing.assert_array_equal(backend.run(FEEDS)["class_logits"], EXPECTED)
    assert used == ["wide", "session", "session"]
    backend.close()


def test_concurrent_runs_give_the_same_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fusionserve.service.runtimes.onnx.available_cpus", lambda: 2)
    backend = OnnxBackend(config(), text_graph(tmp_path / "model.onnx"), DeviceSpec("cpu"))
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(50):
                np.testing.assert_array_equal(backend.run(FEEDS)["class_logits"], EXPECTED)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


class _Timed:
    """A session stand-in whose ``run`` takes ``seconds`` (calibration only times the calls)."""

    def __init__(self, real: object, seconds: float) -> None:
        self.real, self.seconds = real, seconds

    def run(self, *args: object) -> object:
        time.sleep(self.seconds)
        return self.real.run(*args)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("wide_s", "kept"), [(0.004, False), (0.001, True)])
def test_calibration_keeps_the_wide_session_only_when_it_is_faster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wide_s: float, kept: bool
) -> None:
    monkeypatch.setattr("fusionserve.service.runtimes.onnx.available_cpus", lambda: 2)
    backend = OnnxBackend(config(), text_graph(tmp_path / "model.onnx"), DeviceSpec("cpu"))
    narrow = backend.session
    backend.session = _Timed(backend.session, 0.003)  # type: ignore[assignment]
    backend.wide = _Timed(backend.wide, wide_s)  # type: ignore[assignment]
    result = backend.calibrate(FEEDS, budget_s=0.05)
    assert result is not None and result.pairs >= 3
    assert result.wide_is_faster is kept
    assert (backend.wide is not None) is kept
    backend.session = narrow
    np.testing.assert_array_equal(backend.run(FEEDS)["class_logits"], EXPECTED)


def test_calibration_needs_a_wide_session(tmp_path: Path) -> None:
    graph = text_graph(tmp_path / "model.onnx")
    backend = OnnxBackend(config(adaptive_intra_op=False), graph, DeviceSpec("cpu"))
    assert backend.wide is None and backend.calibrate(FEEDS) is None


def test_calibrations_of_two_processes_never_overlap(tmp_path: Path) -> None:
    """Each worker process has its own Occupancy; the file lock serialises them (flock locks
    conflict between separate opens, so two objects in one process stand in for two processes)."""
    import mmap
    import threading
    import time

    from fusionserve.service.runtimes.occupancy import Occupancy

    lock_file = tmp_path / "calibrate.lock"
    board = mmap.mmap(-1, 4)
    first, second = Occupancy(), Occupancy()
    first.share(board, 2, 0, 2, lock_file)
    second.share(board, 2, 1, 2, lock_file)
    inside: list[str] = []
    release = threading.Event()

    def hold() -> None:
        with first.calibration():
            inside.append("first in")
            release.wait(10)
            inside.append("first out")

    holder = threading.Thread(target=hold)
    holder.start()
    while not inside:
        time.sleep(0.01)

    def enter() -> None:
        with second.calibration():
            inside.append("second in")

    waiter = threading.Thread(target=enter)
    waiter.start()
    time.sleep(0.2)
    assert inside == ["first in"]  # the second process waits while the first calibrates
    release.set()
    holder.join(10)
    waiter.join(10)
    assert inside == ["first in", "first out", "second in"]
