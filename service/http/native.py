"""The native multimodal HTTP API: ``/v1/models/...``, health and metrics.

Routes only translate: parse the body into rows, call the data plane, shape
the answer. Errors propagate as core errors; the app maps them once.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from fusionserve.service.dataplane import DataPlane, ModelInfo
from fusionserve.service.errors import FusionServeError
from fusionserve.service.http import schemas as s
from fusionserve.service.http.disconnect import unless_disconnected
from fusionserve.service.http.fastpath import FastRoutes
from fusionserve.service.http.openapi import also, native_body, native_errors, ok
from fusionserve.service.http.parsing import ParsedRequest, parse_request, parse_timeout_ms
from fusionserve.service.model.outputs import Embedding, Prediction, truncated_json

TIMEOUT_HEADER = "x-request-timeout-ms"

#: Every status an inference route can answer besides 200 (401 only with an API token).
INFERENCE_ERRORS = (400, 401, 404, 413, 415, 422, 429, 500, 503, 504)
_PREDICT_DOC: dict[str, Any] = {
    "responses": ok(s.PredictResponse, s.PredictBatchResponse) | native_errors(*INFERENCE_ERRORS),
    "openapi_extra": native_body(top_k=True),
}
_EMBED_DOC: dict[str, Any] = {
    "responses": ok(s.EmbedResponse, s.EmbedBatchResponse) | native_errors(*INFERENCE_ERRORS),
    "openapi_extra": native_body(top_k=False),
}


def json_answer(body: dict[str, Any]) -> Response:
    """The answer serialised once, in C (orjson): FastAPI's path for a returned dict
    validates and encodes it in Python first (about 13 µs more per answer, measured
    in-process; docs/performance.md). A NaN score becomes null instead of a 500."""
    return Response(orjson.dumps(body), media_type="application/json")


def _prediction_json(p: Prediction) -> dict[str, Any]:
    body: dict[str, Any] = {
        "modalities": p.modalities,
        "predictions": [{"label": lab, "score": s} for lab, s in zip(p.labels, p.scores, strict=True)],
    }
    if p.embedding is not None:
        body["embedding"] = p.embedding.tolist()
        body["embeddings"] = {m: v.tolist() for m, v in (p.embeddings or {}).items()}
    if p.attribution is not None:
        a = p.attribution
        body["attribution"] = {
            "kind": a.kind,
            "modalities": {
                m: (v.tolist() if a.kind == "logits" else float(v[0])) for m, v in a.values.items()
            },
        }
    if p.truncated:
        body["truncated"] = truncated_json(p.truncated)
    return body


def _embedding_json(e: Embedding) -> dict[str, Any]:
    body: dict[str, Any] = {
        "modalities": e.modalities,
        "embedding": e.fused.tolist(),
        "embeddings": {m: v.tolist() for m, v in e.per_modality.items()},
    }
    if e.truncated:
        body["truncated"] = truncated_json(e.truncated)
    return body


def model_json(info: ModelInfo) -> dict[str, Any]:
    """Everything a client needs to call a model: modalities and their limits, labels, versions."""
    body: dict[str, Any] = {
        "name": info.name,
        "platform": info.platform,
        "ready": info.ready,
        "versions": [
            {"version": v, "state": s.state, **({"reason": s.reason} if s.reason else {})}
            for v, s in sorted(info.states.items(), key=lambda kv: int(kv[0]))
        ],
    }
    if info.error:
        body["error"] = info.error
    if info.config is not None:
        cfg = info.config
        body.update(
            {
                "task": cfg.task,
                "description": cfg.description,
                "backend": cfg.backend,
                "modalities": cfg.modalities.model_dump(exclude_none=True),
                "outputs": [o.model_dump(mode="json") for o in cfg.outputs],
                "batching": cfg.batching.model_dump(),
                "instance_groups": [g.model_dump() for g in cfg.instance_groups],
            }
        )
    if info.labels is not None:
        body["labels"] = info.labels
    return body


def native_router(dataplane: DataPlane, fast: FastRoutes | None = None) -> APIRouter:
    """``fast``: where the inference handlers are also registered for :mod:`.fastpath`."""
    router = APIRouter()

    async def _parse(request: Request, model: str, allow_top_k: bool) -> tuple[ParsedRequest, float | None]:
        """The rows and deadline; a refusal here is counted like one from the core."""
        try:
            parsed = await parse_request(
                request, allow_top_k=allow_top_k, max_items=dataplane.max_batch_items
            )
            return parsed, parse_timeout_ms(request.headers.get(TIMEOUT_HEADER))
        except FusionServeError as exc:
            dataplane.record_rejected(model, "http", exc)
            raise

    async def _predict(request: Request, model: str, version: str | None) -> Response:
        parsed, timeout_s = await _parse(request, model, allow_top_k=True)
        results = await unless_disconnected(
            request,
            dataplane.predict(
                model,
                version,
                parsed.rows,
                top_k=parsed.top_k or 5,
                include=parsed.include,
                timeout_s=timeout_s,
                protocol="http",
            ),
        )
        head = {"model": results[0].model, "version": results[0].version}
        if parsed.batch:
            return json_answer({**head, "results": [_prediction_json(p) for p in results]})
        return json_answer({**head, **_prediction_json(results[0])})

    async def _embed(request: Request, model: str, version: str | None) -> Response:
        parsed, timeout_s = await _parse(request, model, allow_top_k=False)
        results = await unless_disconnected(
            request,
            dataplane.embed(
                model,
                version,
                parsed.rows,
                timeout_s=timeout_s,
                protocol="http",
            ),
        )
        head = {"model": results[0].model, "version": results[0].version}
        if parsed.batch:
            return json_answer({**head, "results": [_embedding_json(e) for e in results]})
        return json_answer({**head, **_embedding_json(results[0])})

    if fast is not None:
        fast.add("v1", "predict", _predict)
        fast.add("v1", "embed", _embed)

    @router.post(
        "/v1/models/{model}/predict",
        tags=["inference"],
        summary="Classify image/audio/text",
        description="The top-k labels for any subset of image, audio and text. Multipart "
        "form (files), JSON with base64 files, or the JSON batch form `items`.",
        **_PREDICT_DOC,
    )
    async def predict(request: Request, model: str) -> Response:
        return await _predict(request, model, None)

    @router.post(
        "/v1/models/{model}/versions/{version}/predict",
        tags=["inference"],
        summary="Classify with one version",
        **_PREDICT_DOC,
    )
    async def predict_version(request: Request, model: str, version: str) -> Response:
        return await _predict(request, model, version)

    @router.post(
        "/v1/models/{model}/embed",
        tags=["inference"],
        summary="Joint embeddings",
        description="The fused embedding and one per modality sent (embedding models).",
        **_EMBED_DOC,
    )
    async def embed(request: Request, model: str) -> Response:
        return await _embed(request, model, None)

    @router.post(
        "/v1/models/{model}/versions/{version}/embed",
        tags=["inference"],
        summary="Joint embeddings from one version",
        **_EMBED_DOC,
    )
    async def embed_version(request: Request, model: str, version: str) -> Response:
        return await _embed(request, model, version)

    @router.get("/v1/models", tags=["models"], summary="Every model", responses=ok(s.ModelList))
    async def list_models() -> dict[str, Any]:
        return {"models": [model_json(info) for info in dataplane.models()]}

    @router.get(
        "/v1/models/{model}",
        tags=["models"],
        summary="One model: modalities, limits, labels, versions",
        responses=ok(s.ModelMetadata) | native_errors(404),
    )
    async def get_model(model: str) -> dict[str, Any]:
        return model_json(dataplane.model_info(model))

    @router.get(
        "/v1/models/{model}/ready",
        tags=["health"],
        summary="Whether a model can take requests",
        responses=ok(s.ModelReady, description="Ready")
        | also(503, s.ModelReady, "Not ready (loading, failed, or draining)")
        | native_errors(404),
    )
    async def model_ready(model: str) -> JSONResponse:
        ready = dataplane.model_ready(model)
        return JSONResponse({"name": model, "ready": ready}, status_code=200 if ready else 503)

    @router.get(
        "/health/live",
        tags=["health"],
        summary="Liveness",
        responses=ok(s.Live) | also(503, s.Live, "Not live: the process cannot recover (e.g. stuck threads)"),
    )
    async def live() -> JSONResponse:
        reason = dataplane.liveness()
        if reason is None:
            return JSONResponse({"live": True})
        return JSONResponse({"live": False, "reason": reason}, status_code=503)

    @router.get(
        "/health/ready",
        tags=["health"],
        summary="Readiness",
        description="503 until every model that should load has loaded (`strict_readiness`, "
        "the default), and while draining. When not ready, `models` names each model that is "
        "not and why (e.g. the error that stopped it loading).",
        responses=ok(s.Ready, description="Ready") | also(503, s.Ready, "Not ready, with the reasons"),
    )
    async def ready() -> JSONResponse:
        reasons = dataplane.readiness()
        if not reasons:
            return JSONResponse({"ready": True})
        body = {"ready": False, "reasons": reasons, "models": dataplane.not_ready_reasons()}
        return JSONResponse(body, status_code=503)

    @router.get("/metrics", tags=["metrics"], include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = dataplane.metrics.exposition()
        return Response(content=body, media_type=content_type)

    return router
