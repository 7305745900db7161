"""The KServe Python SDK's V2 REST and gRPC clients against the real server.

The SDK runs in a child interpreter (``kserve_probe.py``): it registers the
same ``inference.*`` protobuf names as tritonclient, which this pytest
process imports, and protobuf refuses both in one process.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, RunningServer, Sample


@pytest.fixture(scope="module")
def seen(
    running_server: RunningServer, samples: list[Sample], tmp_path_factory: pytest.TempPathFactory
) -> dict:
    if importlib.util.find_spec("kserve") is None:  # find, never import: see the module docstring
        pytest.fail("the KServe SDK is missing: install the test extra")
    folder: Path = tmp_path_factory.mktemp("kserve")
    (folder / "image.jpg").write_bytes(samples[0].jpeg)
    (folder / "audio.wav").write_bytes(samples[0].wav)
    command = [
        sys.executable,
        "-m",
        "tests.integration.kserve_probe",
        running_server.http_url,
        running_server.grpc_target,
        str(folder / "image.jpg"),
        str(folder / "audio.wav"),
        samples[0].text,
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_rest_client_health_and_infer(seen: dict) -> None:
    assert seen["rest_live"] and seen["rest_ready"] and seen["rest_model_ready"]
    assert seen["rest"]["model_name"] == "digits-fusion"
    assert len(seen["rest"]["labels"][0]) == 3


def test_grpc_client_health_and_infer(seen: dict) -> None:
    assert seen["grpc_live"] and seen["grpc_ready"] and seen["grpc_model_ready"]
    assert len(seen["grpc"]["labels"][0]) == 3


def test_typed_and_raw_contents_and_rest_agree(seen: dict) -> None:
    """bytes_contents (list data), raw_input_contents (numpy) and REST binary: one answer."""
    reference = seen["rest"]
    for other in (seen["grpc"], seen["grpc_raw"]):
        assert other["labels"] == reference["labels"]
        np.testing.assert_allclose(other["scores"], reference["scores"], atol=1e-5)


def test_errors_reach_the_sdk(seen: dict) -> None:
    assert seen["rest_error"]["status"] == 404 and "no-such-model" in seen["rest_error"]["message"]
    assert (
        seen["grpc_error"]["status"] == "StatusCode.NOT_FOUND"
        and "no-such-model" in seen["grpc_error"]["message"]
    )
