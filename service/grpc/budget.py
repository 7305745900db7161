"""gRPC inference messages charged to the process's memory budget while answered.

grpc reads a message whole before any handler runs, so the budget cannot
refuse it before its bytes arrive (those are bounded by
``grpc_max_message_bytes`` and the call limits). What it bounds is what
follows: the parsed message, the decoded inputs and the rows queued for the
model, held until the answer is sent. Each message of ``Predict``, ``Embed``,
``ModelInfer`` and of the two streams is charged ``CHARGE`` times its wire
size (the size protobuf would recompute by serialising the message again:
0.5 s for 64 MiB, so it is taken from the raw bytes instead) against the
same budget as HTTP bodies. One that does not fit is answered
RESOURCE_EXHAUSTED with ``grpc-retry-pushback-ms`` (a unary call; a stream
message gets an error message and the stream goes on), and the charge is
released on every way out of the call: answer, error or cancellation.

How the size travels: the request deserializer (``fusionserve.service.grpc.handlers``)
wraps a parsed message as :class:`Received`; the method wrapper unwraps it
and sets :data:`_received` for the task that answers it (a unary call's
task; for a stream, the reader task, whose value each message's task
copies when it is created); ``guarded`` and ``answer_message``
(``fusionserve.service.grpc.errors``) hold :func:`charged` around the servicer's work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from fusionserve.service.errors import Overloaded
from fusionserve.service.memory import CHARGE, MemoryBudget

#: Trailing metadata of a refusal: gRPC's retry pushback (A6), as HTTP's ``Retry-After: 1``.
RETRY_PUSHBACK = ("grpc-retry-pushback-ms", "1000")

#: Wire bytes of the message the current task answers; 0 for uncharged methods.
_received: ContextVar[int] = ContextVar("fusionserve_grpc_received_bytes", default=0)


@dataclass(frozen=True)
class Received:
    """A parsed request message with the size of its wire bytes."""

    message: Any
    nbytes: int


class OverBudget(Overloaded):
    """The message does not fit in the memory budget now (RESOURCE_EXHAUSTED, retry shortly)."""


def unwrap(request: object) -> object:
    """The message a servicer sees; its size is noted for :func:`charged` in this task."""
    if isinstance(request, Received):
        _received.set(request.nbytes)
        return request.message
    _received.set(0)
    return request


async def unwrap_stream(requests: AsyncIterator[object]) -> AsyncIterator[object]:
    """:func:`unwrap` for each message of a stream, in the task that reads it."""
    async for request in requests:
        yield unwrap(request)


@contextmanager
def charged(budget: MemoryBudget | None) -> Iterator[None]:
    """Hold the current message's charge for the block; :class:`OverBudget` when it does not fit."""
    n = CHARGE * _received.get()
    if budget is None or n == 0:
        yield
        return
    if not budget.try_charge(n):
        raise OverBudget(
            f"the server is holding as many request bytes as its memory budget allows "
            f"(max_inflight_bytes={budget.limit}); retry shortly"
        )
    try:
        yield
    finally:
        budget.release(n)
