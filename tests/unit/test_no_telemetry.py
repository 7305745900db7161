"""The server tells ONNX Runtime to send nothing to Microsoft (its OneDS telemetry), unless told otherwise."""

from __future__ import annotations

import os
import subprocess
import sys


def _environment_seen_by_ort(extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"} | extra
    code = "import fusionserve.service, os; print(os.environ.get('ORT_DISABLE_TELEMETRY'))"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_importing_the_server_turns_onnx_runtime_telemetry_off() -> None:
    assert _environment_seen_by_ort({}) == "1"


def test_an_operator_can_still_choose() -> None:
    assert _environment_seen_by_ort({"ORT_DISABLE_TELEMETRY": "0"}) == "0"
