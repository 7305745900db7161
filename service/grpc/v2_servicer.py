"""``inference.GRPCInferenceService``: the Open Inference Protocol over gRPC.

Translation only, like the REST door: messages become ``fusionserve.service.v2`` types,
``fusionserve.service.v2.infer`` does the work through the data plane, and core errors
become status codes through ``fusionserve.service.grpc.errors``. The client's deadline is
passed on as the request's timeout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format

from fusionserve.service.client_ids import echoable_id
from fusionserve.service.errors import SHOWN_CHARS, FusionServeError, InvalidInput
from fusionserve.service.grpc.errors import answer_message, guarded, message_request_id, remaining_seconds
from fusionserve.service.grpc.protos import V2
from fusionserve.service.grpc.streaming import pipelined
from fusionserve.service.grpc.v2_tensors import (
    fast_request,
    raw_contents,
    request_from_proto,
    response_to_proto,
)
from fusionserve.service.model_control import require_model_control
from fusionserve.service.v2.codec import DEFAULT_LIMITS, TensorLimits
from fusionserve.service.v2.infer import run_infer
from fusionserve.service.v2.load_request import refuse_overrides
from fusionserve.service.v2.mapping import input_specs, output_specs, require_config, triton_model_config
from fusionserve.service.v2.truncation import TRUNCATED_PARAMETER, truncated_parameter

if TYPE_CHECKING:
    from fusionserve.service.dataplane import DataPlaneApi, VersionStats
    from fusionserve.service.memory import MemoryBudget

PROTOCOL = "v2-grpc"


def _duration(count: int, ns: int) -> Any:
    return V2.StatisticDuration(count=count, ns=ns)


def _statistics(stats: VersionStats) -> Any:
    return V2.ModelStatistics(
        name=stats.model,
        version=stats.version,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=V2.InferStatistics(
            success=_duration(stats.success_count, stats.success_ns),
            fail=_duration(stats.failure_count, 0),
            queue=_duration(stats.inference_count, stats.queue_ns),
            compute_input=_duration(0, 0),
            compute_infer=_duration(stats.execution_count, stats.compute_ns),
            compute_output=_duration(0, 0),
        ),
    )


class V2Servicer:
    """One method per RPC of the service; names match the proto."""

    protocol = PROTOCOL

    def __init__(
        self,
        dataplane: DataPlaneApi,
        limits: TensorLimits = DEFAULT_LIMITS,
        *,
        model_control: str = "none",
        budget: MemoryBudget | None = None,
    ) -> None:
        self.dataplane = dataplane
        #: Charged with each ModelInfer message while it is answered (``fusionserve.service.grpc.budget``).
        self.budget = budget
        self.limits = limits
        self.model_control = model_control  # fusionserve.service.model_control

    @guarded
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return V2.ServerLiveResponse(live=self.dataplane.live())

    @guarded
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return V2.ServerReadyResponse(ready=self.dataplane.ready())

    @guarded
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return V2.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version or None))

    @guarded
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = self.dataplane.server_metadata()
        return V2.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    @guarded
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        info = self.dataplane.model_info(request.name, request.version or None)
        config = require_config(request.name, info.config, info.error)
        tensor = V2.ModelMetadataResponse.TensorMetadata
        return V2.ModelMetadataResponse(
            name=info.name,
            versions=info.versions,
            platform=info.platform,
            inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in input_specs(config)],
            outputs=[
                tensor(name=s.name, datatype=s.datatype, shape=s.shape)
                for s in output_specs(config, info.labels)
            ],
        )

    @guarded
    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        info = self.dataplane.model_info(request.name, request.version or None)
        config = require_config(request.name, info.config, info.error)
        values = triton_model_config(
            info.name, info.platform, config, info.labels, self.dataplane.max_batch_items
        )
        return V2.ModelConfigResponse(config=json_format.ParseDict(values, V2.ModelConfig()))

    async def _infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not request.model_name:
            raise InvalidInput("model_name is required")
        raw = raw_contents(request)
        result = await run_infer(
            self.dataplane,
            request.model_name,
            request.model_version or None,
            lambda: request_from_proto(request, self.limits, raw),
            timeout_s=remaining_seconds(context),
            protocol=PROTOCOL,
            fast=lambda accepted: fast_request(request, accepted, self.limits.max_bytes_elements, raw),
        )
        response = response_to_proto(
            V2.ModelInferResponse, result.model, result.version, result.id, result.outputs
        )
        truncated = truncated_parameter(result.truncated)
        if truncated is not None:
            response.parameters[TRUNCATED_PARAMETER].string_param = truncated
        return response

    @guarded
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._infer(request, context)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async def answer(request: Any) -> Any:
            async def infer() -> Any:
                return V2.ModelStreamInferResponse(infer_response=await self._infer(request, context))

            def failed(error: FusionServeError) -> Any:
                # Only what may be echoed: a refused id or an over-long name is not repeated.
                response = V2.ModelInferResponse(
                    model_name=request.model_name[:SHOWN_CHARS], id=echoable_id(request.id)
                )
                return V2.ModelStreamInferResponse(error_message=error.message, infer_response=response)

            # The V2 id is the client's to echo; the log line gets a request id either way.
            request_id = message_request_id(request.id)
            return await answer_message("ModelStreamInfer", request, request_id, infer, failed, self.budget)

        async for response in pipelined(requests, answer):
            yield response

    @guarded
    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        stats = self.dataplane.statistics(request.name or None, request.version or None)
        return V2.ModelStatisticsResponse(model_stats=[_statistics(s) for s in stats])

    @guarded
    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        entries = self.dataplane.repository_index()
        if request.ready:
            entries = [e for e in entries if e["state"] == "READY"]
        index = V2.RepositoryIndexResponse.ModelIndex
        return V2.RepositoryIndexResponse(models=[index(**e) for e in entries])

    @guarded
    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        require_model_control(self.model_control, "load", request.model_name)
        refuse_overrides(request.model_name, request.parameters.keys())
        await self.dataplane.load(request.model_name)
        return V2.RepositoryModelLoadResponse()

    @guarded
    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        require_model_control(self.model_control, "unload", request.model_name)
        await self.dataplane.unload(request.model_name)
        return V2.RepositoryModelUnloadResponse()
