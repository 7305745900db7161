"""Drive a running fusionserve with the KServe SDK's V2 clients; print what they saw as JSON.

Run in a child interpreter by ``test_v2_kserve_clients.py``: the KServe SDK and
tritonclient register the same ``inference.*`` protobuf names, so the two
cannot be imported into one process (the pytest process imports tritonclient).

    python -m tests.integration.kserve_probe HTTP_URL GRPC_TARGET IMAGE AUDIO TEXT
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

MODEL = "digits-fusion"


def _answer(response: Any) -> dict[str, Any]:
    outputs = {o.name: o for o in response.outputs}
    return {
        "model_name": response.model_name,
        "labels": [
            [v.decode() if isinstance(v, bytes) else v for v in row]
            for row in outputs["labels"].as_numpy().tolist()
        ],
        "scores": outputs["scores"].as_numpy().tolist(),
    }


def _numpy_request(image: bytes, audio: bytes, text: str, top_k: int) -> InferRequest:
    inputs = []
    for name, value in (("image", image), ("audio", audio), ("text", text.encode())):
        tensor = InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([value], dtype=object), binary_data=True)
        inputs.append(tensor)
    outputs = [
        RequestedOutput("labels", {"binary_data": False}),
        RequestedOutput("scores", {"binary_data": False}),
    ]
    return InferRequest(
        MODEL, inputs, request_id="kserve-rest", parameters={"top_k": top_k}, request_outputs=outputs
    )


def _list_request(image: bytes, audio: bytes, text: str, top_k: int) -> InferRequest:
    """List data: the gRPC client puts it in the typed ``bytes_contents`` field, not raw contents."""
    inputs = [
        InferInput("image", [1], "BYTES", data=[image]),
        InferInput("audio", [1], "BYTES", data=[audio]),
        InferInput("text", [1], "BYTES", data=[text]),
    ]
    return InferRequest(MODEL, inputs, request_id="kserve-grpc", parameters={"top_k": top_k})


async def probe(http_url: str, grpc_target: str, image: bytes, audio: bytes, text: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=60))
    try:
        seen["rest_live"] = await rest.is_server_live(http_url)
        seen["rest_ready"] = await rest.is_server_ready(http_url)
        seen["rest_model_ready"] = await rest.is_model_ready(http_url, MODEL)
        seen["rest"] = _answer(
            await rest.infer(http_url, _numpy_request(image, audio, text, 3), model_name=MODEL)
        )
        try:
            await rest.infer(http_url, _numpy_request(image, audio, text, 3), model_name="no-such-model")
        except Exception as exc:  # httpx.HTTPStatusError carrying the server's message
            seen["rest_error"] = {"status": exc.response.status_code, "message": str(exc)}  # type: ignore[attr-defined]
    finally:
        await rest.close()
    client = InferenceGRPCClient(grpc_target, retries=0, timeout=60)
    try:
        seen["grpc_live"] = await client.is_server_live()
        seen["grpc_ready"] = await client.is_server_ready()
        seen["grpc_model_ready"] = await client.is_model_ready(MODEL)
        seen["grpc"] = _answer(await client.infer(_list_request(image, audio, text, 3)))
        numpy_request = _numpy_request(image, audio, text, 3)
        seen["grpc_raw"] = _answer(await client.infer(numpy_request))
        try:
            await client.infer(InferRequest("no-such-model", [InferInput("text", [1], "BYTES", data=["x"])]))
        except Exception as exc:  # grpc.aio.AioRpcError
            seen["grpc_error"] = {"status": str(exc.code()), "message": exc.details()}  # type: ignore[attr-defined]
    finally:
        await client.close()
    return seen


def main() -> int:
    http_url, grpc_target, image, audio, text = sys.argv[1:6]
    result = asyncio.run(
        probe(http_url, grpc_target, Path(image).read_bytes(), Path(audio).read_bytes(), text)
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
