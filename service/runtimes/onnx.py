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
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from fusionserve.service.config import default_engine_cache_dir
from fusionserve.service.cpus import available_cpus, limited_cpus
from fusionserve.service.errors import ConfigError
from fusionserve.service.model.config import ModelConfig
from fusionserve.service.model.graph import TensorInfo, check_graph
from fusionserve.service.runtimes.base import DeviceSpec
from fusionserve.service.runtimes.gpu_options import cuda_options, tensorrt_options
from fusionserve.service.runtimes.occupancy import OCCUPANCY

log = logging.getLogger(__name__)

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

#: ORT's type strings → numpy dtype names (what configs say).
_ORT_TYPES = {
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(bool)": "bool",
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

ProviderList = list[str | tuple[str, dict[str, Any]]]


def requested_providers(config: ModelConfig, device: DeviceSpec) -> ProviderList:
    """The provider list we ask ORT for, best first (before availability)."""
    if device.kind == "cpu":
        return ["CPUExecutionProvider"]
    providers: ProviderList = []
    if config.onnx.use_tensorrt:
        cache = Path(config.onnx.tensorrt_cache_dir or default_engine_cache_dir())
        providers.append(("TensorrtExecutionProvider", tensorrt_options(config, device.index, cache)))
    providers.append(("CUDAExecutionProvider", cuda_options(device.index)))
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


def lone_batch_threads(config: ModelConfig, device: DeviceSpec) -> int:
    """Intra-op threads of the wide session a lone batch runs on; 0 = no wide session.

    Only for CPU instances whose own sessions are single-threaded (the default
    layout: several instances side by side), and only with cores to spare.
    """
    if device.kind != "cpu" or not config.onnx.adaptive_intra_op or config.onnx.intra_op_threads != 1:
        return 0
    cores = available_cpus()
    return cores if cores > 1 else 0


#: The wide session is kept when a lone batch's median time on it is below
#: this share of the single-threaded session's.
WIDE_GAIN = 0.9
#: Pairs of runs at most in :meth:`OnnxBackend.calibrate`.
CALIBRATION_RUNS = 30
#: Idle time before each timed calibration run: a lone request meets sleeping threads.
CALIBRATION_GAP_S = 0.003


@dataclass(frozen=True)
class Calibration:
    """A lone batch's median seconds on one thread and on every core."""

    narrow_s: float
    wide_s: float
    pairs: int

    @property
    def wide_is_faster(self) -> bool:
        return self.wide_s < WIDE_GAIN * self.narrow_s


def _rows(inputs: dict[str, np.ndarray]) -> int:
    """The batch's rows: every input's first dimension."""
    first = next(iter(inputs.values()), None)
    return 1 if first is None or first.ndim == 0 else int(first.shape[0])


def _threads(configured: int) -> int:
    """A thread count for ORT: as configured, else ORT's default (0), which counts the host's cores,
    unless affinity or the cgroup quota allow fewer (then that many)."""
    return configured or limited_cpus() or 0


def session_options(config: ModelConfig, intra_op_threads: int | None = None) -> ort.SessionOptions:
    """Thread counts and optimisation level from ``config.onnx`` (0: see ``_threads``)."""
    opts = ort.SessionOptions()
    intra = config.onnx.intra_op_threads if intra_op_threads is None else intra_op_threads
    opts.intra_op_num_threads = _threads(intra)
    opts.inter_op_num_threads = _threads(config.onnx.inter_op_threads)
    opts.graph_optimization_level = _OPT_LEVELS[config.onnx.graph_optimization]
    spin = "1" if config.onnx.allow_spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return opts


def _describe(args: list[Any]) -> list[TensorInfo]:
    """ORT's ``NodeArg`` list as :class:`TensorInfo` (symbolic or unknown axes → ``None``)."""
    return [
        TensorInfo(
            a.name,
            _ORT_TYPES.get(a.type, a.type),
            None if a.shape is None else tuple(d if isinstance(d, int) else None for d in a.shape),
        )
        for a in args
    ]


class OnnxBackend:
    """A model instance on ONNX Runtime."""

    def __init__(self, config: ModelConfig, model_path: Path, device: DeviceSpec) -> None:
        self.input_names = config.graph_input_names()
        self.output_names = [o.name for o in config.outputs]
        self._file = model_path.name
        self.session = self._open(config, model_path, device)
        self.providers: list[str] = list(self.session.get_providers())
        self.device = self._real_device(device)
        check_graph(
            config, _describe(self.session.get_inputs()), _describe(self.session.get_outputs()), model_path
        )
        #: IO binding on GPU sessions: ORT's device name for the bound outputs, or None.
        self.binding_device: str | None = None
        if config.onnx.io_binding and self.device != "cpu":
            self.binding_device = "cuda"
        self._device_index = device.index
        #: A second session on every core for a batch that computes alone (occupancy.py).
        self.wide: ort.InferenceSession | None = None
        threads = lone_batch_threads(config, device)
        if threads:
            self.wide = self._open(config, model_path, device, threads)

    def _open(
        self, config: ModelConfig, model_path: Path, device: DeviceSpec, intra_op_threads: int | None = None
    ) -> ort.InferenceSession:
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
                str(model_path), sess_options=session_options(config, intra_op_threads), providers=usable
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

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns only the outputs the config declares.

        On the wide session when it is a single row and no other batch computes
        anywhere in the server: a lone request. A bigger batch means load, and
        under load batches start alone often enough (one finishing as the next
        one forms) that the wide session took ~500 µs more CPU per request at
        saturation than one thread (``heavy-fusion``, docs/performance.md).
        """
        inputs = {n: feeds[n] for n in self.input_names}
        if self.binding_device is not None:
            results = self._run_bound(inputs)
        elif self.wide is None or _rows(inputs) > 1:
            results = self.session.run(self.output_names, inputs)
        else:
            with OCCUPANCY.batch() as alone:
                session = self.wide if alone else self.session
                results = session.run(self.output_names, inputs)
        return {n: np.ascontiguousarray(r) for n, r in zip(self.output_names, results, strict=True)}

    def calibrate(self, feeds: dict[str, np.ndarray], budget_s: float = 0.3) -> Calibration | None:
        """Keep the wide session only where it makes a lone batch faster; measured, not assumed.

        On a small model (``digits-fusion``: 0.85 ms on one thread) a second
        intra-op thread costs more in hand-offs than it saves, and on a host
        whose cores are busy it waits for one; on a bigger model with idle
        cores it halved a lone request's latency (``heavy-fusion``,
        docs/performance.md). Runs the two sessions in turn
        on ``feeds`` (a warm-up batch of one) for at most ``budget_s`` and drops
        the wide one unless its median is below :data:`WIDE_GAIN` x the
        narrow one's. Called once per instance, after warm-up, on its thread.
        """
        if self.wide is None or self.binding_device is not None:
            return None
        inputs = {n: feeds[n] for n in self.input_names}
        with OCCUPANCY.calibration():  # one at a time server-wide: others' runs would skew the timing
            result = self._time_sessions(inputs, budget_s)
        if not result.wide_is_faster:
            self.wide = None
        return result

    def _time_sessions(self, inputs: dict[str, np.ndarray], budget_s: float) -> Calibration:
        assert self.wide is not None
        sessions = (self.session, self.wide)
        for session in sessions:  # first runs allocate; keep them out of the timing
            session.run(self.output_names, inputs)
        times: tuple[list[float], list[float]] = ([], [])
        stop = time.perf_counter() + budget_s
        while len(times[1]) < CALIBRATION_RUNS and (len(times[1]) < 3 or time.perf_counter() < stop):
            for session, spent in zip(sessions, times, strict=True):
                # As a lone request meets it: after an idle gap, its intra-op threads asleep.
                # Back to back, the wide session won calibrations on heavy-fusion and then
                # lost at one client (docs/performance.md, "Fourth step").
                time.sleep(CALIBRATION_GAP_S)
                start = time.perf_counter()
                session.run(self.output_names, inputs)
                spent.append(time.perf_counter() - start)
        return Calibration(statistics.median(times[0]), statistics.median(times[1]), len(times[1]))

    def _run_bound(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One copy of each input to the device, one copy of each output back (IO binding)."""
        binding = self.session.io_binding()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self.output_names:
            binding.bind_output(name, self.binding_device or "cpu", self._device_index)
        self.session.run_with_iobinding(binding)
        outputs: list[np.ndarray] = binding.copy_outputs_to_cpu()
        return outputs

    def close(self) -> None:
        """Drop the session; ORT frees its memory when the last reference goes."""
        self.__dict__.pop("session", None)
        self.wide = None
