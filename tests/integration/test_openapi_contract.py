"""The API as documented is the API as served: schemathesis against the live server.

Every operation of ``/openapi.json`` is fuzzed from its own schema, and each
answer is checked: no server error, a documented status, the documented
content type, headers and body schema, 405 with ``Allow`` for other methods,
and schema-violating requests refused. A short run is in the normal suite, a
longer one is ``slow``.

Deliberate exceptions (each is the server behaving as documented):

* ``positive_data_acceptance`` is not run: a schema cannot say "a decodable
  PNG" or "a tensor whose shape matches its data", so schema-valid random
  bytes in ``image``/``audio``/``inputs`` are rightly refused (400/415).
* ``not_a_server_error`` accepts 504: ``X-Request-Timeout-Ms`` may be any
  positive number, and a deadline shorter than serving takes (the fuzzer
  sends ``5e-324``) is answered 504 ``deadline_exceeded`` by design. 500 and
  every other 5xx still fail the run.
* Load/unload are fuzzed on a server of their own (they change what it serves).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "missing_required_header",
        "unsupported_method",
        "allow_header_conformance",
    ]
)
CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "504"]
"""
REPOSITORY_CONTROL = "^/v2/repository/models/"


def _schemathesis(server: RunningServer, tmp_path: Path, *args: str) -> None:
    """Run the schemathesis CLI on the server's document; fail with its report when it finds anything."""
    st = Path(sys.executable).with_name("st")
    if not st.exists():
        pytest.fail("schemathesis is not installed (the test extra pins it): run scripts/setup.sh --dev")
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        str(st),
        "--config-file",
        str(config),
        "run",
        f"{server.http_url}/openapi.json",
        "--checks",
        CHECKS,
        "--seed",
        "14",
        "--no-color",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1700, cwd=tmp_path)
    report = done.stdout + done.stderr
    assert done.returncode == 0, f"schemathesis found contract failures:\n{report[-12000:]}"


def test_document_describes_uploads_and_every_status(running_server: RunningServer) -> None:
    """What `/docs` renders: file fields for predict and the statuses the server really answers."""
    document = httpx.get(f"{running_server.http_url}/openapi.json").json()
    predict = document["paths"]["/v1/models/{model}/predict"]["post"]
    form = predict["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert form["image"] == {**form["image"], "type": "string", "format": "binary"}
    assert form["audio"]["format"] == "binary" and "text" in form and "top_k" in form
    assert {"400", "404", "413", "415", "422", "429", "503", "504"} <= set(predict["responses"])
    assert predict["responses"]["415"]["content"]["application/json"]["example"]["error"]["code"] == (
        "unsupported_media_type"
    )
    infer = document["paths"]["/v2/models/{model}/infer"]["post"]
    assert "application/octet-stream" in infer["requestBody"]["content"]
    assert infer["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/V2ErrorResponse"
    )
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "HTTPValidationError" not in str(operation), f"{method} {path} documents FastAPI's 422"


def test_405_names_the_allowed_methods(running_server: RunningServer) -> None:
    answer = httpx.delete(f"{running_server.http_url}/v1/models/digits-fusion/predict")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert answer.json()["error"]["code"] == "method_not_allowed"
    v2 = httpx.put(f"{running_server.http_url}/v2/health/ready")
    assert v2.status_code == 405 and v2.headers["allow"] == "GET" and isinstance(v2.json()["error"], str)


#: The CI run: the documented examples and schemathesis' deterministic boundary cases
#: (``coverage``: each field missing, empty, at and past its limits, of the wrong
#: type; ~800 requests); the slow run adds random fuzzing and stateful sequences.
SHORT = ("--phases", "examples,coverage", "--max-examples", "5")


def test_contract_short(running_server: RunningServer, tmp_path: Path) -> None:
    """Every operation except load/unload."""
    _schemathesis(running_server, tmp_path, *SHORT, "--exclude-path-regex", REPOSITORY_CONTROL)


def test_contract_repository_control(token_server: RunningServer, tmp_path: Path) -> None:
    """Load and unload, on a server of their own (the API token guards inference only)."""
    _schemathesis(token_server, tmp_path, *SHORT, "--include-path-regex", REPOSITORY_CONTROL)
    load = httpx.post(f"{token_server.http_url}/v2/repository/models/digits-embed/load", timeout=120)
    assert load.status_code == 200, load.text


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_contract_long(running_server: RunningServer, tmp_path: Path) -> None:
    """The same checks with many more cases per operation."""
    _schemathesis(
        running_server, tmp_path, "--max-examples", "100", "--exclude-path-regex", REPOSITORY_CONTROL
    )
