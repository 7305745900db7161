"""Protocol benchmark: the same payloads through native HTTP, V2 REST, native gRPC and V2 gRPC.

    python benchmarks/protocols.py --repository ~/.cache/fusionserve/model-repository

One server (the model's own batching config, HTTP and gRPC both on) and one
load generator for every door, ``h2load`` (Debian ``nghttp2-client``), so the
doors are compared, not the clients: a closed loop at each concurrency
(each client sends its next request when the answer arrives), prebuilt
bodies of real JPEG + WAV + text test rows, top-k 5 everywhere.

- HTTP doors: HTTP/1.1 (``--h1``), one connection per concurrent client, as
  ``wrk`` does in ``benchmarks/serving.py``; native multipart and V2 with the
  binary tensor extension.
- gRPC doors: HTTP/2, one connection carrying that many concurrent streams
  (what a gRPC channel does); each body is a length-prefixed gRPC message.

The doors take turns in rounds at each level (the order reversed every other
round), each round on the next payload, so a noisy neighbour's drift is
shared; the table shows mean throughput and median percentiles over the
rounds. It ends with the issue's two checks (gRPC p50 at concurrency 1 is not
above HTTP's, and saturated gRPC throughput is at least HTTP's) for each gRPC
door against the HTTP door of the same API and against the native HTTP door,
each on rounds paired in time with a 95 % interval: a door is called ahead or
behind only when the interval leaves zero out, else tied. The load generator
shares the machine with the server.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.serving import (  # noqa: E402
    LoadResult,
    Payload,
    ServerProcess,
    batch_stats,
    combine,
    load_payloads,
    multipart_body,
    progress,
    take_turns,
)
from benchmarks.stats import median_interval, relative_gains  # noqa: E402
from fusionserve.service.grpc.protos import NATIVE, V2  # noqa: E402
from fusionserve.service.v2.codec import serialize_bytes  # noqa: E402

TOP_K = 5
DOORS = ("native-http", "v2-rest", "native-grpc", "v2-grpc")


# -- bodies --------------------------------------------------------------------
def v2_rest_body(payload: Payload) -> tuple[bytes, int]:
    """JSON header + binary parts; returns the body and the header's length."""
    parts = [
        serialize_bytes([payload.image]),
        serialize_bytes([payload.audio]),
        serialize_bytes([payload.text]),
    ]
    inputs = [
        {"name": name, "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(part)}}
        for name, part in zip(("image", "audio", "text"), parts, strict=True)
    ]
    header = json.dumps({"inputs": inputs, "parameters": {"top_k": TOP_K}}).encode()
    return header + b"".join(parts), len(header)


def v2_grpc_message(model: str, payload: Payload) -> bytes:
    request = V2.ModelInferRequest(model_name=model)
    for name in ("image", "audio", "text"):
        request.inputs.add(name=name, datatype="BYTES", shape=[1])
    request.parameters["top_k"].int64_param = TOP_K
    request.raw_input_contents.extend(
        [serialize_bytes([payload.image]), serialize_bytes([payload.audio]), serialize_bytes([payload.text])]
    )
    return request.SerializeToString()


def native_grpc_message(model: str, payload: Payload) -> bytes:
    item = NATIVE.Item(image=payload.image, audio=payload.audio, text=payload.text)
    return NATIVE.PredictRequest(model=model, items=[item], top_k=TOP_K).SerializeToString()


def grpc_frame(message: bytes) -> bytes:
    """A gRPC message on the wire: uncompressed flag, 4-byte big-endian length, bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass
class Door:
    """How h2load reaches one door: URL path, headers, protocol, one body file per payload."""

    name: str
    path: str
    headers: list[str]
    http1: bool
    bodies: list[Path]


def write_doors(folder: Path, model: str, payloads: list[Payload]) -> dict[str, Door]:
    boundary = uuid.uuid4().hex
    grpc_headers = ["content-type: application/grpc", "te: trailers"]
    multipart = [f"content-type: multipart/form-data; boundary={boundary}"]
    binary = ["content-type: application/octet-stream"]
    doors = {
        "native-http": Door("native-http", f"/v1/models/{model}/predict", multipart, True, []),
        "v2-rest": Door("v2-rest", f"/v2/models/{model}/infer", binary, True, []),
        "native-grpc": Door("native-grpc", "/fusionserve.v1.FusionServe/Predict", grpc_headers, False, []),
        "v2-grpc": Door("v2-grpc", "/inference.GRPCInferenceService/ModelInfer", grpc_headers, False, []),
    }
    for i, payload in enumerate(payloads):
        v2_body, header_length = v2_rest_body(payload)
        contents = {
            "native-http": multipart_body(payload, boundary),
            "v2-rest": v2_body,
            "native-grpc": grpc_frame(native_grpc_message(model, payload)),
            "v2-grpc": grpc_frame(v2_grpc_message(model, payload)),
        }
        for name, body in contents.items():
            path = folder / f"{name}-{i}.bin"
            path.write_bytes(body)
            doors[name].bodies.append(path)
        # Each V2 REST body has its own JSON header length, sent as a header by h2load().
        (folder / f"v2-rest-{i}.hlen").write_text(str(header_length))
    return doors


def check_grpc_bodies(target: str, doors: dict[str, Door]) -> None:
    """h2load sees only HTTP status 200; make sure every gRPC body is answered with status OK."""
    with grpc.insecure_channel(target) as channel:
        for door in (d for d in doors.values() if not d.http1):
            call = channel.unary_unary(door.path)
            for body in door.bodies:
                call(body.read_bytes()[5:], timeout=30)  # raises on any non-OK status


# -- h2load ----------------------------------------------------------------------
def h2load(
    base: str,
    door: Door,
    payload: int,
    concurrency: int,
    seconds: float,
    log: Path,
    cpus: str | None = None,
) -> dict[str, float]:
    """One closed-loop h2load run (pinned to ``cpus`` when given); its rate and percentiles."""
    body = door.bodies[payload % len(door.bodies)]
    log.unlink(missing_ok=True)  # h2load appends
    headers = list(door.headers)
    if door.name == "v2-rest":
        headers.append(f"inference-header-content-length: {body.with_suffix('.hlen').read_text()}")
    # h2load 1.52 takes whole seconds only.
    duration = str(max(1, math.ceil(seconds)))
    pin = ["taskset", "-c", cpus] if cpus else []  # keep the server's cores free
    command = ["h2load", "-D", duration, "-d", str(body), f"--log-file={log}", "-T", "60", "-N", "60"]
    if door.http1:
        command += ["--h1", "-c", str(concurrency), "-m", "1"]
    else:
        command += ["-c", "1", "-m", str(concurrency)]
    for header in headers:
        command += ["-H", header]
    out = subprocess.run(
        [*pin, *command, f"{base}{door.path}"], capture_output=True, text=True, check=True
    ).stdout
    finished = re.search(r"finished in ([\d.]+)(m?s)", out)
    if not finished:
        raise RuntimeError(f"h2load printed no summary:\n{out}")
    elapsed = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    durations = sorted(int(r[2]) / 1000 for r in rows if r[1] == "200")
    if not durations:
        raise RuntimeError(f"no successful request:\n{out}")
    return {
        "rps": len(durations) / elapsed,
        "p50_ms": statistics.median(durations),
        "p95_ms": durations[min(len(durations) - 1, int(0.95 * len(durations)))],
        "p99_ms": durations[min(len(durations) - 1, int(0.99 * len(durations)))],
        "errors": len(rows) - len(durations),
    }


# -- driver ------------------------------------------------------------------------
def measure(door: str, url: str, model: str, level: int, run: Callable[[], dict[str, float]]) -> LoadResult:
    before = batch_stats(url, model)
    numbers = run()
    after = batch_stats(url, model)
    batches = after[1] - before[1]
    return LoadResult(
        setup=door,
        concurrency=level,
        rps=numbers["rps"],
        p50_ms=numbers["p50_ms"],
        p95_ms=numbers["p95_ms"],
        p99_ms=numbers["p99_ms"],
        errors=int(numbers["errors"]),
        mean_batch=(after[0] - before[0]) / batches if batches else 0.0,
    )


Rounds = dict[tuple[str, int], list[LoadResult]]


def print_table(results: list[LoadResult], rounds: Rounds) -> None:
    print()
    print("| door | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors | mean batch |")
    print("|---" * 8 + "|")
    for r in results:
        print(
            f"| {r.setup} | {r.concurrency} | {r.rps:.1f} | {r.p50_ms:.2f} | {r.p95_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.errors} | {r.mean_batch:.2f} |"
        )
    print()
    # Each gRPC door against the HTTP door of the same API, and against the native HTTP door.
    for grpc_door, http_door in (
        ("native-grpc", "native-http"),
        ("v2-grpc", "v2-rest"),
        ("v2-grpc", "native-http"),
    ):
        line = compare(rounds, grpc_door, http_door)
        if line:
            print(f"{grpc_door} vs {http_door}: {line}")


def compare(rounds: Rounds, grpc_door: str, http_door: str) -> str:
    """The issue's two checks for one pair of doors, on rounds paired in time.

    The doors of one round ran back to back, so drift of the machine mostly
    cancels in their difference. p50 at concurrency 1: the median per-round
    difference in ms. Saturated throughput: each door's peak over the levels
    (mean of its rounds), and the median per-round ratio at the level where
    HTTP peaked. Each with its 95 % bootstrap interval (``benchmarks.stats``):
    ``ahead``/``behind`` only when the interval leaves zero out, else ``tied``.
    """
    levels = sorted(
        {level for door, level in rounds if door == grpc_door}
        & {level for door, level in rounds if door == http_door}
    )
    if not levels:
        return ""
    parts = []
    if levels[0] == 1:
        pairs = list(zip(rounds[(grpc_door, 1)], rounds[(http_door, 1)], strict=True))
        diffs = [g.p50_ms - h.p50_ms for g, h in pairs]
        p50 = median_interval(diffs)
        parts.append(
            f"p50 at c=1 {p50.median:+.3f} ms [{p50.low:+.3f}, {p50.high:+.3f}] "
            f"{p50.verdict(lower_is_better=True)} (not slower in {sum(d <= 0 for d in diffs)}/{len(diffs)})"
        )

    def peak(door: str) -> tuple[float, int]:
        return max((statistics.fmean(r.rps for r in rounds[(door, level)]), level) for level in levels)

    (grpc_peak, grpc_level), (http_peak, http_level) = peak(grpc_door), peak(http_door)
    pairs = list(zip(rounds[(grpc_door, http_level)], rounds[(http_door, http_level)], strict=True))
    gains = relative_gains([g.rps for g, _ in pairs], [h.rps for _, h in pairs])
    rate = median_interval(gains)
    parts.append(
        f"peak throughput {grpc_peak:.1f} (c={grpc_level}) vs {http_peak:.1f} (c={http_level}) req/s; "
        f"at c={http_level} {rate.as_gain()} (not lower in {sum(g >= 0 for g in gains)}/{len(gains)})"
    )
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", default="digits-fusion")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--seconds", type=float, default=8.0, help="per door and level, over all rounds")
    parser.add_argument(
        "--rounds", type=int, default=4, help="the doors take turns this many times per level"
    )
    parser.add_argument("--payloads", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--doors", default=",".join(DOORS))
    parser.add_argument("--json", type=Path, help="also write the results and every round here")
    parser.add_argument(
        "--payload-dir", type=Path, help="read payloads from here instead of building the dataset"
    )
    parser.add_argument("--server-cpus", help="pin the server to these CPUs (taskset list, e.g. 0-7)")
    parser.add_argument("--client-cpus", help="pin h2load to these CPUs (taskset list, e.g. 8-11)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes (default 1: h2load's one gRPC connection lands on one process, "
        "so more would compare the doors' process spreading, not the doors)",
    )
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        print("h2load is not installed (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    levels = [int(c) for c in args.concurrency.split(",")]
    names = args.doors.split(",")
    share = args.seconds / args.rounds
    print(
        f"machine: {os.cpu_count()} cores; model {args.model}; {args.seconds:g} s per door and level",
        flush=True,
    )
    payloads = load_payloads(args.payload_dir, args.payloads, args.seed)
    results: list[LoadResult] = []
    all_rounds: Rounds = {}
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        doors = write_doors(tmp, args.model, payloads)
        server = ServerProcess(args.repository, grpc=True, cpus=args.server_cpus, workers=args.workers)
        try:
            server.wait_ready()
            check_grpc_bodies(server.target, doors)
            bases = {name: server.url if doors[name].http1 else f"http://{server.target}" for name in names}
            log = tmp / "requests.tsv"
            for name in names:  # warm every door (connections, allocator, sessions) before measuring
                h2load(bases[name], doors[name], 0, 4, 1.0, log, args.client_cpus)
            for level in levels:
                turns = dict.fromkeys(names, 0)

                def run(name: str, level: int = level, turns: dict[str, int] = turns) -> LoadResult:
                    index = turns[name]  # each round on the next payload
                    turns[name] += 1

                    def load() -> dict[str, float]:
                        return h2load(bases[name], doors[name], index, level, share, log, args.client_cpus)

                    return measure(name, server.url, args.model, level, load)

                rounds = take_turns(names, args.rounds, run)
                for name in names:
                    all_rounds[(name, level)] = rounds[name]
                    results.append(combine(rounds[name]))
                    print(progress(results[-1]), flush=True)
        finally:
            server.stop()
    print_table(results, all_rounds)
    if args.json:  # every round too, so later runs can be pooled with this one
        every = {f"{door}@{level}": [asdict(r) for r in runs] for (door, level), runs in all_rounds.items()}
        document = {"results": [asdict(r) for r in results], "rounds": every}
        args.json.write_text(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
