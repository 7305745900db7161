"""Register a servicer object for a service described in our private descriptor pool.

The handler for each method of the service descriptor is the servicer's
method of the same name, with the pool's message classes doing the
(de)serialisation; a method the servicer lacks answers UNIMPLEMENTED.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import message_factory

from service.grpc import protos

_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def generic_handler(service_name: str, servicer: object) -> grpc.GenericRpcHandler:
    descriptor = protos.service(service_name)
    handlers: dict[str, Any] = {}
    for method in descriptor.methods:
        implementation = getattr(servicer, method.name, None)
        if implementation is None:
            continue
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        factory = _FACTORIES[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(
            implementation,
            request_deserializer=request_class.FromString,
            response_serializer=response_class.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service_name, handlers)
