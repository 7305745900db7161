"""Register a servicer object for a service described in our private descriptor pool.

The handler for each method of the service descriptor is the servicer's
method of the same name, with the pool's message classes doing the
(de)serialisation; a method the servicer lacks answers UNIMPLEMENTED.

A request message that does not parse reaches the servicer as
:class:`Undecodable` rather than raising inside grpc, which would answer
UNKNOWN and log a traceback per call: ``guarded`` and ``answer_message``
(``fusionserve.service.grpc.errors``) answer it INVALID_ARGUMENT (a stream: an error
message, and the stream goes on).

A method named in ``charged`` gets each parsed message with its wire size
(``fusionserve.service.grpc.budget``), so the memory budget can charge it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message, message_factory

from fusionserve.service.errors import InvalidInput, LimitExceeded
from fusionserve.service.grpc import protos
from fusionserve.service.grpc.budget import Received, unwrap, unwrap_stream
from fusionserve.service.grpc.wire import Rule, check_counts


@dataclass(frozen=True)
class Undecodable:
    """A request message that did not parse as its type.

    It carries the empty id fields the stream handlers read from a message,
    so a failed message is answered like any other failed one.
    """

    type_name: str
    request_id: str = ""
    id: str = ""
    model_name: str = ""

    def error(self) -> InvalidInput:
        return InvalidInput(f"request is not a valid {self.type_name} message (the bytes do not parse)")


@dataclass(frozen=True)
class Refused(Undecodable):
    """A request message whose wire bytes hold more of a field than allowed: never parsed."""

    reason: str = ""

    def error(self) -> InvalidInput:
        return LimitExceeded(self.reason)


def reject_undecodable(request: object) -> None:
    """Raise the client's error for a message that did not parse; no-op otherwise."""
    if isinstance(request, Undecodable):
        raise request.error()


def _deserializer(
    message_class: Any, schema: dict[int, Rule] | None, sized: bool = False
) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        if schema is not None:
            try:
                check_counts(data, schema)
            except LimitExceeded as exc:
                return Refused(message_class.DESCRIPTOR.full_name, reason=exc.message)
        try:
            parsed = message_class.FromString(data)
        except message.DecodeError:
            return Undecodable(message_class.DESCRIPTOR.full_name)
        return Received(parsed, len(data)) if sized else parsed

    return parse


def _unwrapping(implementation: Callable[..., Any], bidi: bool) -> Callable[..., Any]:
    """The servicer method, called with plain messages whose sizes are noted for the budget.

    Coroutine / async-generator functions, as the method itself: grpc.aio runs
    any other handler in a thread pool.
    """
    if bidi:

        async def streaming(requests: AsyncIterator[object], context: grpc.aio.ServicerContext) -> Any:
            async for answer in implementation(unwrap_stream(requests), context):
                yield answer

        return streaming

    async def unary(request: object, context: grpc.aio.ServicerContext) -> Any:
        return await implementation(unwrap(request), context)

    return unary


_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def generic_handler(
    service_name: str,
    servicer: object,
    schemas: dict[str, dict[int, Rule]] | None = None,
    charged: frozenset[str] = frozenset(),
) -> grpc.GenericRpcHandler:
    """Handlers of the servicer's methods; ``schemas`` bounds a method's request counts
    (``fusionserve.service.grpc.wire``) before its message is parsed; the messages of the methods
    in ``charged`` are charged to the memory budget (``fusionserve.service.grpc.budget``)."""
    descriptor = protos.service(service_name)
    handlers: dict[str, Any] = {}
    for method in descriptor.methods:
        implementation = getattr(servicer, method.name, None)
        if implementation is None:
            continue
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        factory = _FACTORIES[(method.client_streaming, method.server_streaming)]
        sized = method.name in charged
        if sized:
            if method.client_streaming != method.server_streaming:
                raise ValueError(f"{method.name}: only unary and bidirectional methods can be charged")
            implementation = _unwrapping(implementation, method.client_streaming)
        handlers[method.name] = factory(
            implementation,
            request_deserializer=_deserializer(request_class, (schemas or {}).get(method.name), sized),
            response_serializer=response_class.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service_name, handlers)
