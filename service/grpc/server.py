"""Start the gRPC door: V2 and native services, health, reflection, limits, TLS, auth.

``start_grpc_server`` returns the running ``grpc.aio.Server`` and its health
service; the composition root flips ``health.set_serving`` when the models
are ready and again on drain, and stops the server at the end.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fusionserve.service.grpc import protos, wire
from fusionserve.service.grpc.auth import BearerAuthInterceptor
from fusionserve.service.grpc.handlers import generic_handler
from fusionserve.service.grpc.health import HealthService
from fusionserve.service.grpc.native_servicer import NativeServicer
from fusionserve.service.grpc.v2_servicer import V2Servicer
from fusionserve.service.memory import MemoryBudget, process_budget
from fusionserve.service.v2.codec import TensorLimits

if TYPE_CHECKING:
    from fusionserve.service.config import Settings
    from fusionserve.service.dataplane import DataPlaneApi

log = logging.getLogger("fusionserve.grpc")


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    key = settings.tls_key_file.read_bytes()
    cert = settings.tls_cert_file.read_bytes()
    if settings.tls_client_ca_file is None:
        return grpc.ssl_server_credentials([(key, cert)])
    # mTLS: only clients holding a certificate signed by this CA get a connection.
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=settings.tls_client_ca_file.read_bytes(), require_client_auth=True
    )


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments of the gRPC server: limits, connection age, keepalive."""
    limit = settings.grpc_max_message_bytes
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        # HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS: one client cannot hold an
        # unbounded number of calls (each a task and its buffers) open at once;
        # its further calls wait in its own transport.
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        # Connections and metadata (gRPC's headers) bounded as over HTTP.
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
        ("grpc.max_metadata_size", settings.max_header_bytes),
        # Recycle long-lived connections so clients balancing over a
        # headless Service discover new replicas (docs/deployment.md).
        ("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.drain_timeout_s * 1000)),
        # Ping idle connections so peers that vanished (a NAT or load balancer
        # dropping the flow) are noticed and closed.
        ("grpc.keepalive_time_ms", int(settings.grpc_keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.grpc_keepalive_timeout_s * 1000)),
        ("grpc.http2.max_pings_without_data", 0),
        # Accept clients' own keepalive pings, also between calls, as often as
        # configured: gRPC's default (one per 5 minutes, none without calls)
        # answers a client pinging every 10-30 s with GOAWAY too_many_pings.
        ("grpc.keepalive_permit_without_calls", 1),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            int(settings.grpc_min_client_ping_interval_s * 1000),
        ),
    ]


#: Methods whose messages are charged to the memory budget (the inference calls).
CHARGED_V2 = frozenset({"ModelInfer", "ModelStreamInfer"})
CHARGED_NATIVE = frozenset({"Predict", "Embed", "PredictStream"})


def build_grpc_server(
    dataplane: DataPlaneApi, settings: Settings, budget: MemoryBudget | None = None
) -> tuple[grpc.aio.Server, HealthService]:
    """The server with every service registered, not yet bound or started.

    ``budget`` is the process's memory budget, shared with the HTTP door; None
    makes one from ``settings``, not exported as metrics (a server alone, as in tests).
    """
    if budget is None:
        budget = process_budget(settings, None)
    interceptors = []
    if settings.api_token or settings.admin_token:
        interceptors.append(BearerAuthInterceptor(settings.api_token, settings.admin_token))
    server = grpc.aio.server(
        options=server_options(settings),
        interceptors=interceptors,
        # Calls in progress over every connection; more are answered RESOURCE_EXHAUSTED.
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
    )
    limits = TensorLimits.from_settings(settings)
    v2 = wire.v2_infer_schema(
        max_tensors=limits.max_tensors,
        max_rank=limits.max_rank,
        max_bytes_elements=limits.max_bytes_elements,
        max_elements=limits.max_elements,
    )
    native = wire.native_schema(settings.max_batch_items)
    server.add_generic_rpc_handlers(
        (
            generic_handler(
                protos.V2_SERVICE,
                V2Servicer(dataplane, limits, model_control=settings.model_control, budget=budget),
                {"ModelInfer": v2, "ModelStreamInfer": v2},
                CHARGED_V2,
            ),
            generic_handler(
                protos.NATIVE_SERVICE,
                NativeServicer(dataplane, budget),
                {"Predict": native, "Embed": native, "PredictStream": native},
                CHARGED_NATIVE,
            ),
        )
    )
    health_service = HealthService(dataplane)
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    names = (protos.V2_SERVICE, protos.NATIVE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server, pool=protos.pool())
    return server, health_service


async def start_grpc_server(
    dataplane: DataPlaneApi, settings: Settings, budget: MemoryBudget | None = None
) -> tuple[grpc.aio.Server, HealthService]:
    """Bind ``settings.host:settings.grpc_port`` (0 picks a free port: see ``health.port``) and start."""
    server, health_service = build_grpc_server(dataplane, settings, budget)
    address = f"{settings.host}:{settings.grpc_port or 0}"
    credentials = _credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise RuntimeError(f"cannot bind gRPC to {address}")
    health_service.port = port
    await server.start()
    log.info("gRPC listening on %s:%s (tls=%s)", settings.host, port, credentials is not None)
    return server, health_service
