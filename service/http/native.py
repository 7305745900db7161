"""The native multimodal HTTP API: ``/v1/models/...``, health and metrics.

Routes only translate: parse the body into rows, call the data plane, shape
the answer. Errors propagate as core errors; the app maps them once.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.dataplane import DataPlane, ModelInfo
from service.errors import FusionServeError
from service.http.parsing import ParsedRequest, parse_request, parse_timeout_ms
from service.model.outputs import Embedding, Prediction

TIMEOUT_HEADER = "x-request-timeout-ms"


def _prediction_json(p: Prediction) -> dict[str, Any]:
    return {
        "modalities": p.modalities,
        "predictions": [{"label": lab, "score": s} for lab, s in zip(p.labels, p.scores, strict=True)],
    }


def _embedding_json(e: Embedding) -> dict[str, Any]:
    return {
        "modalities": e.modalities,
        "embedding": e.fused.tolist(),
        "embeddings": {m: v.tolist() for m, v in e.per_modality.items()},
    }


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


def native_router(dataplane: DataPlane) -> APIRouter:
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

    async def _predict(request: Request, model: str, version: str | None) -> dict[str, Any]:
        parsed, timeout_s = await _parse(request, model, allow_top_k=True)
        results = await dataplane.predict(
            model,
            version,
            parsed.rows,
            top_k=parsed.top_k or 5,
            timeout_s=timeout_s,
            protocol="http",
        )
        head = {"model": results[0].model, "version": results[0].version}
        if parsed.batch:
            return {**head, "results": [_prediction_json(p) for p in results]}
        return {**head, **_prediction_json(results[0])}

    async def _embed(request: Request, model: str, version: str | None) -> dict[str, Any]:
        parsed, timeout_s = await _parse(request, model, allow_top_k=False)
        results = await dataplane.embed(
            model,
            version,
            parsed.rows,
            timeout_s=timeout_s,
            protocol="http",
        )
        head = {"model": results[0].model, "version": results[0].version}
        if parsed.batch:
            return {**head, "results": [_embedding_json(e) for e in results]}
        return {**head, **_embedding_json(results[0])}

    @router.post("/v1/models/{model}/predict", tags=["inference"], summary="Classify image/audio/text")
    async def predict(request: Request, model: str) -> dict[str, Any]:
        return await _predict(request, model, None)

    @router.post("/v1/models/{model}/versions/{version}/predict", tags=["inference"])
    async def predict_version(request: Request, model: str, version: str) -> dict[str, Any]:
        return await _predict(request, model, version)

    @router.post("/v1/models/{model}/embed", tags=["inference"], summary="Joint embeddings")
    async def embed(request: Request, model: str) -> dict[str, Any]:
        return await _embed(request, model, None)

    @router.post("/v1/models/{model}/versions/{version}/embed", tags=["inference"])
    async def embed_version(request: Request, model: str, version: str) -> dict[str, Any]:
        return await _embed(request, model, version)

    @router.get("/v1/models", tags=["models"])
    async def list_models() -> dict[str, Any]:
        return {"models": [model_json(info) for info in dataplane.models()]}

    @router.get("/v1/models/{model}", tags=["models"])
    async def get_model(model: str) -> dict[str, Any]:
        return model_json(dataplane.model_info(model))

    @router.get("/v1/models/{model}/ready", tags=["health"])
    async def model_ready(model: str) -> JSONResponse:
        ready = dataplane.model_ready(model)
        return JSONResponse({"name": model, "ready": ready}, status_code=200 if ready else 503)

    @router.get("/health/live", tags=["health"])
    async def live() -> dict[str, bool]:
        return {"live": dataplane.live()}

    @router.get("/health/ready", tags=["health"])
    async def ready() -> JSONResponse:
        ok = dataplane.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @router.get("/metrics", tags=["metrics"], include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = dataplane.metrics.exposition()
        return Response(content=body, media_type=content_type)

    return router
