"""An entry's own preprocess/postprocess: refused unless allowed, errors mapped to 422/500."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fusionserve.service.errors import ConfigError, InternalError, UnprocessableInput
from fusionserve.service.model.config import parse_model_config
from fusionserve.service.model.rows import RawInputs
from fusionserve.service.preprocess import Preprocessor

CONFIG = parse_model_config(
    {
        "name": "coded",
        "task": "classify",
        "modalities": {"audio": {"sample_rate": 8000, "max_samples": 800, "min_samples": 8}},
        "outputs": [{"name": "logits", "kind": "logits", "dims": 2}],
        "code_file": "hooks.py",
    },
    "test",
)
HOOKS = """
import numpy as np

def preprocess(row):
    audio = row["audio"]
    if audio.max() > 0.9:
        raise ValueError("too loud for this model")
    if audio.max() > 0.5:
        return {"audio": audio.astype(np.float64)}  # wrong dtype: the model's fault
    if audio.max() > 0.4:
        raise RuntimeError("a bug")
    row["audio"] = audio * 2
    return row

def postprocess(outputs):
    return {name: 1 / (1 + np.exp(-value)) for name, value in outputs.items()}
"""


def _entry(tmp_path: Path, code: str = HOOKS) -> Path:
    (tmp_path / "hooks.py").write_text(code)
    return tmp_path


def _audio(peak: float) -> RawInputs:
    return RawInputs(audio=np.full(100, peak, dtype=np.float32))


def test_repository_code_is_refused_unless_the_operator_allows_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"code_file: hooks\.py is Python code.*--allow-model-code"):
        Preprocessor(CONFIG, _entry(tmp_path))


def test_preprocess_runs_after_decoding_and_is_timed(tmp_path: Path) -> None:
    row = Preprocessor(CONFIG, _entry(tmp_path), allow_model_code=True).decode(_audio(0.25))
    assert row.audio is not None and np.allclose(row.audio, 0.5)
    assert "code" in row.decode_seconds


def test_postprocess_maps_each_rows_outputs(tmp_path: Path) -> None:
    pre = Preprocessor(CONFIG, _entry(tmp_path), allow_model_code=True)
    assert pre.postprocesses
    (out,) = pre.postprocess([{"logits": np.array([0.0, 100.0])}])
    assert out["logits"].tolist() == pytest.approx([0.5, 1.0])


@pytest.mark.parametrize(
    ("peak", "error", "message"),
    [
        (0.95, UnprocessableInput, "hooks.py preprocess refused the input: too loud"),
        (0.6, InternalError, "preprocess returned a float64 array .* for 'audio'"),
        (0.45, InternalError, "hooks.py preprocess failed: RuntimeError: a bug"),
    ],
)
def test_hook_errors_are_422_for_the_input_and_500_for_the_model(
    tmp_path: Path, peak: float, error: type[Exception], message: str
) -> None:
    pre = Preprocessor(CONFIG, _entry(tmp_path), allow_model_code=True)
    with pytest.raises(error, match=message):
        pre.decode(_audio(peak))


def test_a_module_that_fails_on_import_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"hooks\.py: importing it failed: ZeroDivisionError"):
        Preprocessor(CONFIG, _entry(tmp_path, "1 / 0\n"), allow_model_code=True)
