"""Model repository reading: names that cannot escape, version policies, broken entries."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fusionserve.service.errors import ModelNotFound
from fusionserve.service.model.repository import ModelRepository, check_model_name

CONFIG = {
    "name": "m",
    "task": "classify",
    "modalities": {"text": {"max_tokens": 8}},
    "outputs": [{"name": "class_logits", "kind": "logits", "dims": 2}],
}


def make_entry(root: Path, name: str = "m", versions: tuple[int, ...] = (1,), **changes: object) -> Path:
    entry = root / name
    entry.mkdir(parents=True)
    (entry / "config.yaml").write_text(yaml.safe_dump({**CONFIG, "name": name, **changes}))
    (entry / "labels.txt").write_text("no\nyes\n")
    (entry / "tokenizer.json").write_text("{}")
    for v in versions:
        (entry / str(v)).mkdir()
        (entry / str(v) / "model.onnx").write_bytes(b"onnx")
    return entry


@pytest.mark.parametrize("name", ["..", "../etc", "a/b", "", ".hidden", "a\\b", "x" * 200, "a..b"])
def test_unsafe_names_are_unknown(name: str) -> None:
    with pytest.raises(ModelNotFound):
        check_model_name(name)


def test_symlink_out_of_repository_is_refused(tmp_path: Path) -> None:
    outside = make_entry(tmp_path / "outside", "m")
    root = tmp_path / "repo"
    root.mkdir()
    (root / "escape").symlink_to(outside)
    with pytest.raises(ModelNotFound):
        ModelRepository(root).entry_dir("escape")


def test_latest_version_policy_and_specific(tmp_path: Path) -> None:
    make_entry(tmp_path, "m", versions=(1, 2, 10))
    entry = ModelRepository(tmp_path).read("m")
    assert entry.error is None
    assert [v.version for v in entry.versions] == ["10"]
    make_entry(tmp_path, "n", versions=(1, 2, 3), version_policy={"latest": None, "specific": [1, 3]})
    assert [v.version for v in ModelRepository(tmp_path).read("n").versions] == ["1", "3"]


def test_missing_specific_version_is_reported(tmp_path: Path) -> None:
    make_entry(tmp_path, "m", versions=(1,), version_policy={"latest": None, "specific": [4]})
    entry = ModelRepository(tmp_path).read("m")
    assert entry.error is not None and "[4]" in entry.error and "config.yaml" in entry.error


def test_labels_must_match_logits(tmp_path: Path) -> None:
    entry_dir = make_entry(tmp_path)
    (entry_dir / "labels.txt").write_text("a\nb\nc\n")
    entry = ModelRepository(tmp_path).read("m")
    assert entry.error is not None and "3 labels" in entry.error and "labels.txt" in entry.error


def test_missing_tokenizer_is_named(tmp_path: Path) -> None:
    entry_dir = make_entry(tmp_path)
    (entry_dir / "tokenizer.json").unlink()
    entry = ModelRepository(tmp_path).read("m")
    assert entry.error is not None and "tokenizer.json" in entry.error


def test_name_must_match_directory(tmp_path: Path) -> None:
    entry_dir = make_entry(tmp_path, "m")
    cfg = yaml.safe_load((entry_dir / "config.yaml").read_text())
    cfg["name"] = "other"
    (entry_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    error = ModelRepository(tmp_path).read("m").error
    assert error is not None and "does not match directory" in error


def test_bad_config_names_file_and_field(tmp_path: Path) -> None:
    make_entry(tmp_path, "m", batching={"max_batch_size": "lots"})
    error = ModelRepository(tmp_path).read("m").error
    assert error is not None and "config.yaml" in error and "batching.max_batch_size" in error


def test_no_model_file_for_backend(tmp_path: Path) -> None:
    make_entry(tmp_path, "m", backend="torchscript")
    error = ModelRepository(tmp_path, allow_torchscript=True).read("m").error
    assert error is not None and "model.pt" in error


def test_names_lists_only_entries(tmp_path: Path) -> None:
    make_entry(tmp_path, "a")
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "file.txt").write_text("x")
    assert ModelRepository(tmp_path).names() == ["a"]
