"""The bound on inference requests one server process holds (``max_inflight_requests``).

Held in two places: the transport (:mod:`.transport`) counts a request to an
inference route the moment its headers are parsed, or sheds it when the
process is full (a canned 503 + ``Retry-After``; the body is skipped as it
arrives and the connection kept: no ASGI task, no middleware, nothing
buffered); the application (:class:`~.app.HttpApp`) releases the count when
the request ends. :class:`~.fastpath.FastRouteMiddleware` counts and refuses
the same way the requests no transport counted (other ASGI servers, a
pipelined request behind an answer still owed). Counted at its task's start
instead, every request parsed in the loop iteration that filled the process
passed the transport and a third of the refusals under a 4x flood took the
expensive way through the middlewares (py-spy, docs/reliability.md).

Why at the transport: when the event loop itself is the bottleneck (a 2-core
host offered 4x what it answers), a refusal through uvicorn's task, FastAPI
and the middlewares cost ~260 µs of loop CPU against ~1.4 ms for an answer,
and at 4x the refusals took the answers' CPU (520 answers and 9,752
refusals in 3 s). A shed at the transport costs ~22 µs. Why the connection is
kept: closing it made clients reconnect for every refused request, and the
admitted ones then waited seconds in the kernel's accept queue
(docs/reliability.md, "Overload, measured").
"""

from __future__ import annotations

from collections.abc import Callable

#: Scope key: the bound that already counts this request (the transport counted it when its
#: headers were parsed); the application releases it when the request ends.
HELD = "fusionserve.inflight_held"


class InflightBound:
    """Inference requests in progress in this process, against ``limit`` (None: no bound)."""

    def __init__(
        self,
        limit: int | None,
        on_refused: Callable[[str], None] | None = None,
        draining: Callable[[], bool] | None = None,
    ) -> None:
        self.limit = limit
        self.count = 0
        #: Told the model of each request refused (for ``fusionserve_requests_total``).
        self.on_refused = on_refused
        #: True once the server shuts down: a shed then closes its connection too.
        self.draining = draining or (lambda: False)
        self.message = (
            f"the server is busy: {limit} inference requests in progress in this process "
            f"(max_inflight_requests={limit}); retry shortly"
        )

    def full(self) -> bool:
        return self.limit is not None and self.count >= self.limit

    def refused(self, model: str) -> None:
        if self.on_refused is not None:
            self.on_refused(model)
