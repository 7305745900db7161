"""The one table from core errors to gRPC status codes, and the guard that applies it."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from fusionserve.service.errors import (
    DeadlineExceeded,
    FusionServeError,
    InternalError,
    InvalidInput,
    LimitExceeded,
    LoadFailed,
    ModelNotFound,
    NotReady,
    Overloaded,
    PermissionDenied,
)
from fusionserve.service.grpc.budget import RETRY_PUSHBACK, charged
from fusionserve.service.grpc.handlers import reject_undecodable
from fusionserve.service.logs import ACCESS, SAFE_REQUEST_ID, new_request_id, request_id_var

if TYPE_CHECKING:
    from fusionserve.service.memory import MemoryBudget

log = logging.getLogger("fusionserve.grpc")

#: Most specific first. Everything else (internal, config) is INTERNAL. A bound
#: exceeded (HTTP 413) is RESOURCE_EXHAUSTED, as gRPC answers a message too large.
CODE_TABLE: tuple[tuple[type[FusionServeError], grpc.StatusCode], ...] = (
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (LoadFailed, grpc.StatusCode.INVALID_ARGUMENT),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def grpc_code(error: FusionServeError) -> grpc.StatusCode:
    for kind, code in CODE_TABLE:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def as_core_error(exc: Exception) -> FusionServeError:
    """A core error as is; anything else is a fault of ours, logged with its traceback."""
    if isinstance(exc, FusionServeError):
        return exc
    log.error("unhandled error in a gRPC call", exc_info=exc)
    return InternalError(f"internal error: {type(exc).__name__}")


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])
Answer = TypeVar("Answer")


def guarded(method: Handler) -> Handler:
    """Wrap a unary servicer method: request id, one access-log line, errors as statuses.

    The request id is the client's ``x-request-id`` metadata when it looks
    like one, else a new one; it is returned as trailing metadata and carried
    by every log line of the call, as over HTTP. The message is charged to the
    servicer's memory budget (``budget`` attribute; ``fusionserve.service.grpc.budget``)
    while the method runs. A refusal to retry (overloaded, over the budget, not
    ready: HTTP's 429/503 + ``Retry-After``) carries ``grpc-retry-pushback-ms``.
    """

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        incoming = next((v for k, v in context.invocation_metadata() or () if k == "x-request-id"), "")
        request_id = message_request_id(str(incoming))
        token = request_id_var.set(request_id)
        context.set_trailing_metadata((("x-request-id", request_id),))
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        logged = False
        try:
            try:
                _reject_counted(self, request)
                with charged(getattr(self, "budget", None)):
                    return await method(self, request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:  # context.abort() inside the method: already answered
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:
                error = as_core_error(exc)
            code = grpc_code(error)
            # Logged before the status leaves, as a success is before its
            # answer: whoever holds the answer finds the call in the log.
            log_call(method.__name__, code, started)
            logged = True
            if isinstance(error, Overloaded | NotReady):
                context.set_trailing_metadata((("x-request-id", request_id), RETRY_PUSHBACK))
            await context.abort(code, error.message)
        finally:
            if not logged:
                log_call(method.__name__, code, started)
            request_id_var.reset(token)

    return wrapper  # type: ignore[return-value]


def _reject_counted(servicer: Any, request: object) -> None:
    """Refuse a message that did not parse (or was over a count bound), counted in the metrics."""
    try:
        reject_undecodable(request)
    except FusionServeError as exc:
        dataplane = getattr(servicer, "dataplane", None)
        if dataplane is not None:
            dataplane.record_rejected("", getattr(servicer, "protocol", "grpc"), exc)
        raise


def log_call(rpc: str, code: grpc.StatusCode, started: float) -> None:
    """The access-log line of one unary call or one stream message."""
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    log.info("rpc", extra={"rpc": rpc, "code": code.name, "duration_ms": duration_ms, ACCESS: True})


def message_request_id(given: str) -> str:
    """A stream message's request id: the client's when it looks like one, else a new one."""
    return given if SAFE_REQUEST_ID.match(given) else new_request_id()


async def answer_message(
    rpc: str,
    request: object,
    request_id: str,
    handle: Callable[[], Awaitable[Answer]],
    on_error: Callable[[FusionServeError], Answer],
    budget: MemoryBudget | None = None,
) -> Answer:
    """Answer one message (``request``) of a stream, as ``guarded`` answers a unary call.

    Runs in the message's own task, so the request id set here tags only this
    message's log lines; a failure (a message that did not parse included)
    becomes ``on_error``'s answer message (the stream goes on) and the
    access-log line carries its status code. The message is charged to
    ``budget`` while it is handled (``fusionserve.service.grpc.budget``).
    """
    request_id_var.set(request_id)
    started = time.perf_counter()
    code = grpc.StatusCode.OK
    try:
        reject_undecodable(request)
        with charged(budget):
            return await handle()
    except asyncio.CancelledError:
        code = grpc.StatusCode.CANCELLED
        raise
    except Exception as exc:
        error = as_core_error(exc)
        code = grpc_code(error)
        return on_error(error)
    finally:
        log_call(rpc, code, started)


def remaining_seconds(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline as a timeout for the core (None when the client set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, remaining)
