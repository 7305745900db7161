"""The one table from core errors to gRPC status codes, and the guard that applies it."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from service.errors import (
    DeadlineExceeded,
    FusionServeError,
    InternalError,
    InvalidInput,
    ModelNotFound,
    NotReady,
    Overloaded,
)

log = logging.getLogger("fusionserve.grpc")

#: Most specific first. Everything else (internal, config) is INTERNAL.
CODE_TABLE: tuple[tuple[type[FusionServeError], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
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


def guarded(method: Handler) -> Handler:
    """Wrap a unary servicer method: a raised error becomes the matching status and message."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AbortError:  # context.abort() inside the method: already answered
            raise
        except Exception as exc:
            error = as_core_error(exc)
        await context.abort(grpc_code(error), error.message)

    return wrapper  # type: ignore[return-value]


def remaining_seconds(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline as a timeout for the core (None when the client set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, remaining)
