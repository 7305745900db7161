"""The data plane's own guarantees, with a fake registry: announced rows never leak,
admission comes before decoding, client timeouts are bounded by the server."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from fusionserve.service.batching import DynamicBatcher
from fusionserve.service.dataplane import DataPlane
from fusionserve.service.errors import DeadlineExceeded, Overloaded
from fusionserve.service.metrics import Metrics
from fusionserve.service.model.config import Batching, ModelConfig
from fusionserve.service.model.rows import DecodedRow, RawInputs
from fusionserve.service.registry import VersionCounters

CONFIG = ModelConfig.model_validate(
    {
        "name": "m",
        "task": "classify",
        "modalities": {"text": {"max_tokens": 8}},
        "outputs": [{"name": "class_logits", "kind": "logits", "dims": 2}],
    }
)


class CountingDecoder:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def decode(self, raw: RawInputs, gate: object = None) -> DecodedRow:
        with self.lock:
            self.calls += 1
        return DecodedRow(text_ids=np.ones(2, dtype=np.int64), decode_seconds={"text": 0.0})


@dataclass
class FakeVersion:
    batcher: DynamicBatcher
    preprocessor: CountingDecoder
    name: str = "m"
    version: str = "1"
    config: ModelConfig = CONFIG
    labels: list[str] | None = field(default_factory=lambda: ["a", "b"])
    counters: VersionCounters = field(default_factory=VersionCounters)
    holders: int = 0

    def hold(self) -> None:
        self.holders += 1

    def release(self) -> None:
        self.holders -= 1


class FakeRegistry:
    def __init__(self, version: FakeVersion) -> None:
        self.version = version

    def get(self, name: str, version: str | None = None) -> FakeVersion:
        return self.version


def make(max_timeout_s: float = 300.0, **batching: Any) -> tuple[DataPlane, FakeVersion]:
    metrics = Metrics()
    batcher = DynamicBatcher(
        Batching.model_validate({"max_queue_delay_ms": 1e9, **batching}),
        model="m",
        version="1",
        metrics=metrics,
        track_arrivals=True,
    )
    lv = FakeVersion(batcher, CountingDecoder())
    plane = DataPlane(FakeRegistry(lv), metrics, decode_threads=1, max_timeout_s=max_timeout_s)  # type: ignore[arg-type]
    plane.start_accepting()
    return plane, lv


ROWS = [RawInputs(text="one"), RawInputs(text="two")]


async def test_rows_announced_by_a_call_cancelled_before_submitting_are_withdrawn() -> None:
    """The gRPC case: the client's deadline cancels the call between decoding and queueing.

    The cancel is scheduled from inside the call's last step before it queues
    its rows (the decode-time metric), so it lands after the rows' submit tasks
    exist and before they ever run: deterministic, no timing.
    """
    plane, lv = make()
    loop = asyncio.get_running_loop()
    holder: dict[str, asyncio.Task[Any]] = {}

    class CancelOnObserve:
        def labels(self, *labels: str) -> CancelOnObserve:
            return self

        def observe(self, value: float) -> None:
            loop.call_soon(holder["task"].cancel)

    plane.metrics.decode_seconds = CancelOnObserve()  # type: ignore[assignment]
    holder["task"] = task = asyncio.create_task(plane.predict("m", None, ROWS, top_k=1))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lv.batcher.queued == 0
    assert lv.batcher.expected == 0, "announced rows leaked: every lone request would wait the queue delay"
    gauge = plane.metrics.announced_rows.labels("m", "1")._value.get()
    print(f"announced rows after a cancelled two-row call: {lv.batcher.expected} (gauge {gauge})")
    assert gauge == 0


async def test_a_request_that_cannot_be_queued_whole_is_refused_before_decoding() -> None:
    plane, lv = make(max_queue_size=3)
    a = lv.batcher.expect(2)  # two rows of another request are decoding
    with pytest.raises(Overloaded, match="max_queue_size=3"):
        await plane.predict("m", None, ROWS, top_k=1)
    assert lv.preprocessor.calls == 0, "refused rows were decoded"
    assert lv.batcher.queued == 0 and lv.batcher.expected == 2
    lv.batcher.withdraw(a)
    plane.shutdown()


async def test_client_timeout_is_bounded_by_the_server_maximum() -> None:
    """Nothing computes here: a request is answered by its deadline, never later than the server's bound."""
    plane, lv = make(max_timeout_s=0.05)
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(plane.predict("m", None, ROWS[:1], top_k=1, timeout_s=9e6), timeout=30)
    assert lv.batcher.queued == 0 and lv.batcher.expected == 0
    plane.shutdown()
