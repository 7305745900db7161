"""Mutated requests against every parser of untrusted bytes: only the client's errors come out.

Seeded mutations (byte flips, cuts, insertions, splices; JSON values swapped
for hostile ones) of valid V2 binary and JSON bodies, V2 gRPC messages,
multipart uploads, JPEG and WAV files. Any exception that is not a
``FusionServeError`` would reach the client as a 500 / INTERNAL. A longer
run of the same mutations (229,000 rounds) found one thing, now fixed: JSON
numbers past FP32's range silently became infinities.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest
from google.protobuf.message import DecodeError

from benchmarks.protocols import v2_grpc_message, v2_rest_body
from benchmarks.serving import Payload, multipart_body
from fusionserve.service.errors import FusionServeError
from fusionserve.service.grpc.protos import V2
from fusionserve.service.grpc.v2_tensors import fast_request, request_from_proto
from fusionserve.service.http.multipart import parse_multipart
from fusionserve.service.model.config import AudioSpec, ImageSpec
from fusionserve.service.preprocess.audio import decode_audio
from fusionserve.service.preprocess.image import decode_image
from fusionserve.service.v2.codec import parse_header_length, parse_infer_request
from fusionserve.service.v2.mapping import check_requested, rows_from_inputs, top_k_of
from tests.fixtures_media import digit_like_image, jpeg_bytes, sine, wav_bytes
from tests.unit.v2_fakes import CLASSIFIER, LABELS

ROUNDS = 2000
PAYLOAD = Payload(image=jpeg_bytes(digit_like_image()), audio=wav_bytes(sine(seconds=0.2)), text="a seven")
HOSTILE = [None, -1, 0, 2**63, -(2**63), 1.5, 1e308, "x", "", [], {}, [[1]], True, [-1], [2**40]]
DOCUMENTS = [
    {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a seven"]}],
        "parameters": {"top_k": 3},
    },
    {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": list(range(12))}]},
    {
        "inputs": [{"name": "audio", "datatype": "FP32", "shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
    },
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if op < 0.4 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif op < 0.6 and out:
            del out[rng.randrange(len(out)) :]
        elif op < 0.8:
            at = rng.randrange(len(out) + 1)
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif out:
            at, start = rng.randrange(len(out)), rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randint(1, 64)]
    return bytes(out)


def mutate_json(rng: random.Random, document: dict[str, object]) -> bytes:
    copy = json.loads(json.dumps(document))
    paths: list[list[object]] = []

    def walk(node: object, path: list[object]) -> None:
        paths.append(path)
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            walk(value, [*path, key])

    walk(copy, [])
    path = rng.choice(paths[1:])
    target = copy
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    target[path[-1]] = rng.choice(HOSTILE)  # type: ignore[index]
    return json.dumps(copy).encode()


def v2_rest(body: bytes, header_length: str | None) -> None:
    request = parse_infer_request(body, parse_header_length(header_length, len(body)))
    check_requested(CLASSIFIER, LABELS, request.outputs)
    rows_from_inputs("m", CLASSIFIER, request.inputs)
    top_k_of(request.parameters)


def v2_grpc(data: bytes) -> None:
    try:
        message = V2.ModelInferRequest.FromString(data)
    except DecodeError:  # answered INVALID_ARGUMENT by the door (test_grpc_malformed)
        return
    if fast_request(message, ["image", "audio", "text"]) is None:
        request = request_from_proto(message)
        check_requested(CLASSIFIER, LABELS, request.outputs)
        rows_from_inputs("m", CLASSIFIER, request.inputs)


def _targets(rng: random.Random) -> dict[str, Callable[[], object]]:
    body, header_length = v2_rest_body(PAYLOAD)
    upload = multipart_body(PAYLOAD, "b0undary")
    message = v2_grpc_message("m", PAYLOAD)
    image_spec, audio_spec = ImageSpec(height=28, width=28), AudioSpec(sample_rate=16_000, max_samples=16_000)
    return {
        "v2 binary": lambda: v2_rest(mutate(rng, body), str(header_length)),
        "v2 json": lambda: v2_rest(mutate_json(rng, rng.choice(DOCUMENTS)), None),
        "v2 grpc": lambda: v2_grpc(mutate(rng, message)),
        "multipart": lambda: parse_multipart(
            mutate(rng, upload), "multipart/form-data; boundary=b0undary", max_parts=16
        ),
        "jpeg": lambda: decode_image(mutate(rng, PAYLOAD.image), image_spec),
        "wav": lambda: decode_audio(mutate(rng, PAYLOAD.audio), audio_spec),
    }


@pytest.mark.parametrize("target", ["v2 binary", "v2 json", "v2 grpc", "multipart", "jpeg", "wav"])
def test_mutated_input_only_raises_client_errors(target: str) -> None:
    rng = random.Random(f"fuzz-{target}")
    run = _targets(rng)[target]
    for round_ in range(ROUNDS):
        try:
            run()
        except FusionServeError:
            pass
        except Exception as exc:  # a crash that would be a 500 / INTERNAL
            pytest.fail(f"round {round_}: {type(exc).__name__}: {exc}")
