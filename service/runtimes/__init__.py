"""Runtimes: load one model file as a :class:`Backend` on one device.

Backends are imported lazily by :func:`load_backend`, so importing this package
(or serving an ONNX model) never imports torch.
"""

from __future__ import annotations

from pathlib import Path

from fusionserve.service.errors import ConfigError
from fusionserve.service.model.config import MODEL_FILES, ModelConfig
from fusionserve.service.runtimes.base import Backend, DeviceSpec

__all__ = ["Backend", "DeviceSpec", "load_backend", "model_file"]


def model_file(config: ModelConfig, version_dir: Path) -> Path:
    """The file of ``version_dir`` that ``config.backend`` loads (``model.onnx`` / ``model.pt``)."""
    return version_dir / MODEL_FILES[config.backend]


def load_backend(config: ModelConfig, model_path: Path, device: DeviceSpec) -> Backend:
    """Load one instance of the model; a bad file or graph raises :class:`ConfigError`."""
    if not model_path.is_file():
        raise ConfigError(f"{model_path}: model file not found", file=str(model_path))
    if config.backend == "onnx":
        from fusionserve.service.runtimes.onnx import OnnxBackend

        return OnnxBackend(config, model_path, device)
    from fusionserve.service.runtimes.torchscript import TorchScriptBackend

    return TorchScriptBackend(config, model_path, device)
