"""What a GPU instance asks ONNX Runtime for: TensorRT engines that are built once, CUDA options.

TensorRT builds an engine per input shape it meets unless it is told the
range up front. The batcher makes batches of 1..``max_batch_size`` rows, text
of 1..``max_tokens`` tokens and audio of ``min_samples``..``max_samples``
samples, so each instance declares one optimisation profile covering exactly
that (``trt_profile_min/opt/max_shapes``) and caches built engines on disk
(``trt_engine_cache_path``, plus the timing cache): a restart or a second
instance reuses them instead of rebuilding for minutes. ``onnx.fp16`` lets
TensorRT build fp16 kernels. Inputs and outputs of GPU sessions go through
IO binding (``OnnxBackend``): inputs copied to the device once, outputs copied
back once. Only the option dictionaries live here, so they are unit-tested
without a GPU; docs/performance.md says what has and has not run on one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fusionserve.service.model.config import ModelConfig


def input_shapes(config: ModelConfig, batch: int, long: bool) -> dict[str, tuple[int, ...]]:
    """Every graph input's shape for ``batch`` rows, variable axes at their shortest or longest."""
    shapes: dict[str, tuple[int, ...]] = {}
    m = config.modalities
    if m.image is not None:
        shapes["image"] = (batch, m.image.height, m.image.width, 3)
        shapes["image_mask"] = (batch,)
    if m.audio is not None:
        samples = m.audio.max_samples if long else min(m.audio.min_samples, m.audio.max_samples)
        shapes["audio"] = (batch, samples)
        shapes["audio_length"] = (batch,)
        shapes["audio_mask"] = (batch,)
    if m.text is not None:
        tokens = m.text.max_tokens if long else 1
        shapes["text_ids"] = (batch, tokens)
        shapes["text_attention"] = (batch, tokens)
        shapes["text_mask"] = (batch,)
    return {name: shapes[name] for name in config.graph_input_names() if name in shapes}


def _profile(shapes: dict[str, tuple[int, ...]]) -> str:
    """TensorRT's profile syntax: ``name:1x28x28x3,other:1``."""
    return ",".join(f"{name}:{'x'.join(map(str, dims))}" for name, dims in shapes.items())


def tensorrt_options(config: ModelConfig, device_index: int, cache_dir: Path) -> dict[str, Any]:
    """TensorRT provider options: device, one profile for the batcher's shapes, engine cache, fp16."""
    largest = config.batching.max_batch_size
    typical = max(config.batching.preferred_batch_sizes or [largest])
    engines = cache_dir / config.name
    return {
        "device_id": device_index,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(engines),
        "trt_fp16_enable": config.onnx.fp16,
        "trt_profile_min_shapes": _profile(input_shapes(config, 1, long=False)),
        "trt_profile_opt_shapes": _profile(input_shapes(config, typical, long=True)),
        "trt_profile_max_shapes": _profile(input_shapes(config, largest, long=True)),
    }


def cuda_options(device_index: int) -> dict[str, Any]:
    """CUDA provider options (the fallback behind TensorRT, or the only GPU provider)."""
    return {"device_id": device_index}
