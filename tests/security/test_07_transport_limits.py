"""Class 7: transport limits: URL and header size, slow clients, connections, concurrent gRPC calls.

One server with small limits (env), raw sockets to send what no client
library would: an 8 MiB URL, 1 MiB of headers, a request trickled and left
unfinished, more connections than allowed, more gRPC calls than allowed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fusionserve.service.grpc import protos
from fusionserve.service.grpc.protos import NATIVE
from tests.conftest import RunningServer, launch_server
from tests.security.hostile import watched

LIMITS = {
    "FUSIONSERVE_MAX_URL_BYTES": "4096",
    "FUSIONSERVE_MAX_HEADER_BYTES": "16384",
    "FUSIONSERVE_HEADER_TIMEOUT_S": "1.5",
    "FUSIONSERVE_BODY_TIMEOUT_S": "1.5",
    "FUSIONSERVE_KEEPALIVE_TIMEOUT_S": "1",
    "FUSIONSERVE_MAX_CONNECTIONS": "12",
    "FUSIONSERVE_GRPC_MAX_CONCURRENT_RPCS": "1",
}


@pytest.fixture(scope="module")
def limited(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = launch_server(model_repository, tmp_path_factory.mktemp("transport"), env=LIMITS)
    yield server
    server.stop()


def _connect(server: RunningServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=20)


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 64 KiB)."""
    data = b""
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while len(data) < 65536:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def _send(server: RunningServer, request: bytes) -> bytes:
    with _connect(server) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        return _answer(sock)


@pytest.mark.parametrize("size", [8 * 1024, 8 * 1024 * 1024])
def test_long_url_is_414(limited: RunningServer, size: int) -> None:
    with watched(limited, f"URL of {size} bytes"):
        answer = _send(limited, b"GET /health/live?" + b"a" * size + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414"), answer[:200]
    assert b"max_url_bytes" in answer


@pytest.mark.parametrize(
    ("label", "headers"),
    [
        ("one 1 MiB header", b"X-Big: " + b"a" * (1 << 20) + b"\r\n"),
        ("20,000 small headers", b"".join(b"X-%d: v\r\n" % i for i in range(20_000))),
    ],
)
def test_large_headers_are_431(limited: RunningServer, label: str, headers: bytes) -> None:
    with watched(limited, label):
        answer = _send(limited, b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"max_header_bytes" in answer


@pytest.mark.parametrize(
    ("label", "partial"),
    [
        ("nothing sent", b""),
        ("headers trickled", b"GET /health/live HTTP/1.1\r\nHost: x\r\n"),
        (
            "body left unfinished",
            b"POST /v1/models/digits-fusion/predict HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"text": ',
        ),
    ],
)
def test_slow_clients_are_cut_off(limited: RunningServer, label: str, partial: bytes) -> None:
    """A request not received in time is answered 408 (or cut off) and its connection closed."""
    with watched(limited, f"slowloris: {label}"), _connect(limited) as sock:
        sock.sendall(partial)
        answer = _answer(sock)  # returns when the server closes the connection
    print(f"{label}: {answer[:60]!r}")
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_an_idle_kept_alive_connection_is_closed_quietly(limited: RunningServer) -> None:
    """After an answer, a connection idle for the keep-alive timeout (1 s) is closed without a
    408; a next request begun on it in time gets the header timeout (1.5 s) from then on."""
    live = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(limited) as sock:
        sock.sendall(live)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        rest = _answer(sock)
        idle = time.monotonic() - started
    assert rest == b"" and 0.9 <= idle < 2.0, (rest[:100], idle)
    with _connect(limited) as sock:
        sock.sendall(live)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(0.6)
        sock.sendall(b"GET /health/live HTTP/1.1\r\n")  # begun, never finished
        started = time.monotonic()
        answer = _answer(sock)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408") and 1.4 <= waited < 2.5, (answer[:100], waited)


def test_connections_over_the_limit_are_refused(limited: RunningServer) -> None:
    held = [_connect(limited) for _ in range(int(LIMITS["FUSIONSERVE_MAX_CONNECTIONS"]))]
    try:
        answer = _send(limited, b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        for sock in held:
            sock.close()
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert b"max_connections" in answer
    limited.wait_live(30)  # the held connections gone, the server answers again


def test_grpc_calls_over_the_limit_are_resource_exhausted(limited: RunningServer) -> None:
    release = threading.Event()

    def held_requests() -> Iterator[object]:
        release.wait(30)
        return
        yield  # a generator that sends nothing until released

    with grpc.insecure_channel(limited.grpc_target) as channel:
        stream = channel.stream_stream(
            f"/{protos.NATIVE_SERVICE}/PredictStream",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=NATIVE.PredictStreamResponse.FromString,
        )
        unary = channel.unary_unary(
            f"/{protos.NATIVE_SERVICE}/ListModels",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=NATIVE.ListModelsResponse.FromString,
        )
        unary(NATIVE.ListModelsRequest(), timeout=30)  # the channel is up
        call = stream(held_requests(), timeout=60)
        try:
            codes = []
            for _ in range(50):  # until the held stream counts as in progress on the server
                try:
                    unary(NATIVE.ListModelsRequest(), timeout=30)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
                    break
                threading.Event().wait(0.1)
        finally:
            release.set()
            call.cancel()
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED]
