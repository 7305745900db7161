"""Pure ASGI middleware: request ids, body size limit, bearer-token auth, access log,
and ``Connection: close`` while the server shuts down.

Pure ASGI (not BaseHTTPMiddleware) so the body limit is enforced while the
body streams in, before any of it is buffered.

Draining: from SIGTERM on, every answer carries ``Connection: close``, so the
client opens a fresh connection for its next request instead of sending it on
a kept-alive one that the server may be closing at that very moment (the
HTTP/1.1 keep-alive race: such a request is lost without an answer).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fusionserve.service.errors import LimitExceeded
from fusionserve.service.http.errors import door_error_json, send_json
from fusionserve.service.http.routes import inference_path
from fusionserve.service.logs import ACCESS, SAFE_REQUEST_ID, new_request_id, request_id_var

log = logging.getLogger("fusionserve.http")

REQUEST_ID_HEADER = b"x-request-id"
_ADMIN = re.compile(r"^/v2/repository/")


CONNECTION_CLOSE = (b"connection", b"close")


class Activity:
    """HTTP requests in progress, from their first byte to their last answer byte.

    The data plane counts only requests that reached it; a drain must also
    wait for those still being received or parsed, or they are cut. Only for
    those that began before the drain, though (``early``): a request that
    begins during it gets a quick 503, and clients that retry at once keep
    some always in progress. Waiting for none at all in progress held a
    drain under 128 retrying clients for its whole budget and then called it
    unclean (exit 1; ``tests/reliability/test_drain.py``, 10 of 10).
    """

    def __init__(self) -> None:
        self.active = 0
        #: Requests in progress that began before :meth:`mark_drain`.
        self.early = 0
        self.draining = False

    def mark_drain(self) -> None:
        """From now on, requests that begin are not waited for by :meth:`wait_idle`."""
        self.draining = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Until no request that began before the drain is in progress; False at the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        polls = int(timeout_s / 0.02) + 1
        for _ in range(polls):
            if (self.early if self.draining else self.active) == 0:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return (self.early if self.draining else self.active) == 0


class _Answer:
    """The one ``send`` wrapper of a request: its status (for the access log), the request id
    on the answer, and ``Connection: close`` while draining."""

    __slots__ = ("_draining", "_id_header", "_send", "started", "status")

    def __init__(self, send: Send, id_header: tuple[bytes, bytes], draining: Callable[[], bool]) -> None:
        self._send = send
        self._id_header = id_header
        self._draining = draining
        self.status = 500  # what the log says when no answer started
        self.started = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            headers = [*message.get("headers", ()), self._id_header]
            if self._draining():
                # The client must not reuse the connection (see the module's docstring).
                headers = [h for h in headers if h[0].lower() != b"connection"]
                headers.append(CONNECTION_CLOSE)
            message["headers"] = headers
        await self._send(message)


class GatewayMiddleware:
    """Request id in and out, a hard body limit, optional auth, one access-log line per request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        api_token: str | None,
        admin_token: str | None,
        draining: Callable[[], bool] | None = None,
        activity: Activity | None = None,
    ) -> None:
        self.app = app
        self.activity = activity or Activity()
        self.max_body_bytes = max_body_bytes
        self.api_token = api_token
        self.admin_token = admin_token
        self._draining = draining or (lambda: False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        incoming = headers.get(REQUEST_ID_HEADER, b"").decode("latin-1")
        request_id = incoming if SAFE_REQUEST_ID.match(incoming) else new_request_id()
        token = request_id_var.set(request_id)
        id_header = (REQUEST_ID_HEADER, request_id.encode())
        started = time.perf_counter()
        answer = _Answer(send, id_header, self._draining)
        activity = self.activity
        activity.active += 1
        early = not activity.draining
        if early:
            activity.early += 1
        try:
            denied = self._auth_failure(scope["path"], headers)
            if denied is not None:
                payload = door_error_json(
                    scope["path"].startswith("/v2"), "unauthenticated", denied[1], request_id
                )
                await send_json(answer.send, denied[0], payload, [(b"www-authenticate", b"Bearer")])
                return
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit():
                if int(declared) > self.max_body_bytes:
                    await send_json(answer.send, 413, self._too_large(request_id, scope["path"]), [])
                    return
                # The HTTP parser delivers exactly the declared length: nothing to count.
                await self._forward(scope, receive, answer, request_id)
            else:
                await self._forward(scope, self._limited(receive), answer, request_id)
        finally:
            activity.active -= 1
            if early:
                activity.early -= 1
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "request",
                    extra={
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": answer.status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                        ACCESS: True,
                    },
                )
            request_id_var.reset(token)

    async def _forward(self, scope: Scope, receive: Receive, answer: _Answer, request_id: str) -> None:
        try:
            await self.app(scope, receive, answer.send)
        except LimitExceeded:
            if answer.started:
                raise
            await send_json(answer.send, 413, self._too_large(request_id, scope["path"]), [])

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that stops a body without a Content-Length at ``max_body_bytes``."""
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise LimitExceeded(f"request body exceeds max_body_bytes={self.max_body_bytes}")
            return message

        return limited_receive

    def _too_large(self, request_id: str, path: str) -> bytes:
        message = f"request body exceeds max_body_bytes={self.max_body_bytes}"
        return door_error_json(path.startswith("/v2"), "limit_exceeded", message, request_id)

    def _auth_failure(self, path: str, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        if self.admin_token and _ADMIN.match(path):
            expected = self.admin_token
        elif self.api_token and inference_path(path) is not None:
            expected = self.api_token
        else:
            return None
        given = headers.get(b"authorization", b"").decode("latin-1")
        if not given.startswith("Bearer "):
            return 401, "missing bearer token"
        if not hmac.compare_digest(given[7:].encode(), expected.encode()):
            return 401, "invalid bearer token"
        return None
