"""The standard ``grpc.health.v1.Health`` service, answered live from the data plane.

Service ``""`` and the two API services are SERVING while the server is
ready and not draining; a model's name is SERVING while that model is ready.
Status is computed on each call (and polled for ``Watch``), so nothing has
to push updates when models load or unload. ``set_serving(False)`` is the
drain switch the composition root flips on SIGTERM.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fusionserve.service.errors import ModelNotFound
from fusionserve.service.grpc.protos import NATIVE_SERVICE, V2_SERVICE

if TYPE_CHECKING:
    from fusionserve.service.dataplane import DataPlaneApi

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
WATCH_INTERVAL_S = 0.5


class HealthService(health_pb2_grpc.HealthServicer):
    def __init__(self, dataplane: DataPlaneApi) -> None:
        self.dataplane = dataplane
        self._serving = False
        #: The bound port (useful when the configured port is 0).
        self.port = 0

    def set_serving(self, serving: bool) -> None:
        self._serving = serving

    def status(self, service: str) -> int:
        if service in ("", V2_SERVICE, NATIVE_SERVICE):
            return SERVING if self._serving and self.dataplane.ready() else NOT_SERVING
        try:
            ready = self.dataplane.model_ready(service)
        except ModelNotFound:
            return SERVICE_UNKNOWN
        return SERVING if self._serving and ready else NOT_SERVING

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        status = self.status(request.service)
        if status == SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service or model {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        last: int | None = None
        while True:
            status = self.status(request.service)
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            await asyncio.sleep(WATCH_INTERVAL_S)
