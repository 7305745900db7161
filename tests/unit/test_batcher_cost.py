"""Cost-aware batching and admission: batches close on cost, queues shed by cost. No clocks."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fusionserve.service.batching.cost_gate import CostGate
from fusionserve.service.errors import InvalidInput, Overloaded
from fusionserve.service.model.config import Batching, Costs
from fusionserve.service.model.rows import DecodedRow
from tests.unit.test_batcher import FAR, FakeClock, answer, ids, make, until


def photo(i: int, megapixels: float) -> DecodedRow:
    """A row whose image was ``megapixels`` as sent (its text id says which row it is)."""
    return DecodedRow(text_ids=np.array([i], dtype=np.int64), sizes={"image": megapixels * 1e6})


COSTS = {"row": 1.0, "image_megapixel": 1.0}


def test_cost_of_an_item_adds_the_declared_rates() -> None:
    costs = Costs(row=0.5, image_megapixel=2.0, audio_second=1.0, text_token=0.01)
    assert costs.of({"image": 3e6, "audio": 2.5, "text": 16}) == pytest.approx(0.5 + 6.0 + 2.5 + 0.16)
    assert Costs().of({"image": 12e6}) == 1.0  # default: every row costs 1, as before


async def test_a_batch_closes_on_cost_before_its_rows_or_delay() -> None:
    batcher = make(FakeClock(), max_batch_size=32, max_batch_cost=10.0, costs=COSTS)
    tasks = [asyncio.create_task(batcher.submit(photo(i, 3.0), FAR)) for i in range(5)]  # 4 each
    await until(lambda: batcher.queued == 5)
    first = await batcher.next_batch()  # no clock moved: due on cost alone
    assert ids(first) == [0, 1]  # 8 <= 10 < 12
    answer(first)
    second = await batcher.next_batch()
    assert ids(second) == [2, 3]
    answer(second)
    await until(lambda: tasks[3].done())
    assert batcher.queued == 1
    batcher.close()
    answer(await batcher.next_batch())
    await asyncio.gather(*tasks)


async def test_a_row_over_the_batch_cost_goes_alone() -> None:
    batcher = make(FakeClock(), max_batch_size=8, max_batch_cost=5.0, costs=COSTS)
    tasks = [
        asyncio.create_task(batcher.submit(photo(0, 12.0), FAR)),
        asyncio.create_task(batcher.submit(photo(1, 0.01), FAR)),
    ]
    await until(lambda: batcher.queued == 2)
    big = await batcher.next_batch()
    assert ids(big) == [0]
    answer(big)
    batcher.close()
    answer(await batcher.next_batch())
    await asyncio.gather(*tasks)


async def test_small_rows_still_batch_up_to_max_batch_size() -> None:
    batcher = make(FakeClock(), max_batch_size=4, max_batch_cost=100.0, costs=COSTS)
    tasks = [asyncio.create_task(batcher.submit(photo(i, 0.01), FAR)) for i in range(6)]
    await until(lambda: batcher.queued == 6)
    batch = await batcher.next_batch()
    assert ids(batch) == [0, 1, 2, 3]
    answer(batch)
    batcher.close()
    answer(await batcher.next_batch())
    await asyncio.gather(*tasks)


def test_admission_sheds_by_cost_not_only_by_count() -> None:
    gate = CostGate(20.0, "m")
    for _ in range(3):
        gate.reserve(6.0)  # three 5-megapixel photos held (cost 1 + 5 each)
    with pytest.raises(Overloaded, match=r"would pass max_queue_cost=20") as info:
        gate.reserve(13.0)  # a 12-megapixel photo does not fit
    assert info.value.details["max_queue_cost"] == 20.0
    gate.reserve(1.1)  # a thumbnail still does
    gate.release(6.0)
    gate.reserve(6.0)  # room again once one is answered
    assert gate.held == pytest.approx(19.1)


def test_an_idle_model_takes_even_an_item_over_the_bound() -> None:
    gate = CostGate(2.0, "m")
    gate.reserve(49.0)
    with pytest.raises(Overloaded):
        gate.reserve(1.0)
    gate.release(49.0)
    assert gate.held == 0.0


def test_no_bound_never_refuses() -> None:
    gate = CostGate(None, "m")
    for _ in range(1000):
        gate.reserve(1e6)


def test_the_preprocessor_reserves_before_decoding_and_settles_on_the_decoded_size(tmp_path) -> None:
    from fusionserve.service.model.config import ModelConfig
    from fusionserve.service.model.rows import RawInputs
    from fusionserve.service.preprocess.preprocessor import Preprocessor
    from tests.fixtures_media import gradient_image, png_bytes

    config = ModelConfig.model_validate(
        {
            "name": "m",
            "task": "embed",
            "modalities": {"image": {"height": 8, "width": 8}},
            "outputs": [{"name": "e", "kind": "embedding", "dims": 4}],
            "tokenizer_file": None,
            "batching": {"costs": {"row": 1, "image_megapixel": 100}, "max_queue_cost": 50},
        }
    )
    pre = Preprocessor(config, tmp_path)
    gate = CostGate(50.0, "m")
    small = pre.decode(RawInputs(image=png_bytes(gradient_image(100, 100))), gate)  # 0.01 MP: cost 2
    assert small.reserved == pytest.approx(2.0) and gate.held == pytest.approx(2.0)
    with pytest.raises(Overloaded):  # 0.5 MP: cost 51, refused from its header
        pre.decode(RawInputs(image=png_bytes(gradient_image(500, 1000))), gate)
    assert gate.held == pytest.approx(2.0)
    with pytest.raises(InvalidInput):  # a broken file gives its reservation back
        pre.decode(RawInputs(image=b"\x89PNG\r\n\x1a\n" + bytes(40)), gate)
    assert gate.held == pytest.approx(2.0)


def test_cost_bounds_are_validated() -> None:
    with pytest.raises(ValueError):
        Batching.model_validate({"max_batch_cost": 0})
    with pytest.raises(ValueError):
        Batching.model_validate({"costs": {"image_megapixel": -1}})
