"""``fusionserve.v1.FusionServe``: the native API over gRPC.

Encoded files and text in, decoded server-side exactly as the multipart
upload of the native HTTP API, so both doors answer the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from fusionserve.service.client_ids import check_client_id
from fusionserve.service.errors import FusionServeError
from fusionserve.service.grpc.errors import (
    answer_message,
    grpc_code,
    guarded,
    message_request_id,
    remaining_seconds,
)
from fusionserve.service.grpc.protos import NATIVE
from fusionserve.service.grpc.streaming import pipelined
from fusionserve.service.model.rows import RawInputs

if TYPE_CHECKING:
    from fusionserve.service.dataplane import DataPlaneApi, ModelInfo
    from fusionserve.service.memory import MemoryBudget
    from fusionserve.service.model.outputs import Embedding, Prediction

PROTOCOL = "grpc"
DEFAULT_TOP_K = 5  # as the native HTTP API


def rows_of(items: Any) -> list[RawInputs]:
    """Unset fields are absent modalities."""
    return [
        RawInputs(
            image=item.image if item.HasField("image") else None,
            audio=item.audio if item.HasField("audio") else None,
            text=item.text if item.HasField("text") else None,
        )
        for item in items
    ]


def _add_truncated(field: Any, truncated: dict[str, tuple[int, int]]) -> None:
    """No silent cut over gRPC either: the same figures as the HTTP answer's ``truncated``."""
    for modality, (given, kept) in truncated.items():
        field[modality].given = given
        field[modality].kept = kept


def _prediction(p: Prediction) -> Any:
    message = NATIVE.Prediction(
        modalities=p.modalities,
        predictions=[
            NATIVE.LabelScore(label=lab, score=s) for lab, s in zip(p.labels, p.scores, strict=True)
        ],
        probabilities=p.probabilities.tolist(),
    )
    if p.embedding is not None:
        message.embedding.values.extend(p.embedding.tolist())
        for m, v in (p.embeddings or {}).items():
            message.embeddings[m].values.extend(v.tolist())
    if p.attribution is not None:
        message.attribution.kind = p.attribution.kind
        for m, v in p.attribution.values.items():
            message.attribution.values[m].values.extend(v.tolist())
    _add_truncated(message.truncated, p.truncated)
    return message


def _embedding(e: Embedding) -> Any:
    message = NATIVE.Embedding(
        modalities=e.modalities,
        embedding=NATIVE.Vector(values=e.fused.tolist()),
        embeddings={m: NATIVE.Vector(values=v.tolist()) for m, v in e.per_modality.items()},
    )
    _add_truncated(message.truncated, e.truncated)
    return message


def model_message(info: ModelInfo) -> Any:
    message = NATIVE.Model(
        name=info.name,
        platform=info.platform,
        ready=info.ready,
        versions=[
            NATIVE.VersionStatus(version=v, state=s.state, reason=s.reason)
            for v, s in sorted(info.states.items(), key=lambda kv: int(kv[0]))
        ],
        labels=info.labels or [],
        error=info.error or "",
    )
    if info.config is not None:
        config = info.config
        message.task = config.task
        message.description = config.description
        message.modalities.extend(m.value for m in config.modalities.present())
        message.outputs.extend(
            NATIVE.Output(name=o.name, kind=o.kind.value, source=o.source, dims=o.dims)
            for o in config.outputs
        )
    return message


class NativeServicer:
    protocol = PROTOCOL

    def __init__(self, dataplane: DataPlaneApi, budget: MemoryBudget | None = None) -> None:
        self.dataplane = dataplane
        #: Charged with each Predict/Embed message while it is answered (``fusionserve.service.grpc.budget``).
        self.budget = budget

    async def _predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        check_client_id(request.request_id, "request_id")  # echoed in the answer
        results = await self.dataplane.predict(
            request.model,
            request.version or None,
            rows_of(request.items),
            top_k=request.top_k or DEFAULT_TOP_K,
            include=list(request.include),
            timeout_s=remaining_seconds(context),
            protocol=PROTOCOL,
        )
        return NATIVE.PredictResponse(
            model=results[0].model,
            version=results[0].version,
            results=[_prediction(p) for p in results],
            request_id=request.request_id,
        )

    @guarded
    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._predict(request, context)

    @guarded
    async def Embed(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        check_client_id(request.request_id, "request_id")  # echoed in the answer
        results = await self.dataplane.embed(
            request.model,
            request.version or None,
            rows_of(request.items),
            timeout_s=remaining_seconds(context),
            protocol=PROTOCOL,
        )
        return NATIVE.EmbedResponse(
            model=results[0].model,
            version=results[0].version,
            results=[_embedding(e) for e in results],
            request_id=request.request_id,
        )

    @guarded
    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return NATIVE.ListModelsResponse(models=[model_message(info) for info in self.dataplane.models()])

    @guarded
    async def GetModel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return model_message(self.dataplane.model_info(request.name))

    async def PredictStream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async def answer(request: Any) -> Any:
            # The answer carries the message's id; one the client left out is made here.
            request_id = message_request_id(request.request_id)

            async def predict() -> Any:
                response = await self._predict(request, context)
                response.request_id = request_id
                return NATIVE.PredictStreamResponse(request_id=request_id, response=response)

            def failed(error: FusionServeError) -> Any:
                status = NATIVE.Status(code=grpc_code(error).value[0], message=error.message)
                return NATIVE.PredictStreamResponse(request_id=request_id, error=status)

            return await answer_message("PredictStream", request, request_id, predict, failed, self.budget)

        async for response in pipelined(requests, answer):
            yield response
