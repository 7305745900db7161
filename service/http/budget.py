"""A server-wide memory budget for request bodies in flight (pure ASGI).

Every request with a body is charged for the bytes it will hold while it is
received, parsed, decoded and queued (``CHARGE`` times its body: the
received chunks, the joined body and the parsed parts live at once), and
released when its answer is sent. A request whose declared
``Content-Length`` does not fit is answered 503 + ``Retry-After`` before a
byte of its body is read; a chunked body is charged as it arrives and cut
with the same answer when it stops fitting. So a flood of large uploads
meets 503s, never the OOM killer. The budget itself (``fusionserve.service.memory``) is
shared with the gRPC doors.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fusionserve.service.http.errors import send_busy
from fusionserve.service.memory import CHARGE, MemoryBudget


class _OverBudget(Exception):
    pass


class MemoryBudgetMiddleware:
    """Charge every request body to the budget; refuse what does not fit before reading it."""

    def __init__(self, app: ASGIApp, *, budget: MemoryBudget) -> None:
        self.app = app
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit():
            # Charged whole before a byte is read; the parser delivers no more than that.
            charged = int(declared) * CHARGE
            if not self.budget.try_charge(charged):
                await self._refuse(send, scope["path"])
                return
            try:
                await self.app(scope, receive, send)
            finally:
                self.budget.release(charged)
            return
        await self._charge_as_received(scope, receive, send)

    async def _charge_as_received(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A body without a Content-Length (chunked): charged chunk by chunk, cut when over."""
        charged = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal charged
            message = await receive()
            if message["type"] == "http.request":
                more = len(message.get("body", b"")) * CHARGE
                if not self.budget.try_charge(more):
                    raise _OverBudget
                charged += more
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _OverBudget:
            if started:
                raise
            await self._refuse(send, scope["path"])
        finally:
            self.budget.release(charged)

    async def _refuse(self, send: Send, path: str) -> None:
        await send_busy(
            send,
            path,
            f"the server is holding as many request bytes as its memory budget allows "
            f"(max_inflight_bytes={self.budget.limit}); retry shortly",
        )
