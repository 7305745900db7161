"""Class 6: the repository cannot be escaped or used to crash the server.

A symlinked entry, a name like ``a..b`` or a TorchScript entry (without
``--allow-torchscript``) is reported and skipped like any load failure; the
server starts and serves the good entries. Every file an entry names must
resolve inside it.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import yaml

from fusionserve.service.model.repository import ModelRepository
from tests.conftest import copy_entry

GOOD = "digits-fusion"
OTHER = "digits-embed"


def _set_config(entry: Path, **changes: object) -> None:
    path = entry / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config.update(changes)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _hostile_repository(model_repository: Path, tmp_path: Path) -> Path:
    repo = copy_entry(model_repository, tmp_path / "repo", GOOD)
    outside = copy_entry(model_repository, tmp_path / "outside", OTHER)
    (repo / "linked").symlink_to(outside / OTHER, target_is_directory=True)
    dotted = copy_entry(model_repository, tmp_path / "dotted", OTHER) / OTHER
    dotted.rename(repo / "a..b")
    _set_config(repo / "a..b", name="a..b")
    torch_entry = copy_entry(model_repository, tmp_path / "ts", OTHER) / OTHER
    torch_entry.rename(repo / "ts-model")
    _set_config(repo / "ts-model", name="ts-model", backend="torchscript")
    (repo / "ts-model" / "1" / "model.pt").write_bytes(b"code would run here")
    broken = copy_entry(model_repository, tmp_path / "broken", OTHER) / OTHER
    broken.rename(repo / "broken-graph")
    _set_config(repo / "broken-graph", name="broken-graph")
    (repo / "broken-graph" / "1" / "model.onnx").write_bytes(b"not a graph")
    return repo


def _settled(url: str) -> bool:
    """Every entry loaded or failed (none LOADING), the good one ready."""
    models = httpx.get(f"{url}/v1/models", timeout=5).json()["models"]
    states = [v["state"] for m in models for v in m["versions"]]
    return "LOADING" not in states and any(m["name"] == GOOD and m["ready"] for m in models)


def test_bad_entries_are_skipped_and_the_server_serves(
    model_repository: Path, tmp_path: Path, server_factory
) -> None:
    repo = _hostile_repository(model_repository, tmp_path)
    server = server_factory(repo, wait=False)
    server.wait_live()
    deadline = time.monotonic() + 120
    while not _settled(server.http_url):
        assert server.proc.poll() is None, server.log()[-3000:]
        assert time.monotonic() < deadline, "the repository never finished loading"
        time.sleep(0.1)
    assert server.proc.poll() is None
    answer = httpx.post(f"{server.http_url}/v1/models/{GOOD}/predict", json={"text": "seven"}, timeout=30)
    assert answer.status_code == 200, answer.text

    models = {m["name"]: m for m in httpx.get(f"{server.http_url}/v1/models", timeout=5).json()["models"]}
    assert models[GOOD]["ready"] is True
    assert "leaves the repository" in models["linked"]["error"]
    assert "not a valid model name" in models["a..b"]["error"]
    assert "--allow-torchscript" in models["ts-model"]["error"]
    for name in ("linked", "a..b", "ts-model"):
        assert models[name]["ready"] is False
        assert str(tmp_path) not in models[name]["error"]
    # A graph that does not load: clients get the entry and the reason, the log keeps the path.
    (broken,) = models["broken-graph"]["versions"]
    assert broken["state"] == "FAILED" and "model.onnx" in broken["reason"], broken
    assert str(tmp_path) not in broken["reason"] and "/tmp" not in broken["reason"]
    answer = httpx.post(f"{server.http_url}/v1/models/broken-graph/embed", json={"text": "s"}, timeout=30)
    assert answer.status_code == 503 and "broken-graph" in answer.text
    assert str(tmp_path) not in answer.text
    assert str(repo / "broken-graph") in server.log()
    # A bad entry is a load failure like any other: counted, and (strict readiness) not ready.
    assert httpx.get(f"{server.http_url}/health/ready", timeout=5).status_code == 503
    metrics = httpx.get(f"{server.http_url}/metrics", timeout=5).text
    assert 'fusionserve_model_load_failures_total{model="linked"} 1.0' in metrics
    # The V2 index reports them the same way, without server paths.
    index = httpx.post(f"{server.http_url}/v2/repository/index", json={}, timeout=5).json()
    assert {e["name"]: e["state"] for e in index}["a..b"] == "FAILED"
    assert all(str(tmp_path) not in e["reason"] for e in index)


def _entry(root: Path, name: str = "m", **changes: object) -> Path:
    config = {
        "name": name,
        "task": "classify",
        "modalities": {"text": {"max_tokens": 8}},
        "outputs": [{"name": "class_logits", "kind": "logits", "dims": 2}],
        **changes,
    }
    entry = root / name
    (entry / "1").mkdir(parents=True)
    (entry / "config.yaml").write_text(yaml.safe_dump(config))
    (entry / "labels.txt").write_text("no\nyes\n")
    (entry / "tokenizer.json").write_text("{}")
    (entry / "1" / "model.onnx").write_bytes(b"onnx")
    return entry


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"labels_file": "../../secret.txt"}, "labels_file '../../secret.txt' leaves"),
        ({"labels_file": "/etc/hostname"}, "labels_file '/etc/hostname' leaves"),
        ({"tokenizer_file": "../other/tokenizer.json"}, "tokenizer_file '../other/tokenizer.json' leaves"),
    ],
)
def test_named_files_resolve_inside_the_entry(tmp_path: Path, changes: dict[str, str], expected: str) -> None:
    (tmp_path / "secret.txt").write_text("no\nyes\n")
    _entry(tmp_path / "repo", "other")
    _entry(tmp_path / "repo", **changes)
    error = ModelRepository(tmp_path / "repo").read("m").error
    assert error is not None and expected in error


def test_symlinks_inside_an_entry_cannot_leave_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "7").mkdir(parents=True)
    (outside / "7" / "model.onnx").write_bytes(b"onnx")
    (outside / "labels.txt").write_text("no\nyes\n")
    entry = _entry(tmp_path / "repo")
    (entry / "7").symlink_to(outside / "7", target_is_directory=True)
    error = ModelRepository(tmp_path / "repo").read("m").error
    assert error is not None and "version(s) 7" in error and "outside" in error
    (entry / "7").unlink()
    (entry / "1" / "model.onnx").unlink()
    (entry / "1" / "model.onnx").symlink_to(outside / "7" / "model.onnx")
    error = ModelRepository(tmp_path / "repo").read("m").error
    assert error is not None and "resolves outside" in error
    (entry / "1" / "model.onnx").unlink()
    (entry / "1" / "model.onnx").write_bytes(b"onnx")
    (entry / "labels.txt").unlink()
    (entry / "labels.txt").symlink_to(outside / "labels.txt")
    error = ModelRepository(tmp_path / "repo").read("m").error
    assert error is not None and "labels_file 'labels.txt' leaves" in error


def test_torchscript_only_when_trusted(tmp_path: Path) -> None:
    entry = _entry(tmp_path, backend="torchscript")
    (entry / "1" / "model.pt").write_bytes(b"pt")
    refused = ModelRepository(tmp_path).read("m")
    assert refused.error is not None and "--allow-torchscript" in refused.error and not refused.versions
    trusted = ModelRepository(tmp_path, allow_torchscript=True).read("m")
    assert trusted.error is None and [v.version for v in trusted.versions] == ["1"]


def test_unsafe_entries_are_errors_not_exceptions(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    _entry(root, "a..b")
    _entry(tmp_path / "elsewhere", "m")
    (root / "escape").symlink_to(tmp_path / "elsewhere" / "m", target_is_directory=True)
    (root / "loop").symlink_to(root / "loop")
    repository = ModelRepository(root)
    assert set(repository.names()) >= {"a..b", "escape"}
    for name in repository.names():
        entry = repository.read(name)
        assert entry.error is not None and entry.config is None, name


def test_cli_flags_reach_the_settings() -> None:
    from fusionserve.service.__main__ import build_parser

    args = build_parser().parse_args(["serve", "--allow-torchscript", "--model-control", "explicit"])
    assert (args.allow_torchscript, args.model_control) == (True, "explicit")
    assert build_parser().parse_args(["serve"]).allow_torchscript is None  # unset: the env/default decides


@pytest.mark.slow
def test_a_trusted_torchscript_entry_serves(model_repository: Path, tmp_path: Path, server_factory) -> None:
    """The opt-in side on a real server: ``FUSIONSERVE_ALLOW_TORCHSCRIPT=1`` serves ``model.pt``."""
    repo = copy_entry(model_repository, tmp_path / "repo", OTHER)
    _set_config(repo / OTHER, backend="torchscript")
    server = server_factory(repo, env={"FUSIONSERVE_ALLOW_TORCHSCRIPT": "1"})
    answer = httpx.post(f"{server.http_url}/v1/models/{OTHER}/embed", json={"text": "seven"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["embedding"], answer.text
    meta = httpx.get(f"{server.http_url}/v2/models/{OTHER}", timeout=5).json()
    assert meta["platform"] == "pytorch_libtorch"
