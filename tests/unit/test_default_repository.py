"""A default repository written by older export code is stale (serve and the tests rebuild it)."""

from __future__ import annotations

from pathlib import Path

import yaml

from fusionserve.service.config import BUNDLED_EXPORT_FORMAT, BUNDLED_MODELS, default_repository_is_current


def _write(repo: Path, export_format: int | None) -> None:
    for name in BUNDLED_MODELS:
        (repo / name).mkdir(parents=True, exist_ok=True)
        metadata = {} if export_format is None else {"export_format": export_format}
        (repo / name / "config.yaml").write_text(yaml.safe_dump({"name": name, "metadata": metadata}))


def test_current_repository(tmp_path: Path) -> None:
    _write(tmp_path, BUNDLED_EXPORT_FORMAT)
    assert default_repository_is_current(tmp_path)


def test_repository_from_older_code_is_stale(tmp_path: Path) -> None:
    _write(tmp_path, None)  # before export_format existed
    assert not default_repository_is_current(tmp_path)
    _write(tmp_path, BUNDLED_EXPORT_FORMAT - 1)
    assert not default_repository_is_current(tmp_path)


def test_missing_or_broken_repository_is_stale(tmp_path: Path) -> None:
    assert not default_repository_is_current(tmp_path / "nothing")
    _write(tmp_path, BUNDLED_EXPORT_FORMAT)
    (tmp_path / BUNDLED_MODELS[0] / "config.yaml").write_text("{not yaml: [")
    assert not default_repository_is_current(tmp_path)
