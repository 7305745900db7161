"""The GPU path's ONNX Runtime options, checked without a GPU: what reaches the providers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fusionserve.service.model.config import ModelConfig
from fusionserve.service.runtimes import DeviceSpec
from fusionserve.service.runtimes.gpu_options import input_shapes, tensorrt_options
from fusionserve.service.runtimes.onnx import OnnxBackend, requested_providers
from tests.unit.test_runtimes import CONFIG, EXPECTED, FEEDS, text_graph

TRIMODAL = {
    "name": "fusion",
    "task": "classify",
    "modalities": {
        "image": {"height": 28, "width": 28},
        "audio": {"sample_rate": 16000, "max_samples": 16000, "min_samples": 400},
        "text": {"max_tokens": 16},
    },
    "outputs": [{"name": "class_logits", "kind": "logits", "dims": 10}],
    "batching": {"max_batch_size": 32, "preferred_batch_sizes": [8, 16]},
    "onnx": {"use_tensorrt": True, "fp16": True},
}


def test_one_profile_covers_every_batch_the_batcher_makes(tmp_path: Path) -> None:
    options = tensorrt_options(ModelConfig.model_validate(TRIMODAL), 2, tmp_path)
    assert options["device_id"] == 2
    assert options["trt_profile_min_shapes"] == (
        "image:1x28x28x3,image_mask:1,audio:1x400,audio_length:1,audio_mask:1,"
        "text_ids:1x1,text_attention:1x1,text_mask:1"
    )
    assert options["trt_profile_max_shapes"] == (
        "image:32x28x28x3,image_mask:32,audio:32x16000,audio_length:32,audio_mask:32,"
        "text_ids:32x16,text_attention:32x16,text_mask:32"
    )
    assert options["trt_profile_opt_shapes"].startswith("image:16x28x28x3,")  # the largest preferred size


def test_engines_are_cached_per_model_and_fp16_follows_the_config(tmp_path: Path) -> None:
    options = tensorrt_options(ModelConfig.model_validate(TRIMODAL), 0, tmp_path)
    assert options["trt_engine_cache_enable"] is True
    assert options["trt_engine_cache_path"] == str(tmp_path / "fusion")
    assert options["trt_timing_cache_enable"] is True
    assert options["trt_fp16_enable"] is True
    plain = ModelConfig.model_validate({**TRIMODAL, "onnx": {"use_tensorrt": True}})
    assert tensorrt_options(plain, 0, tmp_path)["trt_fp16_enable"] is False


def test_the_configured_cache_dir_reaches_the_provider(tmp_path: Path) -> None:
    config = ModelConfig.model_validate(
        {**TRIMODAL, "onnx": {"use_tensorrt": True, "tensorrt_cache_dir": str(tmp_path)}}
    )
    name, options = requested_providers(config, DeviceSpec("gpu", 0))[0]  # type: ignore[misc]
    assert name == "TensorrtExecutionProvider"
    assert options["trt_engine_cache_path"] == str(tmp_path / "fusion")


def test_default_cache_dir_is_under_fusionserve_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSIONSERVE_HOME", str(tmp_path))
    config = ModelConfig.model_validate(TRIMODAL)
    _, options = requested_providers(config, DeviceSpec("gpu", 0))[0]  # type: ignore[misc]
    assert options["trt_engine_cache_path"] == str(tmp_path / "tensorrt-engines" / "fusion")


def test_shapes_follow_the_modalities_present() -> None:
    text_only = ModelConfig.model_validate({**CONFIG, "backend": "onnx"})
    assert input_shapes(text_only, 4, long=True) == {
        "text_ids": (4, 8),
        "text_attention": (4, 8),
        "text_mask": (4,),
    }


def test_io_binding_gives_the_same_answers(tmp_path: Path) -> None:
    """The bound path, run on a CPU session (on a GPU the outputs bind to "cuda")."""
    config = ModelConfig.model_validate({**CONFIG, "backend": "onnx"})
    backend = OnnxBackend(config, text_graph(tmp_path / "model.onnx"), DeviceSpec("cpu"))
    assert backend.binding_device is None  # CPU sessions run plainly
    backend.binding_device = "cpu"
    out = backend.run(FEEDS)
    np.testing.assert_array_equal(out["class_logits"], EXPECTED)
    backend.close()
