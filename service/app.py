"""Composition root and lifecycle: repository → registry → data plane → doors.

Order of life: the HTTP (and gRPC) listeners come up first so liveness
answers while models load; readiness turns true once every model that should
load has loaded and warmed up.

Shutdown (SIGTERM/SIGINT), in four bounded steps, so that every request the
server reads gets an answer:

1. grace (``shutdown_grace_s``): readiness false at once, gRPC health
   NOT_SERVING, but new work is still taken (a load balancer routes here for
   a moment after the endpoint is removed); every HTTP answer carries
   ``Connection: close``, so no kept-alive connection is left idle to be cut
   under a client's next request;
2. drain (``drain_timeout_s``): new work gets 503 + ``Retry-After`` (gRPC:
   UNAVAILABLE, health NOT_SERVING), everything queued and in flight finishes;
3. close (``shutdown_close_s``): gRPC sends GOAWAY and stops; the HTTP
   listener stops taking handshakes, connections close after their answers,
   compute threads get that long to return;
4. exit: 0 when everything finished, 1 when the drain timed out with work
   left or a compute thread had to be abandoned. A watchdog ends the process
   at grace + drain + close + 1 s whatever happens (docs/deployment.md has
   the arithmetic against Kubernetes' grace period).

With ``--workers N`` (N > 1) this module runs in each of N worker processes
started by ``service/supervisor.py``: the HTTP listener is the supervisor's
socket (inherited), gRPC binds the same port with ``SO_REUSEPORT``, and
``service/peers.py`` makes readiness and load/unload hold for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvicorn

from fusionserve.service.config import Settings
from fusionserve.service.cpus import available_cpus, default_executor_threads
from fusionserve.service.dataplane import DataPlane
from fusionserve.service.failpoints import parse_failpoints
from fusionserve.service.gpu_metrics import sample_gpus
from fusionserve.service.http.app import create_http_app
from fusionserve.service.http.listener import refuse_new_connections
from fusionserve.service.http.middleware import Activity
from fusionserve.service.http.transport import TransportLimits, bounded_protocol
from fusionserve.service.memory import process_budget
from fusionserve.service.metrics import Metrics
from fusionserve.service.model.repository import ModelRepository
from fusionserve.service.peers import Peers, WorkerPlace
from fusionserve.service.preprocess.image import set_max_decoded_bytes
from fusionserve.service.registry import ModelRegistry
from fusionserve.service.workers.pool import stuck_threads

log = logging.getLogger("fusionserve.app")


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the lifecycle owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class FusionServer:
    """One process serving one model repository over HTTP and (optionally) gRPC."""

    def __init__(self, settings: Settings, repository: Path, place: WorkerPlace | None = None) -> None:
        self.place = place
        if place is not None and place.grpc_port is not None:
            settings = settings.model_copy(update={"grpc_port": place.grpc_port})
        self.settings = settings
        set_max_decoded_bytes(settings.max_decoded_image_bytes)
        self.metrics = Metrics(instance_prefix=f"w{place.index}-" if place else "")
        self.registry = ModelRegistry(
            ModelRepository(repository, allow_torchscript=settings.allow_torchscript),
            self.metrics,
            parse_failpoints(settings.failpoints),
            max_stuck_threads=settings.max_stuck_threads,
            allow_model_code=settings.allow_model_code,
        )
        if place is not None:
            self.registry.process_count = place.count
        self.dataplane = DataPlane(
            self.registry,
            self.metrics,
            decode_threads=settings.decode_threads or available_cpus(),
            max_batch_items=settings.max_batch_items,
            max_top_k=settings.max_top_k,
            max_timeout_s=settings.max_timeout_s,
            strict_readiness=settings.strict_readiness,
        )
        self.http_activity = Activity()
        # One memory budget for the bytes in flight over every door of this process.
        self.memory_budget = process_budget(settings, self.metrics)
        self.http_app = create_http_app(self.dataplane, settings, self.http_activity, self.memory_budget)
        self.peers = Peers(place) if place is not None else None
        self._drain_started = 0.0
        self.dataplane.peers = self.peers
        self._stop = asyncio.Event()
        self._grpc: Any = None
        self._grpc_health: Any = None
        self._grpc_stopping: asyncio.Future[Any] | None = None

    def request_stop(self) -> None:
        if self._stop.is_set():
            return
        log.info("shutdown requested: draining")
        self.dataplane.begin_drain()  # readiness false at once
        self._set_grpc_serving(False)
        self._start_watchdog()
        self._stop.set()

    def _start_watchdog(self) -> None:
        """End the process if the orderly shutdown overruns its budget (a hang we did not foresee)."""
        s = self.settings
        budget = s.shutdown_grace_s + s.drain_timeout_s + s.shutdown_close_s + 1.0

        def overrun() -> None:
            log.error("shutdown took longer than its budget of %.1f s: exiting now", budget)
            _exit_now(1)

        timer = threading.Timer(budget, overrun)
        timer.daemon = True
        timer.start()

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code (0: every accepted request answered)."""
        loop = asyncio.get_running_loop()
        # asyncio.to_thread's pool (repository reads, model loads) sized as Python
        # would, but from the CPUs allowed rather than the host's cores.
        loop.set_default_executor(
            ThreadPoolExecutor(max_workers=default_executor_threads(), thread_name_prefix="asyncio")
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        http = _UvicornServer(self._uvicorn_config())
        sockets = None
        if self.place is not None:
            sockets = [socket.socket(fileno=self.place.http_fd)]
        http_task = asyncio.create_task(http.serve(sockets=sockets), name="http")
        if self.peers is not None:
            await self.peers.serve_control(self.dataplane.apply_peer_change)
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
        await self.dataplane.replay_peer_changes()
        settle_heap()
        self.dataplane.start_accepting()
        self._set_grpc_serving(True)
        log.info("models loaded in %.1f s; ready=%s", time.monotonic() - started, self.dataplane.ready())
        await self._stop.wait()
        clean = await self._drain()
        if self._grpc is not None:  # GOAWAY: the drain is over, health said NOT_SERVING meanwhile
            self._grpc_stopping = asyncio.ensure_future(self._grpc.stop(grace=self.settings.shutdown_close_s))
        await self._close_listeners(http)
        http.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(http_task, self.settings.shutdown_close_s + 1.0)
        gpu_task.cancel()
        if self._grpc_stopping is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._grpc_stopping, self.settings.shutdown_close_s + 1.0)
        self.dataplane.shutdown()
        if self.peers is not None:
            self.peers.close()
        code = 0 if clean else 1
        log.info("stopped (exit %d)", code)
        return code

    async def _drain(self) -> bool:
        """Grace, then drain; True when every accepted request was answered."""
        s = self.settings
        if s.shutdown_grace_s > 0:
            log.info("grace period: taking new work for %.1f s more, readiness false", s.shutdown_grace_s)
            await asyncio.sleep(s.shutdown_grace_s)
        self.dataplane.stop_accepting()
        self.http_activity.mark_drain()
        log.info("drain: new work gets 503 now; waiting for %d requests", self.dataplane.inflight)
        budget = s.drain_timeout_s
        started = self._drain_started = time.monotonic()
        clean = await self.dataplane.wait_idle(budget)
        # Requests still being received or parsed never reached the data plane:
        # they get their 503 now, before anything closes.
        left = max(0.0, budget - (time.monotonic() - started))
        clean = await self.http_activity.wait_idle(left) and clean
        if not clean:
            log.warning(
                "drain timeout (%.1f s) reached with %d requests still in flight "
                "(%d HTTP requests from before the drain still being received or answered)",
                budget,
                self.dataplane.inflight,
                self.http_activity.early,
            )
        remaining = max(0.0, budget - (time.monotonic() - started))
        closed = await self.registry.close(remaining, thread_grace_s=s.shutdown_close_s)
        return clean and closed

    async def _close_listeners(self, http: uvicorn.Server) -> None:
        """Take no new connection, but answer those already made before closing them.

        A connection the kernel completed (or the server accepted) just now
        carries a request that would be cut by a plain close; for a moment it
        is still accepted and answered (503 + Connection: close), while new
        handshakes go unanswered and later meet a clean refusal. Bounded by
        ``shutdown_close_s`` less half a second (for uvicorn's own close).
        """
        await self._wait_for_peers_to_close()
        filtered = refuse_new_connections(http.servers)
        log.info("close: new connections refused (%d listeners filtered); answering those made", filtered)
        # A connection already made may not have sent its request yet (its
        # client is slow to write it): closing it then cuts that request. Every
        # answer now says Connection: close, so wait for the connections to be
        # closed by their answers; only those still silent at the end of the
        # close budget (idle kept-alive clients) are closed under them.
        wait = max(0.0, self.settings.shutdown_close_s - 0.5)
        connections: set[Any] = getattr(getattr(http, "server_state", None), "connections", set())
        deadline = time.monotonic() + wait
        for _ in range(int(wait / 0.02) + 1):
            if not (connections or self.http_activity.active) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)

    async def _wait_for_peers_to_close(self) -> None:
        """With ``--workers N``, hold the shared listener open until every worker has drained.

        The socket filter that refuses new handshakes belongs to the listening
        socket, which every worker shares: the first worker to finish its drain
        would otherwise refuse new connections for the whole server while
        another still drains, and their clients would get no handshake instead
        of the drain's 503 + ``Retry-After``. Meanwhile this worker keeps
        accepting and answers new work with 503. Bounded by the end of the
        drain budget (a peer stuck past it is being abandoned anyway).
        """
        if self.peers is None:
            return
        self.peers.set_closing()
        deadline = self._drain_started + self.settings.drain_timeout_s
        polls = int(max(0.0, deadline - time.monotonic()) / 0.02) + 1  # the board is shared memory
        for _ in range(polls):
            if self.peers.all_closing() or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)

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
                    inflight=self.http_app.inflight_bound,
                )
            ),
            ssl_certfile=str(s.tls_cert_file) if s.tls_cert_file else None,
            ssl_keyfile=str(s.tls_key_file) if s.tls_key_file else None,
            # mTLS: with a client CA, a client without a certificate it signed
            # cannot complete the handshake (same rule as the gRPC door).
            ssl_ca_certs=str(s.tls_client_ca_file) if s.tls_client_ca_file else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if s.tls_client_ca_file else ssl.CERT_NONE,
            # By then the drain is over: only idle connections are left to close.
            timeout_graceful_shutdown=max(1, int(s.shutdown_close_s)),
            timeout_keep_alive=s.keepalive_timeout_s,
            backlog=2048,
        )

    async def _start_grpc(self) -> None:
        if self.settings.grpc_port is None:
            return
        from fusionserve.service.grpc.server import start_grpc_server  # imports grpc only when a port is set

        self._grpc, self._grpc_health = await start_grpc_server(
            self.dataplane, self.settings, self.memory_budget
        )

    def _set_grpc_serving(self, serving: bool) -> None:
        if self._grpc_health is not None:
            self._grpc_health.set_serving(serving)


#: Container allocations between young-generation collections (Python's default: 700).
GC_YOUNG_THRESHOLD = 7_000


def settle_heap() -> None:
    """Keep the cyclic garbage collector off what start-up built, and collect young objects less often.

    After the models load the process holds ~90,000 tracked objects
    (FastAPI, pydantic, the configs, the metrics); every full collection
    walked them all (~50 ms on the 2-core test machine, on the event loop)
    and collections took 4.5-9 % of the loop's CPU under load (``perf``;
    docs/performance.md, "Fourth step"). ``gc.freeze`` moves them to the
    permanent generation once, after a collection; requests' own cycles are
    still collected, in young generations ten times larger than Python's
    default. What start-up built and later drops is freed by reference
    counting as before; only its cycles are never collected.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _exit_now(code: int) -> None:
    """Leave without joining threads (a stuck compute thread would hold the exit for ever)."""
    logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def serve(settings: Settings, repository: Path, place: WorkerPlace | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code after the drain."""
    server = FusionServer(settings, repository, place)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        code = asyncio.run(server.run())
    else:
        code = uvloop.run(server.run())
    if stuck_threads():
        log.error("%d compute threads are stuck in calls that never returned: exiting", stuck_threads())
        _exit_now(1)
    return code
