"""An entry's own Python: ``preprocess``/``postprocess`` for what no mapping can say.

An entry may name a small module in ``config.yaml`` (``code_file: hooks.py``)
defining either or both of

- ``preprocess(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]``: one
  decoded row (``image`` uint8 ``[H,W,3]``, ``audio`` float32 ``[T]``,
  ``text_ids`` int64 ``[L]``, only the modalities present) → the same keys,
  changed (per-row waveform normalisation, a crop, a prompt's ids);
- ``postprocess(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]``:
  one row's graph outputs (name → array without the batch axis) → the same
  names, changed (sigmoid for multi-label heads, a calibration).

It is code from the repository, so it is loaded only when the operator says
the repository is trusted (``--allow-model-code``,
``FUSIONSERVE_ALLOW_MODEL_CODE=1``); otherwise the model is refused at load
with that reason. Both hooks run in the decode threads; their time is in
``fusionserve_decode_duration_seconds{modality="code"}`` and the post-processing
histogram. A ``ValueError`` from a hook is the request's fault (422); any
other exception, or a result of the wrong shape or dtype, is the model's (500).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from fusionserve.service.errors import ConfigError, FusionServeError, InternalError, UnprocessableInput

Arrays = dict[str, np.ndarray]

#: What each decoded key must stay: dtype and rank.
_ROW_CONTRACT = {"image": (np.uint8, 3), "audio": (np.float32, 1), "text_ids": (np.int64, 1)}


class ModelCode:
    """The loaded hooks of one entry (either may be absent)."""

    def __init__(self, path: Path, module: ModuleType) -> None:
        self.file = path.name
        self.preprocess: Callable[[Arrays], Arrays] | None = _hook(module, "preprocess", path)
        self.postprocess: Callable[[Arrays], Arrays] | None = _hook(module, "postprocess", path)
        if self.preprocess is None and self.postprocess is None:
            raise ConfigError(f"{path}: defines neither preprocess nor postprocess", file=str(path))

    def run_preprocess(self, row: Arrays) -> Arrays:
        assert self.preprocess is not None
        result = self._call("preprocess", self.preprocess, row)
        for key, value in row.items():
            changed = result.get(key)
            dtype, rank = _ROW_CONTRACT[key]
            if not isinstance(changed, np.ndarray) or changed.dtype != dtype or changed.ndim != rank:
                raise InternalError(
                    f"model code {self.file} preprocess returned {_what(changed)} for {key!r}; "
                    f"it must stay a {np.dtype(dtype).name} array of rank {rank}"
                )
            if key == "image" and changed.shape != value.shape:
                raise InternalError(
                    f"model code {self.file} preprocess changed the image shape "
                    f"{list(value.shape)} → {list(changed.shape)}"
                )
        return {key: result[key] for key in row}

    def run_postprocess(self, outputs: Arrays) -> Arrays:
        assert self.postprocess is not None
        result = self._call("postprocess", self.postprocess, dict(outputs))
        missing = [name for name in outputs if not isinstance(result.get(name), np.ndarray)]
        if missing:
            raise InternalError(f"model code {self.file} postprocess returned no array for outputs {missing}")
        return {name: result[name] for name in outputs}

    def _call(self, name: str, hook: Callable[[Arrays], Arrays], arrays: Arrays) -> Arrays:
        try:
            result = hook(arrays)
        except FusionServeError:
            raise
        except ValueError as exc:
            raise UnprocessableInput(f"model code {self.file} {name} refused the input: {exc}") from exc
        except Exception as exc:  # the model's own code failed: a fault of the model, not the caller
            raise InternalError(f"model code {self.file} {name} failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(result, dict):
            raise InternalError(
                f"model code {self.file} {name} returned {_what(result)}, not a dict of arrays"
            )
        return result


def _what(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {list(value.shape)}"
    return f"a {type(value).__name__}"


def _hook(module: ModuleType, name: str, path: Path) -> Callable[[Arrays], Arrays] | None:
    hook = getattr(module, name, None)
    if hook is not None and not callable(hook):
        raise ConfigError(f"{path}: {name} is not a function", file=str(path))
    return hook


def load_model_code(entry_dir: Path, code_file: str, allowed: bool, config_file: Path) -> ModelCode:
    """Import the entry's module, or refuse: not allowed, missing, or failing on import."""
    path = entry_dir / code_file
    if not allowed:
        raise ConfigError(
            f"{config_file}: code_file: {code_file} is Python code from the repository; the server runs "
            "it only when the operator trusts the repository (--allow-model-code, "
            "FUSIONSERVE_ALLOW_MODEL_CODE=1)",
            file=str(config_file),
            field="code_file",
        )
    if not path.is_file() or path.resolve().parent != entry_dir.resolve():
        raise ConfigError(f"{path}: code file is missing (config field code_file)", file=str(path))
    name = f"fusionserve_model_code_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: not a Python module", file=str(path))
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the entry's code failed on import: refuse the model, name the error
        raise ConfigError(
            f"{path}: importing it failed: {type(exc).__name__}: {exc}", file=str(path)
        ) from exc
    sys.modules.pop(name, None)
    return ModelCode(path, module)
