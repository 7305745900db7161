"""Runtimes on real tiny graphs: an ONNX model built with onnx.helper, a scripted torch module."""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from fusionserve.service.errors import ConfigError, InternalError
from fusionserve.service.model.config import ModelConfig
from fusionserve.service.runtimes import Backend, DeviceSpec, load_backend, model_file

ROOT = Path(__file__).resolve().parents[2]

CONFIG = {
    "name": "tiny",
    "task": "classify",
    "modalities": {"text": {"max_tokens": 8}},
    "outputs": [{"name": "class_logits", "kind": "logits", "dims": 2}],
    "onnx": {"intra_op_threads": 1, "inter_op_threads": 1, "graph_optimization": "basic"},
}
TEXT_INPUTS = [
    ("text_ids", TensorProto.INT64, ["B", "L"]),
    ("text_attention", TensorProto.INT64, ["B", "L"]),
    ("text_mask", TensorProto.BOOL, ["B"]),
]


def config(backend: str = "onnx") -> ModelConfig:
    return ModelConfig.model_validate({**CONFIG, "backend": backend})


def text_graph(path: Path, inputs: Sequence[tuple[str, int, list[str]]] = TEXT_INPUTS) -> Path:
    """class_logits[b] = [sum(ids*attention) * mask, mask] — enough to see each row's own answer."""
    names = {n for n, _, _ in inputs}
    nodes = []
    summed = "text_ids"
    if "text_attention" in names:
        nodes.append(helper.make_node("Mul", ["text_ids", "text_attention"], ["masked_ids"]))
        summed = "masked_ids"
    nodes += [
        helper.make_node("ReduceSum", [summed, "axis1"], ["total"], keepdims=1),
        helper.make_node("Cast", ["total"], ["total_f"], to=TensorProto.FLOAT),
    ]
    mask_is_bool = ("text_mask", TensorProto.BOOL, ["B"]) in inputs
    if mask_is_bool:
        nodes += [
            helper.make_node("Unsqueeze", ["text_mask", "axis1"], ["mask_col"]),
            helper.make_node("Cast", ["mask_col"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["total_f", "mask_f"], ["score"]),
            helper.make_node("Concat", ["score", "mask_f"], ["class_logits"], axis=1),
        ]
    else:
        nodes.append(helper.make_node("Concat", ["total_f", "total_f"], ["class_logits"], axis=1))
    graph = helper.make_graph(
        nodes,
        "tiny_text",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, ["B", 2])],
        initializer=[helper.make_tensor("axis1", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


FEEDS = {
    "text_ids": np.array([[1, 2, 3], [4, 5, 0]], dtype=np.int64),
    "text_attention": np.array([[1, 1, 1], [1, 1, 0]], dtype=np.int64),
    "text_mask": np.array([True, False]),
}
EXPECTED = np.array([[6, 1], [0, 0]], dtype=np.float32)


def check_backend(backend: Backend) -> None:
    assert backend.input_names == ["text_ids", "text_attention", "text_mask"]
    assert backend.output_names == ["class_logits"]
    out = backend.run(FEEDS)
    assert list(out) == ["class_logits"]
    assert out["class_logits"].flags.c_contiguous
    np.testing.assert_array_equal(out["class_logits"], EXPECTED)


# -- ONNX -----------------------------------------------------------------


def test_onnx_backend_loads_and_runs(tmp_path: Path) -> None:
    backend = load_backend(config(), text_graph(tmp_path / "model.onnx"), DeviceSpec("cpu"))
    assert isinstance(backend, Backend)
    assert backend.device == "cpu"
    check_backend(backend)
    backend.close()


def test_onnx_session_options_come_from_config(tmp_path: Path) -> None:
    from fusionserve.service.runtimes.onnx import OnnxBackend

    backend = load_backend(config(), text_graph(tmp_path / "model.onnx"), DeviceSpec("cpu"))
    assert isinstance(backend, OnnxBackend)
    opts = backend.session.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert backend.providers == ["CPUExecutionProvider"]


def test_onnx_missing_graph_input_names_it(tmp_path: Path) -> None:
    path = text_graph(tmp_path / "model.onnx", [TEXT_INPUTS[0], TEXT_INPUTS[2]])
    with pytest.raises(ConfigError, match=r"graph input 'text_attention' is missing in model\.onnx"):
        load_backend(config(), path, DeviceSpec("cpu"))


def test_onnx_undeclared_graph_input_names_it(tmp_path: Path) -> None:
    path = text_graph(tmp_path / "model.onnx", [*TEXT_INPUTS, ("foo", TensorProto.FLOAT, ["B"])])
    with pytest.raises(ConfigError, match="graph has input 'foo' that the config does not declare"):
        load_backend(config(), path, DeviceSpec("cpu"))


def test_onnx_wrong_input_dtype_names_it(tmp_path: Path) -> None:
    inputs = [*TEXT_INPUTS[:2], ("text_mask", TensorProto.FLOAT, ["B"])]
    with pytest.raises(
        ConfigError,
        match=r"config\.yaml: modalities\.text\.mask_input: config says bool, graph input 'text_mask' "
        r"in model\.onnx is float32",
    ):
        load_backend(config(), text_graph(tmp_path / "model.onnx", inputs), DeviceSpec("cpu"))


def test_onnx_missing_declared_output_is_a_config_error(tmp_path: Path) -> None:
    data = {**CONFIG, "outputs": [{"name": "scores", "kind": "logits", "dims": 2}]}
    with pytest.raises(ConfigError, match="'scores'"):
        load_backend(ModelConfig.model_validate(data), text_graph(tmp_path / "model.onnx"), DeviceSpec("cpu"))


def test_onnx_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a graph")
    with pytest.raises(ConfigError, match="onnxruntime cannot load"):
        load_backend(config(), path, DeviceSpec("cpu"))


def test_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_backend(config(), tmp_path / "model.onnx", DeviceSpec("cpu"))


def test_model_file_follows_the_backend(tmp_path: Path) -> None:
    assert model_file(config("onnx"), tmp_path) == tmp_path / "model.onnx"
    assert model_file(config("torchscript"), tmp_path) == tmp_path / "model.pt"


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CPU-only build")
def test_gpu_request_on_cpu_build_falls_back_visibly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fusionserve.service.runtimes.onnx")
    backend = load_backend(config(), text_graph(tmp_path / "model.onnx"), DeviceSpec("gpu", 0))
    assert backend.device == "cpu"
    assert "runs on CPUExecutionProvider" in caplog.text
    check_backend(backend)


def test_cuda_libraries_are_preloaded_once_and_failures_only_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from fusionserve.service.runtimes import onnx as onnx_runtime

    calls: list[str] = []

    def preload() -> None:
        calls.append("preload")
        raise OSError("libcudnn.so.9: cannot open shared object file")

    monkeypatch.setattr(ort, "preload_dlls", preload, raising=False)
    onnx_runtime.preload_cuda_libraries.cache_clear()
    with caplog.at_level(logging.WARNING):
        onnx_runtime.preload_cuda_libraries()
        onnx_runtime.preload_cuda_libraries()
    onnx_runtime.preload_cuda_libraries.cache_clear()
    assert calls == ["preload"]
    assert "libcudnn.so.9" in caplog.text


def test_gpu_providers_are_requested_in_order() -> None:
    from fusionserve.service.runtimes.onnx import requested_providers

    trt = ModelConfig.model_validate({**CONFIG, "onnx": {"use_tensorrt": True}})
    providers = requested_providers(trt, DeviceSpec("gpu", 1))
    assert [p if isinstance(p, str) else p[0] for p in providers] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert providers[0][1]["device_id"] == 1  # type: ignore[index]
    assert providers[1] == ("CUDAExecutionProvider", {"device_id": 1})
    assert requested_providers(config(), DeviceSpec("gpu", 0))[0] == (
        "CUDAExecutionProvider",
        {"device_id": 0},
    )
    assert requested_providers(trt, DeviceSpec("cpu")) == ["CPUExecutionProvider"]


def test_serving_onnx_never_imports_torch(tmp_path: Path) -> None:
    path = text_graph(tmp_path / "model.onnx")
    script = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        import numpy as np
        import fusionserve.service.runtimes, fusionserve.service.batching, fusionserve.service.workers
        from fusionserve.service.model.config import ModelConfig
        from fusionserve.service.runtimes import DeviceSpec, load_backend
        backend = load_backend(ModelConfig.model_validate(json.loads(sys.argv[1])), Path(sys.argv[2]),
                               DeviceSpec("cpu"))
        feeds = {"text_ids": np.ones((1, 2), np.int64), "text_attention": np.ones((1, 2), np.int64),
                 "text_mask": np.ones(1, bool)}
        assert backend.run(feeds)["class_logits"].tolist() == [[2.0, 1.0]]
        print("torch" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(CONFIG), str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "False"


# -- TorchScript ----------------------------------------------------------


TORCH_MODULES = """
import torch


class TinyText(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("one", torch.ones(1))  # shows where the module was placed

    def forward(self, text_ids: torch.Tensor, text_attention: torch.Tensor, text_mask: torch.Tensor):
        total = (text_ids * text_attention).sum(1, keepdim=True).float() * self.one
        mask = text_mask.unsqueeze(1).float()
        return torch.cat([total * mask, mask], dim=1)


class TinyDict(torch.nn.Module):
    def forward(self, text_ids: torch.Tensor, text_attention: torch.Tensor, text_mask: torch.Tensor):
        return {"class_logits": torch.cat([(text_ids * text_attention).sum(1, keepdim=True).float()
                                           * text_mask.unsqueeze(1).float(),
                                           text_mask.unsqueeze(1).float()], dim=1)}


class Reordered(torch.nn.Module):
    def forward(self, text_mask: torch.Tensor, text_ids: torch.Tensor, text_attention: torch.Tensor):
        return text_ids.float()


class TwoOutputs(torch.nn.Module):
    def forward(self, text_ids: torch.Tensor, text_attention: torch.Tensor, text_mask: torch.Tensor):
        return text_ids.float(), text_ids.float()
"""


def save_module(tmp_path: Path, cls: str) -> Path:
    """Script one module from a real source file (TorchScript needs source) and save it."""
    torch = pytest.importorskip("torch")
    source = tmp_path / "tiny_modules.py"
    source.write_text(TORCH_MODULES)
    sys.path.insert(0, str(tmp_path))
    sys.modules.pop("tiny_modules", None)
    try:
        module = importlib.import_module("tiny_modules")
        with pytest.warns(DeprecationWarning):
            scripted = torch.jit.script(getattr(module, cls)())
        path = tmp_path / "model.pt"
        with pytest.warns(DeprecationWarning):
            torch.jit.save(scripted, str(path))
        return path
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tiny_modules", None)


@pytest.mark.parametrize("cls", ["TinyText", "TinyDict"])
def test_torchscript_backend_loads_and_runs(tmp_path: Path, cls: str) -> None:
    backend = load_backend(config("torchscript"), save_module(tmp_path, cls), DeviceSpec("cpu"))
    assert backend.device == "cpu"
    check_backend(backend)
    backend.close()


def test_torchscript_inputs_go_by_name_in_any_order(tmp_path: Path) -> None:
    backend = load_backend(config("torchscript"), save_module(tmp_path, "Reordered"), DeviceSpec("cpu"))
    ids = FEEDS["text_ids"]
    assert np.array_equal(backend.run(FEEDS)["class_logits"], ids.astype(np.float32))


def test_torchscript_wrong_output_count_is_an_internal_error(tmp_path: Path) -> None:
    backend = load_backend(config("torchscript"), save_module(tmp_path, "TwoOutputs"), DeviceSpec("cpu"))
    with pytest.raises(InternalError, match="2 items"):
        backend.run(FEEDS)


def test_torchscript_input_name_mismatch_is_a_config_error(tmp_path: Path) -> None:
    data = {
        **CONFIG,
        "backend": "torchscript",
        "modalities": {"text": {"max_tokens": 8}, "image": {"height": 2, "width": 2}},
    }
    with pytest.raises(ConfigError, match=r"graph input 'image' is missing in model\.pt"):
        load_backend(ModelConfig.model_validate(data), save_module(tmp_path, "TinyText"), DeviceSpec("cpu"))


# -- GPU --------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="no CUDA provider")
def test_onnx_runs_on_cuda(tmp_path: Path) -> None:
    backend = load_backend(config(), text_graph(tmp_path / "model.onnx"), DeviceSpec("gpu", 0))
    from fusionserve.service.runtimes.onnx import OnnxBackend

    assert isinstance(backend, OnnxBackend)
    assert backend.session.get_providers()[0] == "CUDAExecutionProvider"
    assert backend.device == "cuda:0"
    check_backend(backend)


def _torch_has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.skipif(not _torch_has_cuda(), reason="torch has no CUDA device")
def test_torchscript_runs_on_cuda(tmp_path: Path) -> None:
    from fusionserve.service.runtimes.torchscript import TorchScriptBackend

    backend = load_backend(config("torchscript"), save_module(tmp_path, "TinyText"), DeviceSpec("gpu", 0))
    assert isinstance(backend, TorchScriptBackend)
    assert backend.device == "cuda:0"
    assert backend.module.one.device.type == "cuda"
    check_backend(backend)
