"""What a new user meets first: no repository and no torch, a mistyped model name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import ROOT, RunningServer


def test_serve_without_a_repository_or_torch_says_what_to_do(tmp_path: Path) -> None:
    """A serving-only install (no torch) cannot build the default repository: no traceback, a way out."""
    hide_torch = (
        "import sys; sys.modules['torch'] = None; "
        "from fusionserve.service.__main__ import main; sys.exit(main())"
    )
    env = {**os.environ, "FUSIONSERVE_HOME": str(tmp_path)}
    env.pop("FUSIONSERVE_MODEL_REPOSITORY", None)
    done = subprocess.run(
        [sys.executable, "-c", hide_torch, "serve", "--http-port", "0", "--grpc-port", "-1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "--model-repository" in done.stderr and "fusionserve build-repo" in done.stderr
    assert str(tmp_path / "model-repository") in done.stderr


def test_unknown_model_lists_the_models_and_the_closest_name(running_server: RunningServer) -> None:
    answer = httpx.post(
        f"{running_server.http_url}/v1/models/digits-fuson/predict", files={"text": (None, "seven")}
    )
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert "did you mean 'digits-fusion'?" in error["message"]
    assert error["details"]["closest"] == "digits-fusion"
    assert error["details"]["available"] == ["digits-embed", "digits-fusion"]
    far = httpx.get(f"{running_server.http_url}/v1/models/zzz").json()["error"]
    assert "closest" not in far["details"] and "digits-embed, digits-fusion" in far["message"]


def test_python_dash_m_fusionserve_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fusionserve", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "serve" in done.stdout and "predict" in done.stdout
