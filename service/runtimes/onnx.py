"""ONNX Runtime backend: one ``InferenceSession`` per instance.

Providers follow the instance's device: a GPU instance asks for TensorRT
(only when ``onnx.use_tensorrt``), then CUDA on its device id, then CPU. ORT
silently falls back to CPU when CUDA cannot be used, so after creating the
session we read ``session.get_providers()`` — what it really uses — log a
warning on fallback, and report the truth in :attr:`OnnxBackend.device`.

This module never imports torch: serving an ONNX model must not need it.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.errors import ConfigError
from service.model.config import INPUT_DTYPES, ModelConfig
from service.runtimes.base import DeviceSpec, check_input_names, check_output_names

log = logging.getLogger(__name__)

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

#: ORT's type strings for the contract's dtypes.
_ORT_TYPES = {
    np.uint8: "tensor(uint8)",
    np.bool_: "tensor(bool)",
    np.float32: "tensor(float)",
    np.int64: "tensor(int64)",
}

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

ProviderList = list[str | tuple[str, dict[str, Any]]]


def requested_providers(config: ModelConfig, device: DeviceSpec) -> ProviderList:
    """The provider list we ask ORT for, best first (before availability)."""
    if device.kind == "cpu":
        return ["CPUExecutionProvider"]
    providers: ProviderList = []
    if config.onnx.use_tensorrt:
        providers.append(("TensorrtExecutionProvider", {"device_id": device.index}))
    providers.append(("CUDAExecutionProvider", {"device_id": device.index}))
    providers.append("CPUExecutionProvider")
    return providers


@functools.cache
def preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN from the ``nvidia-*`` pip packages (or torch's) once.

    ``onnxruntime-gpu`` installed from PyPI does not find the CUDA libraries
    that pip put in site-packages on its own: without this, a pip-only GPU
    host silently gets a CPU session. Hosts with CUDA on the loader path (the
    CUDA base images) need nothing, so a failure here is only logged.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:  # onnxruntime-gpu < 1.21
        return
    try:
        preload()
    except Exception as exc:  # best effort: the session still tries the loader path
        log.warning("onnxruntime.preload_dlls() failed (%s); relying on the library path", exc)


def _provider_name(p: str | tuple[str, dict[str, Any]]) -> str:
    return p if isinstance(p, str) else p[0]


def session_options(config: ModelConfig) -> ort.SessionOptions:
    """Thread counts and optimisation level from ``config.onnx`` (0 = ORT default)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = config.onnx.intra_op_threads
    opts.inter_op_num_threads = config.onnx.inter_op_threads
    opts.graph_optimization_level = _OPT_LEVELS[config.onnx.graph_optimization]
    spin = "1" if config.onnx.allow_spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return opts


class OnnxBackend:
    """A model instance on ONNX Runtime."""

    def __init__(self, config: ModelConfig, model_path: Path, device: DeviceSpec) -> None:
        self.input_names = config.graph_input_names()
        self.output_names = [o.name for o in config.outputs]
        self._file = model_path.name
        self.session = self._open(config, model_path, device)
        self.providers: list[str] = list(self.session.get_providers())
        self.device = self._real_device(device)
        self._check_graph()

    def _open(self, config: ModelConfig, model_path: Path, device: DeviceSpec) -> ort.InferenceSession:
        available = set(ort.get_available_providers())
        if device.kind == "gpu" and "CUDAExecutionProvider" in available:
            preload_cuda_libraries()
        wanted = requested_providers(config, device)
        usable = [p for p in wanted if _provider_name(p) in available]
        missing = [_provider_name(p) for p in wanted if _provider_name(p) not in available]
        if missing:
            log.warning(
                "model %s: providers %s are not available in this onnxruntime build (available: %s)",
                config.name,
                missing,
                sorted(available),
            )
        try:
            return ort.InferenceSession(
                str(model_path), sess_options=session_options(config), providers=usable
            )
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise ConfigError(
                f"{model_path}: onnxruntime cannot load the graph: {exc}", file=str(model_path)
            ) from exc

    def _real_device(self, device: DeviceSpec) -> str:
        """The device the session really runs on, warning on a silent CPU fallback."""
        first = self.providers[0] if self.providers else "CPUExecutionProvider"
        if device.kind == "gpu" and first not in _GPU_PROVIDERS:
            log.warning(
                "%s: GPU %d was requested but the session runs on %s (providers in use: %s)",
                self._file,
                device.index,
                first,
                self.providers,
            )
            return "cpu"
        log.info("%s: session providers in use: %s", self._file, self.providers)
        return str(device)

    def _check_graph(self) -> None:
        inputs = {i.name: i.type for i in self.session.get_inputs()}
        check_input_names(self.input_names, list(inputs), self._file)
        for name in self.input_names:
            want = _ORT_TYPES[INPUT_DTYPES[name]]
            if inputs[name] != want:
                raise ConfigError(
                    f"graph input {name!r} in {self._file} has type {inputs[name]}, the contract says {want}",
                    file=self._file,
                    field=name,
                )
        check_output_names(self.output_names, [o.name for o in self.session.get_outputs()], self._file)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns only the outputs the config declares."""
        results = self.session.run(self.output_names, {n: feeds[n] for n in self.input_names})
        return {n: np.ascontiguousarray(r) for n, r in zip(self.output_names, results, strict=True)}

    def close(self) -> None:
        """Drop the session; ORT frees its memory when the last reference goes."""
        self.__dict__.pop("session", None)
