"""The gRPC message classes, built from ``generated/descriptors.binpb`` in a private pool.

Why a private pool: protobuf keeps one global registry of message names per
process. tritonclient and the KServe SDK each register their own copy of the
``inference.*`` messages there, and a third copy (ours) would make whichever
is imported second fail with "duplicate symbol". Building our classes in a
pool of our own keeps the server importable next to any client library. The
wire format is unchanged: only names and field numbers travel.

``V2.ModelInferRequest`` and ``NATIVE.PredictRequest`` are ordinary message
classes (``FromString``, ``SerializeToString``, nested types as attributes).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

DESCRIPTORS = Path(__file__).resolve().parent / "generated" / "descriptors.binpb"
V2_SERVICE = "inference.GRPCInferenceService"
NATIVE_SERVICE = "fusionserve.v1.FusionServe"


@cache
def pool() -> descriptor_pool.DescriptorPool:
    """Our protos plus health and reflection (so reflection can describe every service we serve)."""
    private = descriptor_pool.DescriptorPool()
    for module in (health_pb2, reflection_pb2):
        private.Add(descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))
    file_set = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    for file_proto in file_set.file:
        private.Add(file_proto)
    return private


def service(full_name: str) -> ServiceDescriptor:
    return pool().FindServiceByName(full_name)


class ProtoPackage:
    """Message classes of one proto package, looked up by attribute: ``V2.ModelInferRequest``."""

    def __init__(self, package: str) -> None:
        self._package = package

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            descriptor = pool().FindMessageTypeByName(f"{self._package}.{name}")
        except KeyError as exc:
            raise AttributeError(f"no message {self._package}.{name}") from exc
        message_class = message_factory.GetMessageClass(descriptor)
        setattr(self, name, message_class)  # found once; later lookups are plain attributes
        return message_class


V2 = ProtoPackage("inference")
NATIVE = ProtoPackage("fusionserve.v1")
