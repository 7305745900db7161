"""Admission by cost on a real server: while a large photo is held in compute, another large
photo is shed with a 429 naming max_queue_cost, and a small item is still answered.

The compute is held with the ``gate`` failpoint (no timing): the first request's
cost stays reserved until it is answered.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.conftest import RunningServer, Sample, copy_entry
from tests.integration.test_lifecycle import wait_held

PREDICT = "/v1/models/digits-fusion/predict"


def _png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 40, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


async def test_a_second_large_photo_is_shed_by_cost_and_a_small_one_passes(
    tmp_path: Path,
    model_repository: Path,
    server_factory: Callable[..., RunningServer],
    samples: list[Sample],
) -> None:
    gate = tmp_path / "gate"
    gate.touch()  # open while warming up
    repo = copy_entry(
        model_repository,
        tmp_path / "repo",
        "digits-fusion",
        batching={
            "max_batch_size": 1,
            "max_queue_delay_ms": 0,
            "costs": {"row": 1, "image_megapixel": 10},
            "max_queue_cost": 15,
        },
        instance_groups=[{"kind": "cpu", "count": 1}],
    )
    server = server_factory(repo, grpc=False, env={"FUSIONSERVE_FAILPOINTS": f"gate={gate}"})
    gate.unlink()
    big = _png(1000)  # 1 megapixel: cost 11
    async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as client:
        held = asyncio.create_task(client.post(PREDICT, files={"image": ("big.png", big, "image/png")}))
        await wait_held(gate)
        shed = await client.post(PREDICT, files={"image": ("big2.png", big, "image/png")})
        assert shed.status_code == 429, shed.text
        assert "max_queue_cost=15" in shed.json()["error"]["message"]
        assert shed.headers["retry-after"]
        small = asyncio.create_task(client.post(PREDICT, files={"text": (None, samples[0].text)}))  # cost 1
        gate.touch()
        assert (await held).status_code == 200
        assert (await small).status_code == 200
        # Everything answered: the reservations are gone and a large photo fits again.
        again = await client.post(PREDICT, files={"image": ("big.png", big, "image/png")})
        assert again.status_code == 200, again.text
