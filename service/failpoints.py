"""Failpoints: deterministic fault injection for tests and drills, off by default.

Set ``FUSIONSERVE_FAILPOINTS`` (read by ``fusionserve.service.config``) to a ``;``-separated
list; nothing here runs unless it is set:

- ``gate=PATH``: every compute call waits until the file PATH exists, and
  while one waits the file ``PATH.held`` exists. Lets a test hold batches in
  flight (queue full, deadlines, draining) and know that it does, without
  relying on timing.
- ``fail=MODEL:N``: the N-th compute call of MODEL (1-based, warm-up calls
  included) raises, as a crashing instance would; the calls after it succeed.
- ``hang=MODEL:N``: the N-th compute call of MODEL never returns (a runtime
  stuck in a kernel); the calls after it run normally.
- ``slow_load=MODEL:MS``: creating each backend of MODEL takes MS ms more (a
  slow warm-up: the model stays LOADING that long).

They wrap a backend (``wrap_backend``), so the worker pool and the runtimes
carry no test code.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusionserve.service.runtimes.base import Backend


class InjectedFault(RuntimeError):
    """Raised by the ``fail`` failpoint."""


@dataclass
class Failpoints:
    gate: Path | None = None
    fail_call: dict[str, int] = field(default_factory=dict)
    hang_call: dict[str, int] = field(default_factory=dict)
    slow_load_ms: dict[str, float] = field(default_factory=dict)
    _calls: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def before_compute(self, model: str) -> None:
        if self.gate is not None and not self.gate.exists():
            held = self.gate.with_name(self.gate.name + ".held")
            held.touch()
            while not self.gate.exists():
                time.sleep(0.005)
            held.unlink(missing_ok=True)
        with self._lock:
            self._calls[model] = call = self._calls.get(model, 0) + 1
        if self.fail_call.get(model) == call:
            raise InjectedFault(f"failpoint: injected compute failure for {model} (call {call})")
        if self.hang_call.get(model) == call:
            threading.Event().wait()  # never set: this call never returns

    def before_load(self, model: str) -> None:
        delay = self.slow_load_ms.get(model)
        if delay:
            time.sleep(delay / 1000)


def parse_failpoints(spec: str | None) -> Failpoints | None:
    if not spec:
        return None
    points = Failpoints()
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        key, _, value = item.partition("=")
        if key == "gate":
            points.gate = Path(value)
        elif key in ("fail", "hang"):
            model, _, call = value.rpartition(":")
            (points.fail_call if key == "fail" else points.hang_call)[model] = int(call)
        elif key == "slow_load":
            model, _, ms = value.rpartition(":")
            points.slow_load_ms[model] = float(ms)
        else:
            raise ValueError(f"unknown failpoint {key!r} in FUSIONSERVE_FAILPOINTS")
    return points


class FailpointBackend:
    """A backend that consults the failpoints before each compute."""

    def __init__(self, inner: Backend, points: Failpoints, model: str) -> None:
        self._inner = inner
        self._points = points
        self._model = model
        self.input_names = inner.input_names
        self.output_names = inner.output_names
        self.device = inner.device

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._points.before_compute(self._model)
        return self._inner.run(feeds)

    def close(self) -> None:
        self._inner.close()


def wrap_backend(backend: Backend, points: Failpoints | None, model: str) -> Backend:
    if points is None:
        return backend
    points.before_load(model)
    return FailpointBackend(backend, points, model)
