"""HTTP/1.1 load from pre-encoded requests over raw sockets, cheap enough to overload a server.

The mixed-door generator (``traffic.py``) spends ~1 ms of client CPU per
request (httpx and grpcio in Python); on the 2-core test machine it could
start only 361 of the 1,385 requests per second asked for "4x saturation",
so the server was never overloaded. Here a request is one ``write`` of bytes
built once and an answer is a status line and a ``Content-Length`` read by an
``asyncio.Protocol``: tens of µs per request, so the server, not the
generator, runs out of CPU first.

Open loop (:meth:`Flood.open_loop`): requests start on a fixed schedule
whatever the server does, each on an idle kept-alive connection (a new one
when none is idle, up to ``max_connections``; past that the start is
counted as skipped). Closed loop (:meth:`Flood.closed_loop`): ``concurrency``
connections each send their next request when the answer arrives, which is
how saturation is measured.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class FloodTally:
    statuses: Counter[int] = field(default_factory=Counter)
    #: (start time, seconds) of each request answered 200.
    latencies: list[tuple[float, float]] = field(default_factory=list)
    #: Requests lost with their connection (no answer at all).
    lost: int = 0
    started: int = 0
    skipped: int = 0

    @property
    def answered_ok(self) -> int:
        return len(self.latencies)

    def p99(self) -> float:
        values = [s for _, s in self.latencies]
        return float(np.percentile(values, 99)) if values else float("nan")


def http_request(path: str, body: bytes, content_type: str, host: str = "127.0.0.1") -> bytes:
    """One POST, bytes on the wire."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Connection(asyncio.Protocol):
    """One kept-alive connection carrying one request at a time."""

    def __init__(self, flood: Flood) -> None:
        self.flood = flood
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.started = 0.0  # 0: idle
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.started = time.monotonic()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[: end + 4 + length]
        status = int(head[9:12])
        started, self.started = self.started, 0.0
        keep = b"connection: close" not in head
        if not keep and self.transport is not None:
            self.closed = True
            self.transport.close()
        self.flood.answered(self, status, started, keep)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.started:
            self.started = 0.0
            self.flood.lost(self)


class Flood:
    """Send ``request`` to ``host:port`` open or closed loop, tallying every answer."""

    def __init__(self, host: str, port: int, request: bytes, max_connections: int = 1024) -> None:
        self.host = host
        self.port = port
        self.request = request
        self.max_connections = max_connections
        #: Idle kept-alive connections, reused oldest first: none sits idle long enough for the
        #: server's keep-alive timeout to close it as a request is written on it (a lost request).
        self._idle: deque[_Connection] = deque()
        self._open = 0
        self._tally = FloodTally()
        self._closed_loop_until = 0.0
        self._outstanding = 0
        self._connecting: set[asyncio.Task[None]] = set()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        self._open += 1
        try:
            _, protocol = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except OSError:
            self._open -= 1
            raise
        return protocol

    def answered(self, conn: _Connection, status: int, started: float, keep: bool) -> None:
        self._outstanding -= 1
        tally = self._tally
        tally.statuses[status] += 1
        if status == 200:
            tally.latencies.append((started, time.monotonic() - started))
        if not keep:
            self._open -= 1
        if time.monotonic() < self._closed_loop_until:
            if keep:
                self._start_on(conn)
            else:
                self._spawn_new()
        elif keep:
            self._idle.append(conn)

    def lost(self, conn: _Connection) -> None:
        self._outstanding -= 1
        self._open -= 1
        self._tally.lost += 1

    def _start_on(self, conn: _Connection) -> None:
        self._tally.started += 1
        self._outstanding += 1
        conn.send(self.request)

    async def _start_new(self) -> None:
        try:
            conn = await self._connect()
        except OSError:
            self._tally.lost += 1
            return
        self._start_on(conn)

    def _start(self) -> None:
        while self._idle:
            conn = self._idle.popleft()
            if not conn.closed:
                self._start_on(conn)
                return
            self._open -= 1
        if self._open >= self.max_connections:
            self._tally.skipped += 1
            return
        self._spawn_new()

    def _spawn_new(self) -> None:
        task = asyncio.ensure_future(self._start_new())
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def open_loop(self, rate: float, seconds: float) -> FloodTally:
        """Start ``rate`` requests per second for ``seconds``; wait for the answers."""
        self._tally = tally = FloodTally()
        begin = time.monotonic()
        issued = 0
        while True:
            now = time.monotonic()
            if now - begin >= seconds:
                break
            for _ in range(int((now - begin) * rate) - issued):
                self._start()
                issued += 1
            await asyncio.sleep(0.001)
        await self._settle(30.0)
        return tally

    async def closed_loop(self, concurrency: int, seconds: float) -> FloodTally:
        """``concurrency`` connections, each sending again when answered, for ``seconds``."""
        self._tally = tally = FloodTally()
        self._closed_loop_until = time.monotonic() + seconds
        for _ in range(concurrency):
            self._start()
        await asyncio.sleep(seconds)
        await self._settle(30.0)
        return tally

    async def _settle(self, timeout_s: float) -> None:
        """Until every started request is answered or lost (at most ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while (self._outstanding > 0 or self._connecting) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # the counts are kept by protocol callbacks, not awaitable

    def close(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
