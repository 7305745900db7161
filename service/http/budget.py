"""A server-wide memory budget for request bodies in flight (pure ASGI).

Every request with a body is charged for the bytes it will hold while it is
received, parsed, decoded and queued (``CHARGE`` times its body: the
received chunks, the joined body and the parsed parts live at once), and
released when its answer is sent. A request whose declared
``Content-Length`` does not fit is answered 503 + ``Retry-After`` before a
byte of its body is read; a chunked body is charged as it arrives and cut
with the same answer when it stops fitting. So a flood of large uploads
meets 503s, never the OOM killer.

The default budget is the smaller of 512 MiB and a quarter of the memory the
process may use (the cgroup limit when there is one, else physical memory).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

#: Bytes a request holds per body byte while it is parsed (chunks + joined body + parts).
CHARGE = 3
DEFAULT_CAP = 512 * 1024 * 1024


def memory_allowed() -> int | None:
    """The memory this process may use: the cgroup limit (v2 or v1), else physical memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 writes a huge number for "no limit"
            return int(text)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_budget() -> int:
    allowed = memory_allowed()
    return DEFAULT_CAP if allowed is None else min(DEFAULT_CAP, allowed // 4)


class MemoryBudget:
    """Bytes charged to requests in flight against one limit (event-loop only, no lock)."""

    def __init__(self, limit: int, metrics: Metrics | None = None) -> None:
        self.limit = limit
        self.held = 0
        self._metrics = metrics
        if metrics is not None:
            metrics.inflight_bytes_limit.set(limit)

    def try_charge(self, n: int) -> bool:
        # One request alone may always use the whole budget, or a body the
        # size limit allows could never be served.
        if self.held and self.held + n > self.limit:
            return False
        self.held += n
        self._export()
        return True

    def release(self, n: int) -> None:
        self.held = max(0, self.held - n)
        self._export()

    def _export(self) -> None:
        if self._metrics is not None:
            self._metrics.inflight_bytes.set(self.held)


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
        charged = 0
        if declared.isdigit():
            charged = int(declared) * CHARGE
            if not self.budget.try_charge(charged):
                await self._refuse(send, scope["path"])
                return
        started = False

        async def counting_receive() -> Message:
            nonlocal charged
            message = await receive()
            if not declared.isdigit() and message["type"] == "http.request":
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
        message = (
            f"the server is holding as many request bytes as its memory budget allows "
            f"(max_inflight_bytes={self.budget.limit}); retry shortly"
        )
        body: dict[str, object]
        if path.startswith("/v2"):
            body = {"error": message}
        else:
            body = {"error": {"code": "overloaded", "message": message}}
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"retry-after", b"1"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
