"""Mixed traffic over the four doors, open loop, with every answer classified.

Doors: native HTTP (multipart image + text), V2 REST (JSON BYTES tensor),
native gRPC (``Predict``) and V2 gRPC (``ModelInfer``); a share of the
requests is invalid on purpose (an image that is not one). Requests start on
a fixed schedule (open loop: a slow server does not slow the offered load),
up to a bound of outstanding requests so the client itself stays alive.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np

from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2 as pb
from fusionserve.service.grpc.protos import V2
from fusionserve.service.v2.codec import serialize_bytes
from tests.conftest import RunningServer, Sample
from tests.reliability.helpers import MODEL, PREDICT

DOORS = ("http", "v2-rest", "grpc", "v2-grpc")


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    #: (start time, seconds) of each valid request answered with success.
    latencies: list[tuple[float, float]] = field(default_factory=list)
    #: Valid requests answered with a 5xx (or a gRPC INTERNAL/UNKNOWN), and transport losses.
    faults: list[str] = field(default_factory=list)
    started: int = 0
    skipped: int = 0  # not started: the client's own bound of outstanding requests was reached

    def p99(self, since: float = 0.0, until: float = float("inf")) -> float:
        values = [s for t, s in self.latencies if since <= t < until]
        return float(np.percentile(values, 99)) if values else float("nan")


class Traffic:
    def __init__(self, server: RunningServer, sample: Sample, invalid_share: float = 0.1) -> None:
        self.server = server
        self.sample = sample
        self.invalid_share = invalid_share
        self._http = httpx.AsyncClient(
            base_url=server.http_url, timeout=60, limits=httpx.Limits(max_connections=512)
        )
        self._channel = grpc.aio.insecure_channel(server.grpc_target)
        self._predict = self._channel.unary_unary(
            "/fusionserve.v1.FusionServe/Predict",
            request_serializer=pb.PredictRequest.SerializeToString,
            response_deserializer=pb.PredictResponse.FromString,
        )
        self._infer = self._channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=V2.ModelInferResponse.FromString,
        )
        v2 = V2.ModelInferRequest(model_name=MODEL)
        v2.inputs.add(name="text", datatype="BYTES", shape=[1])
        v2.raw_input_contents.append(serialize_bytes([sample.text.encode()]))
        self._v2_message = v2
        self._rng = random.Random(0)

    async def close(self) -> None:
        await self._http.aclose()
        await self._channel.close()

    async def one(self, door: str, invalid: bool, tally: Tally) -> None:
        started = time.monotonic()
        try:
            outcome = await self._send(door, invalid)
        except Exception as exc:  # a lost request: no answer at all
            outcome = f"lost:{type(exc).__name__}"
        seconds = time.monotonic() - started
        key = f"{'bad' if invalid else 'ok'}:{door}:{outcome}"
        tally.outcomes[key] += 1
        if outcome in ("200", "OK") and not invalid:
            tally.latencies.append((started, seconds))
        elif outcome.startswith("lost") or outcome in ("500", "502", "INTERNAL", "UNKNOWN"):
            tally.faults.append(key)

    async def _send(self, door: str, invalid: bool) -> str:
        s = self.sample
        if door == "http":
            image = b"\x89PNG not really" if invalid else s.png
            files = {"image": ("x.png", image, "image/png"), "text": (None, s.text)}
            return str((await self._http.post(PREDICT, files=files)).status_code)
        if door == "v2-rest":
            data = [12345] if invalid else [s.text]
            body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": data}]}
            return str((await self._http.post(f"/v2/models/{MODEL}/infer", json=body)).status_code)
        try:
            if door == "grpc":
                item = pb.Item(image=b"nope") if invalid else pb.Item(text=s.text, image=s.png)
                await self._predict(pb.PredictRequest(model=MODEL, items=[item]), timeout=60)
            else:
                message = V2.ModelInferRequest()
                message.CopyFrom(self._v2_message)
                if invalid:  # a model that does not exist
                    message.model_name = MODEL + "-absent"
                await self._infer(message, timeout=60)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return "OK"

    async def run(self, rate: float, seconds: float, tally: Tally, max_outstanding: int = 256) -> None:
        """Start ``rate`` requests per second for ``seconds``, doors in turn."""
        outstanding: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        n = 0
        while True:
            due = start + n / rate
            now = time.monotonic()
            if due - start >= seconds:
                break
            if due > now:
                await asyncio.sleep(due - now)
            door = DOORS[n % len(DOORS)]
            invalid = self._rng.random() < self.invalid_share
            n += 1
            if len(outstanding) >= max_outstanding:
                tally.skipped += 1
                continue
            tally.started += 1
            task = asyncio.create_task(self.one(door, invalid, tally))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        if outstanding:
            await asyncio.gather(*outstanding)

    async def saturation(self, seconds: float = 4.0, concurrency: int = 32) -> float:
        """Answers per second of valid mixed traffic at a fixed concurrency (closed loop)."""
        tally = Tally()
        end = time.monotonic() + seconds

        async def loop(i: int) -> None:
            k = i
            while time.monotonic() < end:
                await self.one(DOORS[k % len(DOORS)], False, tally)
                k += 1

        began = time.monotonic()
        await asyncio.gather(*(loop(i) for i in range(concurrency)))
        return len(tally.latencies) / (time.monotonic() - began)


def server_resources(pid: int) -> tuple[int, int]:
    """(RSS bytes, open file descriptors) of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
