"""TorchScript backend: one ``torch.jit`` module per instance, on its device.

torch is imported here, lazily, and nowhere else on the serving path: a server
that only serves ONNX models never loads it.

Inputs are passed by name: each graph input the config maps
(``ModelConfig.graph_input_names``) must be an argument of ``forward``, checked
at load, and ``forward`` may take them in any order (an argument with a
default value may stay unmapped). The module may return one tensor (one
declared output), a tuple/list (in the config's output order, or at each
output's ``index``), or a dict keyed by output name. TorchScript is deprecated
upstream; ONNX is the recommended format (docs/model-config.md).

Threads: ``torch.set_num_threads`` is process-wide, so one model's config must
not set it for every other model; we leave torch's pools at their default
(the host's cores, or ``OMP_NUM_THREADS``), only capped by the CPUs the
affinity and cgroup quota allow (``fit_threads``). ``config.onnx`` thread
options apply to ONNX Runtime only.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fusionserve.service.cpus import limited_cpus
from fusionserve.service.errors import ConfigError, InternalError
from fusionserve.service.model.config import ModelConfig
from fusionserve.service.model.graph import TensorInfo, check_graph
from fusionserve.service.runtimes.base import DeviceSpec

log = logging.getLogger(__name__)


def _quiet_load(torch: Any, path: Path, device: str) -> Any:
    """``torch.jit.load`` without its deprecation warning (we chose TorchScript on purpose)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.load.* is deprecated", category=DeprecationWarning
        )
        return torch.jit.load(str(path), map_location=device)


def fit_threads(torch: Any) -> None:
    """Cap torch's thread pools at the CPUs allowed: its default counts the host's cores, not the quota."""
    allowed = limited_cpus()
    if allowed is None:
        return
    if torch.get_num_threads() > allowed:
        torch.set_num_threads(allowed)
    if torch.get_num_interop_threads() > allowed:
        with contextlib.suppress(RuntimeError):  # settable only before torch's first parallel work
            torch.set_num_interop_threads(allowed)


class TorchScriptBackend:
    """A model instance running a TorchScript module."""

    def __init__(self, config: ModelConfig, model_path: Path, device: DeviceSpec) -> None:
        import torch  # lazy on purpose: see the module docstring

        fit_threads(torch)
        self._torch = torch
        self.input_names = config.graph_input_names()
        self.output_names = [o.name for o in config.outputs]
        self._indices = [o.index if o.index is not None else i for i, o in enumerate(config.outputs)]
        self._positional = all(o.index is None for o in config.outputs)
        self._file = model_path.name
        self.device = str(device)
        if device.kind == "gpu" and not torch.cuda.is_available():
            raise ConfigError(
                f"{model_path}: GPU {device.index} requested but torch has no CUDA device",
                file=str(model_path),
            )
        try:
            self.module = _quiet_load(torch, model_path, self.device)
        except Exception as exc:  # torch raises RuntimeError/ValueError subclasses of many kinds
            raise ConfigError(
                f"{model_path}: torch cannot load the module: {exc}", file=str(model_path)
            ) from exc
        self.module.eval()
        self._check_signature(config, model_path)
        log.info("%s: TorchScript module on %s", self._file, self.device)

    def _check_signature(self, config: ModelConfig, model_path: Path) -> None:
        """Every mapped input is a ``forward`` argument; every argument without a default is mapped."""
        schema = getattr(getattr(self.module, "forward", None), "schema", None)
        if schema is None:
            return  # not introspectable; calls will fail loudly if it is wrong
        arguments = schema.arguments[1:]  # drop self
        mapped = set(self.input_names)
        inputs = [TensorInfo(a.name) for a in arguments if a.name in mapped or not a.has_default_value()]
        check_graph(config, inputs, None, model_path)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch under ``inference_mode``; outputs come back as numpy on the CPU."""
        torch = self._torch
        with torch.inference_mode():
            kwargs = {
                n: torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self.input_names
            }
            result = self.module(**kwargs)
            return {
                n: np.ascontiguousarray(t.detach().cpu().numpy()) for n, t in self._by_name(result).items()
            }

    def _by_name(self, result: Any) -> dict[str, Any]:
        torch = self._torch
        if isinstance(result, torch.Tensor):
            result = (result,)
        if isinstance(result, dict):
            missing = [n for n in self.output_names if n not in result]
            if missing:
                raise InternalError(f"{self._file} returned no output {missing} (it returned {list(result)})")
            return {n: result[n] for n in self.output_names}
        if isinstance(result, (tuple, list)) and self._positional and len(result) == len(self.output_names):
            return dict(zip(self.output_names, result, strict=True))
        if isinstance(result, (tuple, list)) and not self._positional and len(result) > max(self._indices):
            return {n: result[i] for n, i in zip(self.output_names, self._indices, strict=True)}
        count = len(result) if isinstance(result, (tuple, list)) else "?"
        raise InternalError(
            f"{self._file} returned a {type(result).__name__} of {count} items; "
            f"the config declares outputs {self.output_names}"
        )

    def close(self) -> None:
        """Drop the module; free cached GPU memory when it lived on a GPU."""
        self.__dict__.pop("module", None)
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
