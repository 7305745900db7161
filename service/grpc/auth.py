"""Optional bearer-token auth for gRPC, the same rules as the HTTP door.

Inference calls need ``api_token`` when it is set; repository calls need
``admin_token`` when it is set. Health, reflection, metadata and readiness
stay open, as they are over HTTP. The token travels in the ``authorization``
metadata as ``Bearer <token>``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from fusionserve.service.grpc.protos import NATIVE_SERVICE, V2_SERVICE

INFERENCE_METHODS = frozenset(
    {
        f"/{V2_SERVICE}/ModelInfer",
        f"/{V2_SERVICE}/ModelStreamInfer",
        f"/{NATIVE_SERVICE}/Predict",
        f"/{NATIVE_SERVICE}/Embed",
        f"/{NATIVE_SERVICE}/PredictStream",
    }
)
ADMIN_METHODS = frozenset(
    f"/{V2_SERVICE}/{name}" for name in ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")
)


def _denied(message: str, streaming_request: bool) -> grpc.RpcMethodHandler:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(requests: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if streaming_request:
        return grpc.stream_stream_rpc_method_handler(stream)
    return grpc.unary_unary_rpc_method_handler(unary)


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, api_token: str | None, admin_token: str | None) -> None:
        self.api_token = api_token
        self.admin_token = admin_token

    def _expected(self, method: str) -> str | None:
        if method in ADMIN_METHODS:
            return self.admin_token
        if method in INFERENCE_METHODS:
            return self.api_token
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        expected = self._expected(method)
        if expected is None:
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = str(metadata.get("authorization", ""))
        streaming = method.endswith("Stream") or method.endswith("StreamInfer")
        if not given.startswith("Bearer "):
            return _denied("missing bearer token", streaming)
        if not hmac.compare_digest(given[7:].encode(), expected.encode()):
            return _denied("invalid bearer token", streaming)
        return await continuation(handler_call_details)
