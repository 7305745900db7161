"""V2 gRPC's shortcut to rows: taken for the common request, equal to the general path, else None."""

from __future__ import annotations

from typing import Any

import pytest

from fusionserve.service.grpc.protos import V2
from fusionserve.service.grpc.v2_tensors import fast_request, request_from_proto
from fusionserve.service.v2.codec import serialize_bytes
from fusionserve.service.v2.mapping import rows_from_inputs
from tests.unit.v2_fakes import CLASSIFIER

ACCEPTED = ["image", "audio", "text"]


def message(**columns: list[bytes]) -> Any:
    """A ModelInferRequest with one BYTES input per column, in raw_input_contents."""
    request = V2.ModelInferRequest(model_name="m", id="r1")
    for name, values in columns.items():
        request.inputs.add(name=name, datatype="BYTES", shape=[len(values)])
        request.raw_input_contents.append(serialize_bytes(values))
    request.parameters["top_k"].int64_param = 3
    return request


def test_common_request_gives_the_general_paths_rows() -> None:
    request = message(image=[b"\xff\xd8jpeg", b""], text=[b"a seven", "ünï".encode()])
    taken = fast_request(request, ACCEPTED)
    assert taken is not None
    rows, parsed = taken
    assert rows == rows_from_inputs("m", CLASSIFIER, request_from_proto(request).inputs)
    assert rows[1].image is None and rows[1].text == "ünï" and rows[0].audio is None
    assert (parsed.id, parsed.parameters, parsed.outputs) == ("r1", {"top_k": 3}, [])


def _with(change: str) -> Any:
    request = message(image=[b"\xff\xd8jpeg"], text=[b"seven"])
    if change == "unknown input":
        request.inputs[1].name = "video"
    elif change == "twice":
        request.inputs[1].name = "image"
    elif change == "datatype":
        request.inputs[1].datatype = "UINT8"
    elif change == "shape":
        request.inputs[1].shape[:] = [1, 2]
    elif change == "batch sizes differ":
        request.inputs[1].shape[:] = [2]
    elif change == "truncated":
        request.raw_input_contents[1] = b"\x09\x00\x00\x00abc"
    elif change == "not utf-8":
        request.raw_input_contents[1] = serialize_bytes([b"\xff\xfe"])
    elif change == "parameters":
        request.inputs[1].parameters["content_type"].string_param = "base64"
    elif change == "outputs asked":
        request.outputs.add(name="labels")
    elif change == "typed contents":
        del request.raw_input_contents[:]
    return request


@pytest.mark.parametrize(
    "change",
    [
        "unknown input",
        "twice",
        "datatype",
        "shape",
        "batch sizes differ",
        "truncated",
        "not utf-8",
        "parameters",
        "outputs asked",
        "typed contents",
    ],
)
def test_anything_else_takes_the_general_path(change: str) -> None:
    assert fast_request(_with(change), ACCEPTED) is None
