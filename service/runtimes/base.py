"""The one interface every runtime implements, and the facts they share.

A backend is one loaded model on one device. The worker pool calls
:meth:`Backend.run` from the instance's own thread, so a backend needs no
locking of its own; it must not touch the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from service.errors import ConfigError


@dataclass(frozen=True)
class DeviceSpec:
    """Where one instance runs: the CPU, or GPU number ``index``."""

    kind: Literal["cpu", "gpu"] = "cpu"
    index: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


@runtime_checkable
class Backend(Protocol):
    """One model instance: a session or module on one device."""

    #: Graph inputs, in the config's order (``ModelConfig.graph_input_names``).
    input_names: list[str]
    #: Outputs that :meth:`run` returns, in the config's order.
    output_names: list[str]
    #: Where it really runs: ``"cpu"`` or ``"cuda:N"`` (after any fallback).
    device: str

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; sync, called in the instance's own thread.

        Returns one C-contiguous numpy array per name in ``output_names``,
        each with the batch on axis 0.
        """
        ...

    def close(self) -> None:
        """Release the session or module (and its device memory)."""
        ...


def check_input_names(declared: list[str], found: list[str], model_file: str) -> None:
    """Fail at load, naming the input, when the graph and the config disagree.

    Catching this at load turns a confusing per-request runtime error into one
    clear message while the repository is being read.
    """
    for name in declared:
        if name not in found:
            raise ConfigError(f"graph input {name!r} is missing in {model_file}", file=model_file, field=name)
    for name in found:
        if name not in declared:
            raise ConfigError(
                f"graph has input {name!r} that the config does not declare ({model_file})",
                file=model_file,
                field=name,
            )


def check_output_names(declared: list[str], found: list[str], model_file: str) -> None:
    """Every output the config declares must be one the graph yields."""
    for name in declared:
        if name not in found:
            raise ConfigError(
                f"output {name!r} declared in the config is not an output of {model_file} "
                f"(graph outputs: {found})",
                file=model_file,
                field=name,
            )
