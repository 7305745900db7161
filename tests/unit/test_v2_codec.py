"""The V2 tensor codec: JSON data, raw bytes, the binary tensor extension.

tritonclient's own (de)serialisers serve as the independent reference for the
BYTES wire format, so these tests fail if ours drifts from what clients send.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from fusionserve.service.errors import InvalidInput
from fusionserve.service.v2.codec import (
    Tensor,
    deserialize_bytes,
    encode_infer_response,
    from_json_data,
    from_raw,
    parse_header_length,
    parse_infer_request,
    serialize_bytes,
    to_json_data,
    to_raw,
)

ELEMENTS = [b"", b"seven", bytes(range(256)), "naïve".encode()]


def test_bytes_serialisation_matches_tritonclient() -> None:
    ours = serialize_bytes(ELEMENTS)
    theirs = serialize_byte_tensor(np.array(ELEMENTS, dtype=object)).item()
    assert ours == theirs
    assert deserialize_bytes("t", theirs) == ELEMENTS
    assert list(deserialize_bytes_tensor(ours)) == ELEMENTS


def test_bytes_length_prefix_is_little_endian() -> None:
    assert serialize_bytes([b"ab"]) == b"\x02\x00\x00\x00ab"


@pytest.mark.parametrize(
    ("buffer", "message"),
    [
        (b"\x05\x00\x00\x00abc", "declares 5 bytes but only 3 remain"),
        (b"\x01\x00", "truncated BYTES element length"),
    ],
)
def test_truncated_bytes_are_refused(buffer: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        deserialize_bytes("image", buffer)


@pytest.mark.parametrize(
    ("datatype", "array"),
    [
        ("UINT8", np.arange(24, dtype=np.uint8).reshape(2, 4, 3)),
        ("FP32", np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)),
        ("INT64", np.array([[-(2**40), 7]], dtype=np.int64)),
        ("BOOL", np.array([True, False, True])),
        ("FP16", np.array([0.5, -2.0], dtype=np.float16)),
    ],
)
def test_raw_round_trip(datatype: str, array: np.ndarray) -> None:
    raw = to_raw(Tensor("x", datatype, array.shape, array))
    assert raw == array.astype(array.dtype.newbyteorder("<")).tobytes()
    back = from_raw("x", datatype, array.shape, raw)
    np.testing.assert_array_equal(back, array)


def test_raw_size_mismatch_names_tensor_and_sizes() -> None:
    with pytest.raises(InvalidInput, match=r"'audio': FP32 shape \[1, 4\] needs 16 bytes, got 12"):
        from_raw("audio", "FP32", (1, 4), b"\x00" * 12)


def test_raw_bytes_count_must_match_shape() -> None:
    with pytest.raises(InvalidInput, match="needs 3 BYTES elements, got 2"):
        from_raw("text", "BYTES", (3,), serialize_bytes([b"a", b"b"]))


def test_json_data_flat_and_nested_are_the_same() -> None:
    flat = from_json_data("x", "INT32", (2, 2), [1, 2, 3, 4])
    nested = from_json_data("x", "INT32", (2, 2), [[1, 2], [3, 4]])
    np.testing.assert_array_equal(flat, nested)
    assert flat.dtype == np.int32 and flat.shape == (2, 2)
    # Lists and values mixed on one level: still row-major, element by element.
    mixed = from_json_data("x", "INT32", (2, 3), [[1, [2, 3]], [4], 5, 6])
    assert mixed.tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("UINT8", [1, 300], "outside UINT8 range"),
        ("INT32", [1.5, 2], "must be integers"),
        ("FP32", ["a", 1.0], "must be numbers"),
        ("BOOL", [1, 0], "must be true/false"),
        ("BYTES", [1, 2], "must be strings"),
        ("FP32", [1.0], r"shape \[2\] needs 2 elements, data has 1"),
        ("FP32", [1.0, 1e308], "finite numbers within the type's range"),
        ("FP16", [1.0, 70000.0], "finite numbers within the type's range"),
        ("FP64", [float("nan"), 1.0], "finite numbers"),
    ],
)
def test_json_data_type_errors(datatype: str, data: list[object], message: str) -> None:
    shape = (2,)
    with pytest.raises(InvalidInput, match=message):
        from_json_data("x", datatype, shape, data)


def test_json_bytes_are_utf8_strings_both_ways() -> None:
    array = from_json_data("text", "BYTES", (2,), ["seven", "naïve"])
    assert list(array) == [b"seven", "naïve".encode()]
    assert to_json_data(Tensor("text", "BYTES", (2,), array)) == ["seven", "naïve"]


def _binary_body(header: Mapping[str, object], *parts: bytes) -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + b"".join(parts), len(head)


def test_binary_request_with_json_and_binary_inputs() -> None:
    image = serialize_bytes([b"\xff\xd8jpeg-bytes"])
    waveform = np.linspace(0, 1, 5, dtype=np.float32)
    header = {
        "id": "r1",
        "parameters": {"top_k": 3},
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": len(image)},
            },
            {"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [["seven"]]},
            {"name": "audio", "datatype": "FP32", "shape": [1, 5], "parameters": {"binary_data_size": 20}},
        ],
        "outputs": [{"name": "labels", "parameters": {"binary_data": True}}],
    }
    body, length = _binary_body(header, image, waveform.tobytes())
    request = parse_infer_request(body, length)
    assert request.id == "r1" and request.parameters == {"top_k": 3}
    image_t, text_t, audio_t = request.inputs
    assert list(image_t.data) == [b"\xff\xd8jpeg-bytes"]
    assert text_t.data.shape == (1, 1) and text_t.data[0, 0] == b"seven"
    np.testing.assert_array_equal(audio_t.data, waveform.reshape(1, 5))
    assert [(o.name, o.parameters) for o in request.outputs] == [("labels", {"binary_data": True})]


@pytest.mark.parametrize(
    ("declared", "extra", "message"),
    [
        (100, b"", "runs past the end of the binary data"),
        (6, b"zz", "2 bytes of binary data are not claimed"),
    ],
)
def test_binary_sizes_must_account_for_every_byte(declared: int, extra: bytes, message: str) -> None:
    part = serialize_bytes([b"ab"])  # 6 bytes
    header = {
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": declared}}
        ]
    }
    body, length = _binary_body(header, part, extra)
    with pytest.raises(InvalidInput, match=message):
        parse_infer_request(body, length)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "must be a non-negative integer"),
        ("0", "does not fit"),
        ("999", "does not fit"),
        ("-3", "non-negative"),
    ],
)
def test_malformed_header_length(value: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_header_length(value, 50)


def test_header_length_that_cuts_the_json_is_reported_as_bad_json() -> None:
    body, length = _binary_body({"inputs": []})
    with pytest.raises(InvalidInput, match="not valid JSON"):
        parse_infer_request(body, length - 3)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "must be a JSON object"),
        ({}, "needs an 'inputs' list"),
        ({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}, "needs a string 'name'"),
        (
            {"inputs": [{"name": "a", "datatype": "FLOAT", "shape": [1], "data": [1]}]},
            "unsupported datatype 'FLOAT'",
        ),
        (
            {"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1], "data": [1]}]},
            "non-negative integers",
        ),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1]}]}, "neither 'data' nor"),
        ({"inputs": [], "outputs": [{"parameters": {}}]}, r"outputs\[0\] needs a string 'name'"),
    ],
)
def test_malformed_json_requests(document: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_infer_request(json.dumps(document).encode(), None)


def test_response_json_and_binary_outputs_decode_with_triton_rules() -> None:
    probs = np.array([[0.25, 0.75]], dtype=np.float32)
    labels = np.array([[b"1"]], dtype=object)
    outputs = [Tensor("probabilities", "FP32", (1, 2), probs), Tensor("labels", "BYTES", (1, 1), labels)]
    body, length = encode_infer_response({"model_name": "m"}, outputs, {"labels"})
    assert length is not None
    header = json.loads(body[:length])
    assert header["outputs"][0]["data"] == [0.25, 0.75]
    described = header["outputs"][1]
    assert "data" not in described and described["parameters"]["binary_data_size"] == len(body) - length
    assert list(deserialize_bytes_tensor(body[length:])) == [b"1"]


def test_response_without_binary_outputs_is_plain_json() -> None:
    body, length = encode_infer_response(
        {"model_name": "m"}, [Tensor("s", "FP32", (1,), np.ones(1, np.float32))], set()
    )
    assert length is None
    assert json.loads(body)["outputs"][0] == {"name": "s", "datatype": "FP32", "shape": [1], "data": [1.0]}
