"""Composition root and lifecycle: repository → registry → data plane → doors.

Order of life: the HTTP (and gRPC) listeners come up first so liveness
answers while models load; readiness turns true once every model that should
load has loaded and warmed up. On SIGTERM/SIGINT the server stops accepting
(503 / UNAVAILABLE), finishes everything queued and in flight within the
drain timeout, then exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn

from service.config import Settings
from service.cpus import available_cpus
from service.dataplane import DataPlane
from service.failpoints import parse_failpoints
from service.gpu_metrics import sample_gpus
from service.http.app import create_http_app
from service.http.transport import TransportLimits, bounded_protocol
from service.metrics import Metrics
from service.model.repository import ModelRepository
from service.preprocess.image import set_max_decoded_bytes
from service.registry import ModelRegistry

log = logging.getLogger("fusionserve.app")


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the lifecycle owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class FusionServer:
    """One process serving one model repository over HTTP and (optionally) gRPC."""

    def __init__(self, settings: Settings, repository: Path) -> None:
        self.settings = settings
        set_max_decoded_bytes(settings.max_decoded_image_bytes)
        self.metrics = Metrics()
        self.registry = ModelRegistry(
            ModelRepository(repository, allow_torchscript=settings.allow_torchscript),
            self.metrics,
            parse_failpoints(settings.failpoints),
        )
        self.dataplane = DataPlane(
            self.registry,
            self.metrics,
            decode_threads=settings.decode_threads or available_cpus(),
            max_batch_items=settings.max_batch_items,
            max_top_k=settings.max_top_k,
        )
        self.http_app = create_http_app(self.dataplane, settings)
        self._stop = asyncio.Event()
        self._grpc: Any = None
        self._grpc_health: Any = None

    def request_stop(self) -> None:
        log.info("shutdown requested: draining")
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        http = _UvicornServer(self._uvicorn_config())
        http_task = asyncio.create_task(http.serve(), name="http")
        gpu_task = asyncio.create_task(sample_gpus(self.metrics), name="gpu-metrics")
        await self._start_grpc()
        while not http.started:
            if http_task.done():
                await http_task  # surfaces a bind error
                raise RuntimeError("HTTP server exited during start-up")
            await asyncio.sleep(0.01)
        log.info(
            "listening: http=%s:%s grpc=%s",
            self.settings.host,
            self.settings.http_port,
            self.settings.grpc_port,
        )
        started = time.monotonic()
        await self.registry.load_all()
        self.dataplane.start_accepting()
        self._set_grpc_serving(True)
        log.info("models loaded in %.1f s; ready=%s", time.monotonic() - started, self.dataplane.ready())
        await self._stop.wait()
        await self._drain()
        http.should_exit = True
        await http_task
        gpu_task.cancel()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        self.dataplane.shutdown()
        log.info("stopped")

    async def _drain(self) -> None:
        self.dataplane.stop_accepting()
        self._set_grpc_serving(False)
        budget = self.settings.drain_timeout_s
        started = time.monotonic()
        if not await self.dataplane.wait_idle(budget):
            log.warning("drain timeout (%.1f s) reached with requests still in flight", budget)
        remaining = max(0.0, budget - (time.monotonic() - started))
        await self.registry.close(remaining)

    def _uvicorn_config(self) -> uvicorn.Config:
        s = self.settings
        return uvicorn.Config(
            self.http_app,
            host=s.host,
            port=s.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
            http=bounded_protocol(
                TransportLimits(
                    max_url_bytes=s.max_url_bytes,
                    max_header_bytes=s.max_header_bytes,
                    header_timeout_s=s.header_timeout_s,
                    body_timeout_s=s.body_timeout_s,
                    max_connections=s.max_connections,
                )
            ),
            ssl_certfile=str(s.tls_cert_file) if s.tls_cert_file else None,
            ssl_keyfile=str(s.tls_key_file) if s.tls_key_file else None,
            # mTLS: with a client CA, a client without a certificate it signed
            # cannot complete the handshake (same rule as the gRPC door).
            ssl_ca_certs=str(s.tls_client_ca_file) if s.tls_client_ca_file else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if s.tls_client_ca_file else ssl.CERT_NONE,
            timeout_graceful_shutdown=max(1, int(s.drain_timeout_s)),
            backlog=2048,
        )

    async def _start_grpc(self) -> None:
        if self.settings.grpc_port is None:
            return
        from service.grpc.server import start_grpc_server  # imports grpc only when a port is set

        self._grpc, self._grpc_health = await start_grpc_server(self.dataplane, self.settings)

    def _set_grpc_serving(self, serving: bool) -> None:
        if self._grpc_health is not None:
            self._grpc_health.set_serving(serving)


def serve(settings: Settings, repository: Path) -> None:
    """Run until SIGTERM/SIGINT; returns after a clean drain."""
    server = FusionServer(settings, repository)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(server.run())
    else:
        uvloop.run(server.run())
