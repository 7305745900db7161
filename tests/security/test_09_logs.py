"""Class 9: logs cannot be forged, errors do not leak.

In the text log format every field has its control characters escaped, so a
``%0A`` in a path (or a newline anywhere a client reaches) never starts a log
line of its own. Client-given request ids are kept only when short and plain.
Load failures tell clients the model and the reason, never the server's
absolute paths (the log keeps them).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import grpc
import httpx

from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2 as pb
from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2_grpc as pb_grpc
from tests.conftest import copy_entry

FORGED = "ts=2026 level=error forged"


def test_text_log_lines_cannot_be_forged(model_repository: Path, tmp_path: Path, server_factory) -> None:
    repo = copy_entry(model_repository, tmp_path / "repo", "digits-fusion")
    server = server_factory(repo, env={"FUSIONSERVE_LOG_FORMAT": "text"})
    hostile = f"/v1/models/x%0A{FORGED.replace(' ', '%20')}%0D%1B[31m%E2%80%A8/predict"
    answer = httpx.post(f"{server.http_url}{hostile}", json={"text": "seven"}, timeout=30)
    assert answer.status_code == 404
    # A client id with a control character or an unbounded length is replaced, not logged.
    for bad_id in ("a" * 129, "id with space", "ok/slash", 'quote"d'):
        answer = httpx.get(f"{server.http_url}/health/live", headers={"x-request-id": bad_id}, timeout=5)
        assert answer.headers["x-request-id"] != bad_id and len(answer.headers["x-request-id"]) <= 128
    good = httpx.get(f"{server.http_url}/health/live", headers={"x-request-id": "client-7:a.b"}, timeout=5)
    assert good.headers["x-request-id"] == "client-7:a.b"
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.FusionServeStub(channel)
        try:
            stub.Predict(
                pb.PredictRequest(model="x\nforged grpc line", items=[pb.Item(text="s")]),
                metadata=(("x-request-id", "b" * 500),),
                timeout=30,
            )
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            trailing = dict(exc.trailing_metadata() or ())
            assert len(trailing["x-request-id"]) <= 128
    server.stop()
    log = server.log()
    lines = log.splitlines()
    assert not any(line.startswith(FORGED) or line.startswith("forged grpc line") for line in lines)
    assert "\x1b" not in log and "\u2028" not in log and "\r" not in log
    assert "x\\nts=2026" in log  # the newline is there, escaped
    assert "b" * 500 not in log


def test_every_field_is_escaped() -> None:
    from fusionserve.service.logs import TextFormatter, escape_control, request_id_var

    formatter = TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "model %s", ("a\nb",), None)
    record.path = "/x\r\ny"
    token = request_id_var.set("id\n2")
    try:
        line = formatter.format(record)
    finally:
        request_id_var.reset(token)
    assert "\n" not in line and "\r" not in line
    assert "model a\\nb" in line and "path=/x\\r\\ny" in line and "request_id=id\\n2" in line
    try:
        raise ValueError("boom\nforged line")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = formatter.format(record).splitlines()
    assert all(line.startswith("  | ") for line in lines[1:])
    assert escape_control("\x00\x1b\x7f\x85\u2028ok") == "\\x00\\x1b\\x7f\\x85\\u2028ok"


def test_failed_load_reasons_hold_no_server_path(tmp_path: Path) -> None:
    """What clients see of a load failure: the entry and the reason, no absolute path.

    The same on a running server (the hostile repository of
    ``test_06_repository.py``: metadata, V2 index and a 503 answer).
    """
    from fusionserve.service.model.repository import public_reason

    root = tmp_path / "models"
    onnx = (
        f"{root}/m/1/model.onnx: onnxruntime cannot load the graph: [ONNXRuntimeError] : 7 : "
        f"INVALID_PROTOBUF : Load model from {root}/m/1/model.onnx failed:Protobuf parsing failed."
    )
    shown = public_reason(onnx, root)
    assert shown.startswith("m/1/model.onnx: onnxruntime") and str(tmp_path) not in shown
    elsewhere = public_reason("cannot open /opt/secret/dir/tokenizer.json: denied", root)
    assert elsewhere == "cannot open .../tokenizer.json: denied"
    assert public_reason("see https://example.org/a/b and ratio 1/2", root) == (
        "see https://example.org/a/b and ratio 1/2"
    )
