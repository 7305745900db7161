"""service/jsonbody.py and service/grpc/wire.py: counts refused at the limit, the rest parsed as before."""

from __future__ import annotations

import json

import pytest

from fusionserve.service import jsonbody
from fusionserve.service.errors import InvalidInput, LimitExceeded
from fusionserve.service.grpc import wire
from fusionserve.service.grpc.protos import NATIVE, V2


@pytest.mark.parametrize(
    "text",
    [
        '{"a": [1, 2, {"b": "x"}], "c": null}',
        "  {}  ",
        '{"items": []}',
        "[1, 2]",
        '"s"',
        '{"k": "\\u00e9,]"}',
    ],
)
def test_load_object_agrees_with_json(text: str) -> None:
    assert jsonbody.load_object(text, list_limits={"items": 3}) == json.loads(text)


def test_load_object_stops_at_the_limit() -> None:
    with pytest.raises(LimitExceeded, match="'items' holds more than 3"):
        jsonbody.load_object('{"items": [{}, {}, {}, {}' + ", {}" * 10**6 + "]}", list_limits={"items": 3})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1', "ends early"),
        ('{"a": 1}x', "Extra data"),
        ('{"a" 1}', "delimiter"),
        ('{"text": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
        ('{"top_k": Infinity}', "top_k"),
        ('{"n": ' + "9" * 5000 + "}", "not valid JSON"),
    ],
)
def test_load_object_errors_are_invalid_input(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        jsonbody.load_object(text, list_limits={})


def test_unknown_keys_refused_before_their_value() -> None:
    with pytest.raises(InvalidInput, match="unknown field 'x'"):
        jsonbody.load_object('{"x": ' + "[" * 10**5, list_limits={}, allowed=("text",))


def test_check_structure_counts() -> None:
    jsonbody.check_structure(b'{"a": [1, 2, 3]}')
    with pytest.raises(LimitExceeded, match="objects"):
        jsonbody.check_structure(b"[" + b"{}," * 70_000 + b"{}]")


def test_wire_counts_native_items() -> None:
    ok = NATIVE.PredictRequest(model="m", items=[NATIVE.Item(text="a")] * 4).SerializeToString()
    wire.check_counts(ok, wire.native_schema(4))
    with pytest.raises(LimitExceeded, match="items"):
        wire.check_counts(ok + b"\x1a\x00", wire.native_schema(4))
    wire.check_counts(b"\xff\xff", wire.native_schema(4))  # not protobuf: the parser says so


def test_wire_counts_v2_bytes_contents_across_repeated_contents() -> None:
    schema = wire.v2_infer_schema(max_tensors=2, max_rank=4, max_bytes_elements=3, max_elements=100)
    message = V2.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="text", datatype="BYTES", shape=[3])
    tensor.contents.bytes_contents.extend([b"a", b"b", b"c"])
    wire.check_counts(message.SerializeToString(), schema)
    tensor.contents.bytes_contents.extend([b"d"] * 4)
    with pytest.raises(LimitExceeded, match="bytes_contents"):
        wire.check_counts(message.SerializeToString(), schema)
