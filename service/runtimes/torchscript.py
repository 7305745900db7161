"""TorchScript backend: one ``torch.jit`` module per instance, on its device.

torch is imported here, lazily, and nowhere else on the serving path: a server
that only serves ONNX models never loads it.

Inputs are passed positionally in the config's order
(``ModelConfig.graph_input_names``); the module's ``forward`` argument names
are checked against that order at load, so a reordered export fails loudly
instead of silently swapping tensors. The module may return one tensor (one
declared output), a tuple/list in the config's output order, or a dict keyed
by output name.

Threads: ``torch.set_num_threads`` is process-wide, so one model's config must
not set it for every other model; we leave torch's intra-op pool at its
default. ``config.onnx`` thread options apply to ONNX Runtime only.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import ConfigError, InternalError
from service.model.config import ModelConfig
from service.runtimes.base import DeviceSpec, check_input_names

log = logging.getLogger(__name__)


def _quiet_load(torch: Any, path: Path, device: str) -> Any:
    """``torch.jit.load`` without its deprecation warning (we chose TorchScript on purpose)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.load.* is deprecated", category=DeprecationWarning
        )
        return torch.jit.load(str(path), map_location=device)


class TorchScriptBackend:
    """A model instance running a TorchScript module."""

    def __init__(self, config: ModelConfig, model_path: Path, device: DeviceSpec) -> None:
        import torch  # lazy on purpose: see the module docstring

        self._torch = torch
        self.input_names = config.graph_input_names()
        self.output_names = [o.name for o in config.outputs]
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
        self._check_signature()
        log.info("%s: TorchScript module on %s", self._file, self.device)

    def _check_signature(self) -> None:
        schema = getattr(getattr(self.module, "forward", None), "schema", None)
        if schema is None:
            return  # not introspectable; calls will fail loudly if it is wrong
        names = [a.name for a in schema.arguments][1:]  # drop self
        check_input_names(self.input_names, names, self._file)
        if names != self.input_names:
            raise ConfigError(
                f"{self._file}: forward takes {names}, but inputs are passed positionally in the "
                f"config's order {self.input_names}",
                file=self._file,
            )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch under ``inference_mode``; outputs come back as numpy on the CPU."""
        torch = self._torch
        with torch.inference_mode():
            args = [
                torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self.input_names
            ]
            result = self.module(*args)
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
        if isinstance(result, (tuple, list)) and len(result) == len(self.output_names):
            return dict(zip(self.output_names, result, strict=True))
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
