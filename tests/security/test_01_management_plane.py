"""Class 1: the management plane is closed unless the operator opens it.

By default (``model_control=none``) repository load and unload are refused on
both V2 doors with 403 / PERMISSION_DENIED naming the setting, and the model
keeps serving. Opened (``--model-control explicit``) they need the admin token
when one is set; a reload keeps the old version serving until the new one is
ready, and a failed reload leaves it in place.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import ROOT, RunningServer, copy_entry

MODEL = "digits-fusion"
PREDICT = {"text": "seven"}


def _predicts(server: RunningServer, headers: dict[str, str] | None = None) -> bool:
    answer = httpx.post(
        f"{server.http_url}/v1/models/{MODEL}/predict", json=PREDICT, headers=headers, timeout=30
    )
    return answer.status_code == 200 and bool(answer.json()["predictions"])


def test_repository_calls_are_refused_by_default(
    model_repository: Path, tmp_path: Path, server_factory
) -> None:
    server = server_factory(copy_entry(model_repository, tmp_path / "repo", MODEL))
    for action in ("unload", "load"):
        answer = httpx.post(f"{server.http_url}/v2/repository/models/{MODEL}/{action}", json={}, timeout=30)
        assert answer.status_code == 403, answer.text
        assert "model_control=none" in answer.json()["error"]
        assert "--model-control explicit" in answer.json()["error"]
    client = grpcclient.InferenceServerClient(server.grpc_target)
    try:
        for call in (client.unload_model, client.load_model):
            with pytest.raises(InferenceServerException) as caught:
                call(MODEL)
            assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
            assert "model_control=none" in caught.value.message()
        # The index stays readable, and nothing was unloaded.
        assert [m.name for m in client.get_model_repository_index().models] == [MODEL]
        assert client.is_model_ready(MODEL)
    finally:
        client.close()
    assert httpx.get(f"{server.http_url}/health/ready", timeout=5).status_code == 200
    assert _predicts(server)


def test_explicit_needs_admin_token_and_reload_keeps_the_old_version(
    model_repository: Path, tmp_path: Path, server_factory
) -> None:
    repo = copy_entry(model_repository, tmp_path / "repo", MODEL)
    server = server_factory(
        repo, env={"FUSIONSERVE_MODEL_CONTROL": "explicit", "FUSIONSERVE_ADMIN_TOKEN": "admin-secret"}
    )
    url = f"{server.http_url}/v2/repository/models/{MODEL}"
    admin = {"authorization": "Bearer admin-secret"}
    assert httpx.post(f"{url}/unload", json={}, timeout=30).status_code == 401
    assert (
        httpx.post(f"{url}/unload", json={}, headers={"authorization": "Bearer x"}, timeout=30).status_code
        == 401
    )
    client = grpcclient.InferenceServerClient(server.grpc_target)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.unload_model(MODEL)
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    finally:
        client.close()
    assert _predicts(server)

    # A reload that fails (a broken config) leaves version 1 serving and says why,
    # with the model's name and no absolute server path.
    config_path = repo / MODEL / "config.yaml"
    good = config_path.read_text()
    config_path.write_text(good.replace("task:", "task: [broken\n"))
    failed = httpx.post(f"{url}/load", json={}, headers=admin, timeout=60)
    assert failed.status_code == 400, failed.text
    message = failed.json()["error"]
    assert MODEL in message and "config.yaml" in message and "keep serving" in message
    assert str(tmp_path) not in message and str(repo) not in message
    assert str(repo) in server.log()  # the log keeps the path
    assert httpx.get(f"{server.http_url}/health/ready", timeout=5).status_code == 200
    assert _predicts(server)

    # A version that fails to load (a corrupt model file) also leaves version 1 in place.
    config_path.write_text(good)
    (repo / MODEL / "2").mkdir()
    (repo / MODEL / "2" / "model.onnx").write_bytes(b"not a graph")
    failed = httpx.post(f"{url}/load", json={}, headers=admin, timeout=60)
    assert failed.status_code == 400 and "version 2" in failed.json()["error"], failed.text
    assert str(tmp_path) not in failed.json()["error"]
    meta = httpx.get(f"{server.http_url}/v2/models/{MODEL}", timeout=5).json()
    assert meta["versions"] == ["1"]
    assert _predicts(server)

    # A good reload swaps in the new version; requests sent meanwhile never see the model missing.
    (repo / MODEL / "2" / "model.onnx").write_bytes((repo / MODEL / "1" / "model.onnx").read_bytes())
    statuses: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            while not stop.is_set():
                answer = http.post(f"/v1/models/{MODEL}/predict", json=PREDICT)
                statuses.append((answer.status_code, answer.json().get("version", "")))

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        while not statuses:
            time.sleep(0.01)
        assert httpx.post(f"{url}/load", json={}, headers=admin, timeout=60).status_code == 200
        seen = len(statuses)
        while len(statuses) < seen + 3:
            time.sleep(0.01)
    finally:
        stop.set()
        sender.join()
    assert {code for code, _ in statuses} == {200}, statuses
    assert statuses[0][1] == "1" and statuses[-1][1] == "2"
    meta = httpx.get(f"{server.http_url}/v2/models/{MODEL}", timeout=5).json()
    assert meta["versions"] == ["2"]
    answer = httpx.post(f"{server.http_url}/v1/models/{MODEL}/predict", json=PREDICT, timeout=30)
    assert answer.status_code == 200 and answer.json()["version"] == "2"

    # Unload with the admin token works when the plane is open.
    assert httpx.post(f"{url}/unload", json={}, headers=admin, timeout=60).status_code == 200
    assert httpx.get(f"{server.http_url}/v2/models/{MODEL}/ready", timeout=5).status_code != 200


def test_explicit_without_token_only_on_loopback(tmp_path: Path) -> None:
    """Opening the plane on a public bind without an admin token is a settings error, exit 2."""
    env = {**os.environ, "FUSIONSERVE_MODEL_CONTROL": "explicit"}
    env.pop("FUSIONSERVE_ADMIN_TOKEN", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusionserve",
            "serve",
            "--host",
            "0.0.0.0",
            "--model-repository",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "model_control=explicit" in done.stderr and "admin_token" in done.stderr
    assert "Traceback" not in done.stderr


def test_grpc_refusal_names_the_setting_in_process() -> None:
    """The gRPC status code itself (not only tritonclient's rendering of it)."""
    import asyncio

    from fusionserve.service.config import Settings
    from fusionserve.service.grpc.server import start_grpc_server
    from tests.unit.v2_fakes import FakeDataPlane

    async def run() -> None:
        server, health = await start_grpc_server(FakeDataPlane(), Settings(grpc_port=0))  # type: ignore[arg-type]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{health.port}") as channel:
                from fusionserve.service.grpc.protos import V2

                unload = channel.unary_unary(
                    "/inference.GRPCInferenceService/RepositoryModelUnload",
                    request_serializer=V2.RepositoryModelUnloadRequest.SerializeToString,
                    response_deserializer=V2.RepositoryModelUnloadResponse.FromString,
                )
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await unload(V2.RepositoryModelUnloadRequest(model_name="x" * 100_000))
                assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "model_control=none" in (caught.value.details() or "")
                assert len(caught.value.details() or "") < 1000  # the name is cut, not echoed whole
        finally:
            await server.stop(0)

    asyncio.run(run())
