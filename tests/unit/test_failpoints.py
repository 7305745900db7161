"""Failpoints parse strictly and act only as configured."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from fusionserve.service.failpoints import InjectedFault, parse_failpoints, wrap_backend


class Echo:
    input_names = ["text_ids"]
    output_names = ["out"]
    device = "cpu"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"out": feeds["text_ids"]}

    def close(self) -> None:
        pass


def test_unset_means_no_wrapping() -> None:
    backend = Echo()
    assert parse_failpoints(None) is None
    assert wrap_backend(backend, None, "m") is backend


def test_unknown_failpoint_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown failpoint"):
        parse_failpoints("explode=1")


def test_fail_raises_on_the_nth_call_only() -> None:
    backend = wrap_backend(Echo(), parse_failpoints("fail=m:2"), "m")
    feeds = {"text_ids": np.ones((1, 2), dtype=np.int64)}
    backend.run(feeds)
    with pytest.raises(InjectedFault):
        backend.run(feeds)
    assert backend.run(feeds)["out"].shape == (1, 2)


def test_gate_blocks_until_file_exists(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    backend = wrap_backend(Echo(), parse_failpoints(f"gate={gate}"), "m")
    done = threading.Event()

    def call() -> None:
        backend.run({"text_ids": np.ones((1, 1), dtype=np.int64)})
        done.set()

    worker = threading.Thread(target=call)
    worker.start()
    assert not done.wait(0.1)
    gate.touch()
    worker.join(5)
    assert done.is_set()
