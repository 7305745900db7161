"""The Open Inference Protocol (KServe V2) over REST: ``/v2/...``.

Translation only: the binary tensor extension and JSON tensors are parsed by
``fusionserve.service.v2.codec``, their meaning lives in ``fusionserve.service.v2.mapping``, and the
work is the data plane's. V2 clients read errors as ``{"error": "message"}``,
so this router answers core errors in that shape (statuses from the one
HTTP table, ``fusionserve.service.http.errors``) instead of the native body.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from fusionserve.service import jsonbody
from fusionserve.service.config import Settings
from fusionserve.service.dataplane import DataPlaneApi, VersionStats
from fusionserve.service.errors import FusionServeError, InvalidInput, NotReady, Overloaded
from fusionserve.service.http import schemas as sc
from fusionserve.service.http.content_coding import compress, decompress, request_coding, response_coding
from fusionserve.service.http.disconnect import unless_disconnected
from fusionserve.service.http.errors import http_status
from fusionserve.service.http.fastpath import FastRoutes
from fusionserve.service.http.openapi import also, ok, ref, v2_errors, v2_infer_body, v2_json_body
from fusionserve.service.model_control import require_model_control
from fusionserve.service.v2.codec import (
    HEADER_LENGTH,
    InferRequest,
    RequestedOutput,
    TensorLimits,
    encode_infer_response,
    parse_header_length,
    parse_infer_request,
)
from fusionserve.service.v2.infer import run_infer
from fusionserve.service.v2.load_request import refuse_overrides
from fusionserve.service.v2.mapping import (
    TensorSpec,
    input_specs,
    output_specs,
    require_config,
    triton_model_config,
)
from fusionserve.service.v2.truncation import TRUNCATED_PARAMETER, truncated_parameter

PROTOCOL = "v2-rest"
BINARY_CONTENT_TYPE = "application/octet-stream"


def v2_error(error: FusionServeError) -> JSONResponse:
    headers = {"Retry-After": "1"} if isinstance(error, Overloaded | NotReady) else None
    return JSONResponse({"error": error.message}, status_code=http_status(error), headers=headers)


class V2Route(APIRoute):
    """Answers core errors as V2 clients expect them: ``{"error": "..."}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except FusionServeError as exc:
                return v2_error(exc)

        return guarded


def _tensor_specs(specs: list[TensorSpec]) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def stats_json(stats: VersionStats) -> dict[str, Any]:
    """Triton's statistics shape, which its clients parse."""
    return {
        "name": stats.model,
        "version": stats.version,
        "last_inference": 0,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": _duration(stats.success_count, stats.success_ns),
            "fail": _duration(stats.failure_count, 0),
            "queue": _duration(stats.inference_count, stats.queue_ns),
            "compute_input": _duration(0, 0),
            "compute_infer": _duration(stats.execution_count, stats.compute_ns),
            "compute_output": _duration(0, 0),
        },
        "batch_stats": [],
    }


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        return {}
    jsonbody.check_structure(body)
    document = jsonbody.loads(body)
    if not isinstance(document, dict):
        raise InvalidInput("request body must be a JSON object")
    return document


def _binary_outputs(
    document_params: dict[str, Any], requested: list[RequestedOutput], produced: list[str]
) -> set[str]:
    """Which outputs go binary: per output ``binary_data``, else request-level ``binary_data_output``."""
    default = document_params.get("binary_data_output") is True
    chosen = {name for name in produced if default}
    for output in requested:
        flag = output.parameters.get("binary_data")
        if flag is True:
            chosen.add(output.name)
        elif flag is False:
            chosen.discard(output.name)
    return chosen


#: The documented answers of each kind of V2 route (``fusionserve.service.http.openapi``).
_VERSIONED = (400, 404)  # a malformed version name is 400, an unknown one 404
_STATS_DOC: dict[str, Any] = {
    "responses": ok(sc.V2StatsResponse) | v2_errors(*_VERSIONED),
}
_READY_DOC: dict[str, Any] = {
    "responses": ok(sc.ModelReady, description="Ready")
    | also(503, sc.ModelReady, "Not ready")
    | v2_errors(*_VERSIONED),
}
_CONFIG_DOC: dict[str, Any] = {
    "responses": ok(sc.V2ModelConfig) | v2_errors(*_VERSIONED, 503),
}
_METADATA_DOC: dict[str, Any] = {
    "responses": ok(sc.V2ModelMetadata) | v2_errors(*_VERSIONED, 503),
}
_INFER_DOC: dict[str, Any] = {
    "responses": {
        200: {
            "description": "Outputs as JSON, or (binary outputs asked for) the JSON header of "
            "Inference-Header-Content-Length bytes followed by the raw tensor bytes",
            "content": {
                "application/json": {"schema": ref(sc.V2InferResponse)},
                BINARY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
            },
            "headers": {
                HEADER_LENGTH: {
                    "description": "length of the JSON header (binary answers only)",
                    "schema": {"type": "integer"},
                }
            },
        }
    }
    | v2_errors(400, 401, 404, 413, 415, 422, 429, 500, 503, 504),
    "openapi_extra": v2_infer_body(),
}
_LOAD_DOC: dict[str, Any] = {
    "responses": ok(sc.Empty, description="Loaded") | v2_errors(400, 401, 403, 404, 413, 503),
    "openapi_extra": v2_json_body(sc.V2LoadRequest),
}
_UNLOAD_DOC: dict[str, Any] = {
    "responses": ok(sc.Empty, description="Unloaded") | v2_errors(400, 401, 403, 404, 413),
    "openapi_extra": v2_json_body(sc.Empty),
}


def v2_router(dataplane: DataPlaneApi, settings: Settings, fast: FastRoutes | None = None) -> APIRouter:
    """``fast``: where the infer handler is also registered for :mod:`.fastpath`."""
    router = APIRouter(route_class=V2Route, tags=["v2"])
    limits = TensorLimits.from_settings(settings)

    @router.get("/v2", summary="Server metadata", responses=ok(sc.V2ServerMetadata))
    async def server_metadata() -> dict[str, Any]:
        return dataplane.server_metadata()

    @router.get(
        "/v2/health/live",
        summary="Liveness",
        responses=ok(sc.V2Live) | also(503, sc.V2Live, "Not live"),
    )
    async def live() -> JSONResponse:
        ok = dataplane.live()
        return JSONResponse({"live": ok}, status_code=200 if ok else 503)

    @router.get(
        "/v2/health/ready",
        summary="Readiness",
        responses=ok(sc.V2Ready) | also(503, sc.V2Ready, "Not ready (loading, failed model, draining)"),
    )
    async def ready() -> JSONResponse:
        ok = dataplane.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def _model_ready(model: str, version: str | None) -> JSONResponse:
        ok = dataplane.model_ready(model, version)
        return JSONResponse({"name": model, "ready": ok}, status_code=200 if ok else 503)

    async def _metadata(model: str, version: str | None) -> dict[str, Any]:
        info = dataplane.model_info(model, version)
        config = require_config(model, info.config, info.error)
        return {
            "name": info.name,
            "versions": info.versions,
            "platform": info.platform,
            "inputs": _tensor_specs(input_specs(config)),
            "outputs": _tensor_specs(output_specs(config, info.labels)),
        }

    async def _infer(request: Request, model: str, version: str | None) -> Response:
        body = await request.body()

        def parse() -> InferRequest:
            data = body
            coding = request_coding(request.headers.get("content-encoding"))
            if coding is not None:  # the header length counts the uncompressed body
                data = decompress(body, coding, settings.max_body_bytes)
            header_length = parse_header_length(request.headers.get(HEADER_LENGTH), len(data))
            return parse_infer_request(data, header_length, limits)

        result = await unless_disconnected(
            request, run_infer(dataplane, model, version, parse, timeout_s=None, protocol=PROTOCOL)
        )
        asked = result.request
        binary = _binary_outputs(asked.parameters, asked.outputs, [t.name for t in result.outputs])
        head: dict[str, Any] = {"model_name": result.model, "model_version": result.version}
        if result.id:
            head["id"] = result.id
        truncated = truncated_parameter(result.truncated)
        if truncated is not None:
            head["parameters"] = {TRUNCATED_PARAMETER: truncated}
        payload, json_length = encode_infer_response(head, result.outputs, binary)
        headers = {"Vary": "Accept-Encoding"}
        coding = response_coding(request.headers.get("accept-encoding"))
        if coding is not None:
            payload = compress(payload, coding)
            headers["Content-Encoding"] = coding
        if json_length is None:
            return Response(payload, media_type="application/json", headers=headers)
        headers[HEADER_LENGTH] = str(json_length)
        return Response(payload, media_type=BINARY_CONTENT_TYPE, headers=headers)

    @router.get(
        "/v2/models/stats",
        summary="Statistics of every model",
        responses=ok(sc.V2StatsResponse),
    )
    async def all_stats() -> dict[str, Any]:
        return {"model_stats": [stats_json(s) for s in dataplane.statistics()]}

    @router.get("/v2/models/{model}/stats", summary="Statistics of a model", **_STATS_DOC)
    async def model_stats(model: str) -> dict[str, Any]:
        return {"model_stats": [stats_json(s) for s in dataplane.statistics(model)]}

    @router.get(
        "/v2/models/{model}/versions/{version}/stats", summary="Statistics of a version", **_STATS_DOC
    )
    async def version_stats(model: str, version: str) -> dict[str, Any]:
        return {"model_stats": [stats_json(s) for s in dataplane.statistics(model, version)]}

    @router.get("/v2/models/{model}/ready", summary="Model readiness", **_READY_DOC)
    async def model_ready(model: str) -> JSONResponse:
        return await _model_ready(model, None)

    @router.get("/v2/models/{model}/versions/{version}/ready", summary="Version readiness", **_READY_DOC)
    async def version_ready(model: str, version: str) -> JSONResponse:
        return await _model_ready(model, version)

    def _config(model: str, version: str | None) -> dict[str, Any]:
        info = dataplane.model_info(model, version)
        config = require_config(model, info.config, info.error)
        return triton_model_config(info.name, info.platform, config, info.labels, dataplane.max_batch_items)

    @router.get(
        "/v2/models/{model}/config", summary="Model configuration (Triton's extension)", **_CONFIG_DOC
    )
    async def model_config(model: str) -> dict[str, Any]:
        return _config(model, None)

    @router.get(
        "/v2/models/{model}/versions/{version}/config", summary="Version configuration", **_CONFIG_DOC
    )
    async def version_config(model: str, version: str) -> dict[str, Any]:
        return _config(model, version)

    @router.get("/v2/models/{model}", summary="Model metadata: inputs and outputs", **_METADATA_DOC)
    async def model_metadata(model: str) -> dict[str, Any]:
        return await _metadata(model, None)

    @router.get("/v2/models/{model}/versions/{version}", summary="Version metadata", **_METADATA_DOC)
    async def version_metadata(model: str, version: str) -> dict[str, Any]:
        return await _metadata(model, version)

    async def _infer_answering_v2_errors(request: Request, model: str, version: str | None) -> Response:
        """``_infer`` as :class:`V2Route` runs it, for the fast path (which has no route class)."""
        try:
            return await _infer(request, model, version)
        except FusionServeError as exc:
            return v2_error(exc)

    if fast is not None:
        fast.add("v2", "infer", _infer_answering_v2_errors)

    @router.post("/v2/models/{model}/infer", summary="Inference (JSON or binary tensor data)", **_INFER_DOC)
    async def infer(request: Request, model: str) -> Response:
        return await _infer(request, model, None)

    @router.post(
        "/v2/models/{model}/versions/{version}/infer", summary="Inference on a version", **_INFER_DOC
    )
    async def infer_version(request: Request, model: str, version: str) -> Response:
        return await _infer(request, model, version)

    @router.post(
        "/v2/repository/index",
        summary="Repository index",
        responses=ok(sc.V2RepositoryEntry, array=True) | v2_errors(400, 401, 413),
        openapi_extra=v2_json_body(sc.V2RepositoryIndexRequest),
    )
    async def repository_index(request: Request) -> list[dict[str, str]]:
        document = await _json_body(request)
        if not isinstance(document.get("ready", False), bool):
            raise InvalidInput("'ready' must be true or false")
        index = dataplane.repository_index()
        if document.get("ready") is True:
            index = [entry for entry in index if entry["state"] == "READY"]
        return index

    @router.post("/v2/repository/models/{model}/load", summary="Load a model", **_LOAD_DOC)
    async def load(request: Request, model: str) -> dict[str, Any]:
        require_model_control(settings.model_control, "load", model)
        document = await _json_body(request)
        parameters = document.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput("parameters must be a JSON object")
        refuse_overrides(model, parameters)
        await dataplane.load(model)
        return {}

    @router.post("/v2/repository/models/{model}/unload", summary="Unload a model", **_UNLOAD_DOC)
    async def unload(request: Request, model: str) -> dict[str, Any]:
        require_model_control(settings.model_control, "unload", model)
        await _json_body(request)
        await dataplane.unload(model)
        return {}

    return router
