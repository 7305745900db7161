"""The V2 REST router against a fake data plane: bodies, statuses and the binary extension.

The standard clients drive the real server in tests/integration; here every
error path is reached deterministically, and each answer is checked in the
exact shape V2 clients parse (``{"error": "..."}``, ``{"ready": true}``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from fusionserve.service.config import Settings
from fusionserve.service.errors import InvalidInput, NotReady, Overloaded
from fusionserve.service.http.v2 import v2_router
from fusionserve.service.v2.codec import serialize_bytes
from tests.unit.v2_fakes import FakeDataPlane


@pytest.fixture
def dataplane() -> FakeDataPlane:
    return FakeDataPlane()


@pytest.fixture
async def client(dataplane: FakeDataPlane) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    # model_control=explicit: the repository tests below load and unload.
    app.include_router(v2_router(dataplane, Settings(model_control="explicit")))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://v2") as http:
        yield http


def _text_request(*texts: str, **extra: object) -> dict[str, object]:
    return {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}],
        **extra,
    }


async def test_health_bodies_are_what_clients_read(
    client: httpx.AsyncClient, dataplane: FakeDataPlane
) -> None:
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    dataplane.is_ready = False
    answer = await client.get("/v2/health/ready")
    assert (answer.status_code, answer.json()) == (503, {"ready": False})
    model = await client.get("/v2/models/digits-fusion/ready")
    assert (model.status_code, model.json()) == (503, {"name": "digits-fusion", "ready": False})


async def test_metadata_lists_exactly_the_mapped_tensors(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v2/models/digits-fusion/versions/1")).json()
    assert body["platform"] == "onnxruntime_onnx" and body["versions"] == ["1"]
    assert body["inputs"] == [
        {"name": m, "datatype": "BYTES", "shape": [-1]} for m in ("image", "audio", "text")
    ]
    assert [(o["name"], o["datatype"], o["shape"]) for o in body["outputs"]] == [
        ("probabilities", "FP32", [-1, 10]),
        ("labels", "BYTES", [-1, -1]),
        ("scores", "FP32", [-1, -1]),
    ]
    embed = (await client.get("/v2/models/digits-embed")).json()
    assert [o["name"] for o in embed["outputs"]] == [
        "fused_embedding",
        "image_embedding",
        "audio_embedding",
        "text_embedding",
    ]


async def test_json_infer(client: httpx.AsyncClient, dataplane: FakeDataPlane) -> None:
    answer = await client.post("/v2/models/digits-fusion/infer", json=_text_request("seven", "a", id="q"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("digits-fusion", "1", "q")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["labels"]["shape"] == [2, 1] and outputs["labels"]["data"] == ["5", "7"]
    assert outputs["probabilities"]["shape"] == [2, 10]
    assert dataplane.calls[-1].protocol == "v2-rest" and dataplane.calls[-1].top_k == 1


async def test_binary_request_and_selected_binary_output(
    client: httpx.AsyncClient, dataplane: FakeDataPlane
) -> None:
    image = serialize_bytes([b"\x89PNG fake"])
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1, 1],
                    "parameters": {"binary_data_size": len(image)},
                },
                {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["seven"]},
            ],
            "outputs": [{"name": "scores", "parameters": {"binary_data": True}}, {"name": "labels"}],
            "parameters": {"top_k": 3},
        }
    ).encode()
    answer = await client.post(
        "/v2/models/digits-fusion/infer",
        content=header + image,
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert answer.status_code == 200, answer.text
    length = int(answer.headers["Inference-Header-Content-Length"])
    head = json.loads(answer.content[:length])
    assert [o["name"] for o in head["outputs"]] == ["scores", "labels"]
    scores = np.frombuffer(answer.content[length:], dtype="<f4").reshape(head["outputs"][0]["shape"])
    assert scores.shape == (1, 3) and scores[0, 0] == pytest.approx(0.55)
    assert dataplane.calls[-1].rows[0].image == b"\x89PNG fake"


async def test_embedding_outputs_follow_the_modalities_sent(client: httpx.AsyncClient) -> None:
    body = (await client.post("/v2/models/digits-embed/infer", json=_text_request("a", ""))).json()
    outputs = {o["name"]: o for o in body["outputs"]}
    assert set(outputs) == {"fused_embedding", "text_embedding"}
    # The second row's empty element masks text for that row: its text embedding is zeros.
    assert outputs["text_embedding"]["data"] == [3.0] * 4 + [0.0] * 4


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
            400,
            "datatype FP32",
        ),
        (
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}]},
            400,
            "[B] or [B,1]",
        ),
        (
            {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
            400,
            "[B,H,W,3]",
        ),
        ({"inputs": []}, 400, "no inputs"),
        (
            {"inputs": [{"name": "colour", "datatype": "BYTES", "shape": [1], "data": ["red"]}]},
            400,
            "unknown input",
        ),
        ({**_text_request("a"), "outputs": [{"name": "logits"}]}, 400, "unknown output(s) ['logits']"),
        ({**_text_request("a"), "parameters": {"top_k": "three"}}, 400, "top_k must be an integer"),
    ],
)
async def test_bad_requests_answer_400_with_v2_error_body(
    client: httpx.AsyncClient, dataplane: FakeDataPlane, body: dict[str, object], status: int, message: str
) -> None:
    answer = await client.post("/v2/models/digits-fusion/infer", json=body)
    assert answer.status_code == status
    assert message in answer.json()["error"]
    assert dataplane.rejected[-1] == ("digits-fusion", "v2-rest", "InvalidInput")


async def test_malformed_binary_header_is_400(client: httpx.AsyncClient) -> None:
    for length in ("nine", "99999"):
        answer = await client.post(
            "/v2/models/digits-fusion/infer",
            content=b'{"inputs": []}',
            headers={"Inference-Header-Content-Length": length},
        )
        assert answer.status_code == 400
        assert "Inference-Header-Content-Length" in answer.json()["error"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v2/models/nope/infer", "unknown model 'nope'"),
        ("/v2/models/digits-fusion/versions/9/infer", "version '9'"),
    ],
)
async def test_unknown_model_or_version_is_404(client: httpx.AsyncClient, path: str, message: str) -> None:
    answer = await client.post(path, json=_text_request("a"))
    assert answer.status_code == 404
    assert message in answer.json()["error"]


@pytest.mark.parametrize(
    ("error", "status"),
    [(Overloaded("queue full"), 429), (NotReady("draining"), 503), (InvalidInput("bad"), 400)],
)
async def test_core_errors_use_the_http_table(
    client: httpx.AsyncClient, dataplane: FakeDataPlane, error: Exception, status: int
) -> None:
    dataplane.fail_with = error
    answer = await client.post("/v2/models/digits-fusion/infer", json=_text_request("a"))
    assert (answer.status_code, answer.json()) == (status, {"error": str(error)})


async def test_repository_and_statistics(client: httpx.AsyncClient, dataplane: FakeDataPlane) -> None:
    assert (await client.post("/v2/repository/models/digits-embed/unload")).status_code == 200
    index = (await client.post("/v2/repository/index", json={"ready": True})).json()
    assert [e["name"] for e in index] == ["digits-fusion"]
    assert (await client.post("/v2/repository/models/digits-embed/load")).status_code == 200
    assert (await client.post("/v2/repository/models/nope/load")).status_code == 404
    stats = (await client.get("/v2/models/digits-fusion/stats")).json()["model_stats"]
    assert stats[0]["inference_stats"]["success"] == {"count": 3, "ns": 3000}
    assert len((await client.get("/v2/models/stats")).json()["model_stats"]) == 2
