"""HTTP/1.1 transport limits below the ASGI app: URL and header size, receive time, connections.

uvicorn's httptools protocol accepts a URL or headers of any size (an 8 MiB
URL and 64 MiB of headers were served), waits forever for a request's bytes
(slowloris: one byte every few seconds holds a connection and its buffers),
and accepts any number of connections. This subclass of it answers, before
the app sees the request:

- 414 when the request target passes ``max_url_bytes``;
- 431 when the headers (names, values and separators) pass ``max_header_bytes``;
- 408 when the headers are not complete ``header_timeout_s`` after the
  connection opened or the request began, or the body is not complete
  ``body_timeout_s`` after the headers (a request the app already answers is
  cut off: the client is gone for practical purposes); deadlines are looked
  at every quarter of the shorter timeout (at most 0.25 s), so a timeout
  fires up to that much late;
- 503 and close when ``max_connections`` connections are already open;
- 503 + ``Retry-After`` for an inference request when the process already
  holds ``max_inflight_requests`` of them (:mod:`.inflight`).

Each refusal but the last closes the connection: its state cannot be trusted
any more. A shed request is well formed, so its connection is kept: its body
is skipped as it arrives and the next request on it is served as usual
(closing with the body unread would make the kernel reset the connection,
and the client could lose the 503 before reading it).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fusionserve.service.http.disconnect import HANGUP
from fusionserve.service.http.errors import door_error_json
from fusionserve.service.http.inflight import HELD, InflightBound
from fusionserve.service.http.routes import inference_model

log = logging.getLogger("fusionserve.http")

REASONS = {
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
CODES = {408: "request_timeout", 414: "uri_too_long", 431: "headers_too_large", 503: "too_many_connections"}


@dataclass(frozen=True)
class TransportLimits:
    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 1024
    #: The process's bound on inference requests: past it one is shed once its headers are read.
    inflight: InflightBound | None = None


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a refused request."""


def raw_answer(status: int, body: bytes, *, close: bool = True, retry_after: bool = False) -> bytes:
    """A complete HTTP/1.1 JSON response, written straight to the transport."""
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        + ("retry-after: 1\r\n" if retry_after else "")
        + ("connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode() + body


def refusal(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, in the native error shape."""
    return raw_answer(status, door_error_json(False, CODES[status], message))


@functools.lru_cache(maxsize=16)
def busy_answer(message: str, v2: bool, close: bool) -> bytes:
    """The 503 + Retry-After of a shed request (built once per bound, door and close)."""
    return raw_answer(503, door_error_json(v2, "overloaded", message), close=close, retry_after=True)


class OneWriteAnswers:
    """The connection's transport as uvicorn's request cycles see it: an answer in one write.

    uvicorn writes a response's head as soon as the app starts the response,
    then its body: two writes, two TCP segments, and on loopback the kernel
    delivers each one to the client inside the server's own ``write`` call.
    Here the head (a write that begins ``HTTP/1.1`` with a status of 200 or
    more; never ``100 Continue``) is held and written together with the next
    write or at ``close`` (dropped when the connection is lost). Bytes
    keep their order; a held head waits at most for its answer's first body
    bytes. Everything else goes to the transport unchanged.
    """

    __slots__ = ("_held", "transport")

    #: Bodies up to this size are joined with their head; larger ones follow it in their own write.
    JOIN_MAX = 64 * 1024

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if len(data) <= self.JOIN_MAX:
                self.transport.write(held + data)
                return
            self.transport.write(held)
        elif data.startswith(b"HTTP/1.1 ") and data[9:10] != b"1":
            self._held = data
            return
        self.transport.write(data)

    def discard(self) -> None:
        self._held = None

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


#: The deadline's part between two requests on a kept-alive connection.
_KEEP_ALIVE = "keep-alive"


def _tick(limits: TransportLimits) -> float:
    """How often deadlines are looked at: late by at most a quarter of the shorter timeout."""
    return min(0.25, limits.header_timeout_s / 4, limits.body_timeout_s / 4)


def _sweep_every(tick: float, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
    """Every ``tick``, time out each connection whose deadline has passed."""
    loop.call_later(tick, _sweep_every, tick, loop, connections)  # first: an error below stops no sweep
    now = loop.time()
    for connection in list(connections):
        deadline = getattr(connection, "_deadline", None)
        if deadline is not None and now >= deadline:
            try:
                connection._too_slow()
            except Exception:  # one connection's trouble must not spare the others
                log.exception("timing out a connection failed")


def bounded_protocol(limits: TransportLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol class with ``limits`` (pass as ``Config(http=...)``)."""

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        _limits = limits

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._url_bytes = 0
            self._header_bytes = 0
            #: When the part being received (``_part``, within ``_seconds``) is late.
            self._deadline: float | None = None
            self._part = ""
            self._seconds = 0.0
            self._refused = False
            #: The request being received was shed: skip its body, then carry on.
            self._skipping = False
            #: ... and close the connection once it is skipped (the server is draining).
            self._close_after_skip = False

        # -- connection ----------------------------------------------------
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= self._limits.max_connections:
                log.warning("connection refused: %d connections open", len(self.connections))
                self._refused = True
                transport.write(
                    refusal(503, f"too many connections (max_connections={self._limits.max_connections})")
                )
                transport.close()
                return
            super().connection_made(transport)
            self._answers = OneWriteAnswers(transport)
            self._arm(self._limits.header_timeout_s, "headers")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self.transport is None:  # refused in connection_made
                return
            self._answers.discard()  # nobody left to read a held head
            for waiting, _ in self.pipeline:  # pipelined requests that will never start
                held = cast(dict[str, Any], waiting.scope).pop(HELD, None)
                if held is not None:
                    held.count -= 1
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                hang_up = cast(dict[str, Any], cycle.scope).get(HANGUP)
                if hang_up is not None:  # its handler waits on work to cancel (.disconnect)
                    hang_up()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            if self._refused:  # the refusal was written already; the parser error is ours
                return
            super().send_400_response(msg)

        # -- parser callbacks -----------------------------------------------
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._url_bytes = self._header_bytes = 0
            if self._deadline is None or self._part == _KEEP_ALIVE:
                self._arm(self._limits.header_timeout_s, "headers")

        def on_url(self, url: bytes) -> None:
            self._url_bytes += len(url)
            if self._url_bytes > self._limits.max_url_bytes:
                self._refuse(414, f"request target exceeds max_url_bytes={self._limits.max_url_bytes}")
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_bytes += len(name) + len(value) + 4
            if self._header_bytes > self._limits.max_header_bytes:
                self._refuse(431, f"request headers exceed max_header_bytes={self._limits.max_header_bytes}")
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._arm(self._limits.body_timeout_s, "body")
            bound = self._limits.inflight
            held = False
            if bound is not None and self.parser.get_method() == b"POST":
                path = self.url.split(b"?", 1)[0].decode("latin-1")
                model = inference_model(path)
                if model is not None:
                    if not bound.full():
                        # Counted now, not when its task first runs: the requests parsed in
                        # one loop iteration would all pass a bound that is counted later.
                        bound.count += 1
                        held = True
                    elif self._may_shed():
                        self._shed(bound, path, model)
                        return
                    # else: full, and a pipelined answer is still owed: the fast route refuses it
            scope = cast(dict[str, Any], self.scope)
            if held:
                scope[HELD] = bound  # released by the application when the request ends
            # This transport tells handlers of a hang-up (.disconnect).
            scope[HANGUP] = None
            # The request's cycle is made here: it gets the one-write transport.
            transport, self.transport = self.transport, cast(asyncio.Transport, self._answers)
            try:
                super().on_headers_complete()
            except BaseException:  # e.g. a URL uvicorn cannot parse: no task will give the count back
                if scope.pop(HELD, None) is not None:
                    bound.count -= 1  # type: ignore[union-attr]
                raise
            finally:
                self.transport = transport

        def on_body(self, body: bytes) -> None:
            if self._skipping:
                return
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._disarm()
            if self._skipping:  # the shed request is over: the connection serves the next one
                self._skipping = False
                if self._close_after_skip:
                    self.transport.close()
                    return
                self.on_response_complete()
                return
            super().on_message_complete()

        def on_response_complete(self) -> None:
            """uvicorn's, with the idle keep-alive timeout as a deadline, not a timer per answer."""
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self.flow.resume_reading()
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            else:
                self._arm(self.timeout_keep_alive, _KEEP_ALIVE)

        # -- refusals -----------------------------------------------------------
        def _may_shed(self) -> bool:
            """No earlier response still owed on this connection (pipelining keeps order)."""
            return self.cycle is None or self.cycle.response_complete

        def _shed(self, bound: InflightBound, path: str, model: str) -> None:
            """503 + Retry-After for an inference request the full process cannot take.

            Before uvicorn builds its scope and task: the cheapest refusal there is
            once a request's headers are read (no log line: the counter counts
            them). The body is then skipped as it arrives; a client that waits
            for ``100 Continue`` before sending it gets the answer and a close.
            While the server drains, the answer says ``Connection: close`` and
            the connection is closed once the body is skipped (as every answer
            then closes: the keep-alive race of docs/reliability.md).
            """
            bound.refused(model)
            closing = bound.draining() or not self.parser.should_keep_alive()
            close = closing or self.expect_100_continue
            self.transport.write(busy_answer(bound.message, path.startswith("/v2"), close))
            if self.expect_100_continue:  # no body is coming: nothing to skip
                self._refused = True
                self._disarm()
                self.transport.close()
                raise _Refused("busy")
            self._skipping = True
            self._close_after_skip = closing

        def _refuse(self, status: int, message: str) -> None:
            log.warning("request refused (%d): %s", status, message)
            self._refused = True
            self._disarm()
            self.transport.write(refusal(status, message))
            self.transport.close()
            raise _Refused(message)

        # -- timeouts: a deadline per connection, one sweep for all ----------------
        # A timer per request part (armed at each request's start, re-armed when
        # its headers are in, cancelled at its end) cost ~3 % of the event loop
        # under load (py-spy); a deadline is one float, and one sweep a tick
        # looks at every open connection.
        _swept_loop: asyncio.AbstractEventLoop | None = None

        def _arm(self, seconds: float, part: str) -> None:
            self._deadline = self.loop.time() + seconds
            self._seconds = seconds
            self._part = part
            cls = type(self)
            if cls._swept_loop is not self.loop:
                cls._swept_loop = self.loop
                _sweep_every(_tick(self._limits), self.loop, self.connections)

        def _disarm(self) -> None:
            self._deadline = None

        def _too_slow(self) -> None:
            seconds, part = self._seconds, self._part
            self._deadline = None
            if self.transport is None or self.transport.is_closing():
                return
            if part == _KEEP_ALIVE:  # idle between requests: closed quietly, as uvicorn does
                self.transport.close()
                return
            log.warning("request %s not received within %.1f s: connection closed", part, seconds)
            self._refused = True
            if self._skipping:  # a shed request: its 503 is written already
                self.transport.close()
                return
            if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
                self.transport.write(refusal(408, f"request {part} not received within {seconds:g} s"))
            self.transport.close()

    return BoundedHttpToolsProtocol
