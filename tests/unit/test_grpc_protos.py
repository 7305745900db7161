"""The protos are the wire contract: field numbers match the standard clients, stubs are fresh."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor
from tritonclient.grpc import service_pb2 as triton

from fusionserve.service.grpc import protogen, protos


def _messages(descriptor: Descriptor) -> list[Descriptor]:
    found = [descriptor]
    for nested in descriptor.nested_types:
        found.extend(_messages(nested))
    return found


def _ours() -> list[Descriptor]:
    file = protos.pool().FindFileByName("inference.proto")
    return [m for top in file.message_types_by_name.values() for m in _messages(top)]


def test_every_v2_field_matches_tritonclient() -> None:
    theirs_pool = triton.DESCRIPTOR.pool
    checked = 0
    for ours in _ours():
        theirs = theirs_pool.FindMessageTypeByName(ours.full_name)
        for field in ours.fields:
            other = theirs.fields_by_name.get(field.name)
            assert other is not None, f"{ours.full_name}.{field.name} is not in Triton's proto"
            assert (field.number, field.type, field.is_repeated) == (
                other.number,
                other.type,
                other.is_repeated,
            ), f"{ours.full_name}.{field.name} differs on the wire"
            if field.message_type is not None:
                assert field.message_type.full_name == other.message_type.full_name
            checked += 1
    assert checked > 100  # every message of the service, not a handful


def test_every_v2_method_matches_tritonclient() -> None:
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    ours = protos.service(protos.V2_SERVICE)
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            other.input_type.full_name,
            other.output_type.full_name,
        )
        assert (method.client_streaming, method.server_streaming) == (
            other.client_streaming,
            other.server_streaming,
        )
    expected = {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "ModelStreamInfer", "ModelConfig", "ModelStatistics",
        "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
    }  # fmt: skip
    assert {m.name for m in ours.methods} == expected


def test_server_import_leaves_the_global_pool_to_client_libraries() -> None:
    """Our classes live in a private pool, so tritonclient (imported above) and the server coexist."""
    request = protos.V2.ModelInferRequest(model_name="m")
    assert request.DESCRIPTOR.file.pool is protos.pool()
    assert triton.ModelInferRequest.FromString(request.SerializeToString()).model_name == "m"


def test_generated_files_are_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    fresh = protogen.generate(tmp_path)
    committed_root = Path(protogen.__file__).resolve().parents[2]
    assert fresh, "protogen produced nothing"
    for path in fresh:
        relative = path.relative_to(tmp_path)
        committed = committed_root / relative
        assert committed.exists(), f"{relative} is missing: run python -m fusionserve.service.grpc.protogen"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{relative} is stale: run python -m fusionserve.service.grpc.protogen"
        )
