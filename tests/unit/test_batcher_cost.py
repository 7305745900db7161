"""Cost-aware batching and admission: batches close on cost, queues shed by cost. No clocks."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.errors import Overloaded
from service.model.config import Batching, Costs
from service.model.rows import DecodedRow
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


async def test_admission_sheds_by_cost_not_only_by_count() -> None:
    batcher = make(FakeClock(), max_queue_size=100, max_queue_cost=20.0, costs=COSTS)
    queued = [asyncio.create_task(batcher.submit(photo(i, 5.0), FAR)) for i in range(3)]  # 18
    await until(lambda: batcher.queued == 3)
    assert batcher.queued_cost == pytest.approx(18.0)
    with pytest.raises(Overloaded, match=r"max_queue_cost=20") as info:
        await batcher.submit(photo(9, 12.0), FAR)  # a 12-megapixel photo does not fit
    assert info.value.details["max_queue_cost"] == 20.0
    small = asyncio.create_task(batcher.submit(photo(10, 0.1), FAR))  # a thumbnail still does
    await until(lambda: batcher.queued == 4)
    batcher.close()
    while batcher.queued:
        answer(await batcher.next_batch())
    await asyncio.gather(*queued, small)


async def test_an_empty_queue_takes_even_a_row_over_the_queue_cost() -> None:
    batcher = make(FakeClock(), max_queue_cost=2.0, costs=COSTS)
    task = asyncio.create_task(batcher.submit(photo(0, 48.0), FAR))
    await until(lambda: batcher.queued == 1)
    batcher.close()
    answer(await batcher.next_batch())
    await task


def test_cost_bounds_are_validated() -> None:
    with pytest.raises(ValueError):
        Batching.model_validate({"max_batch_cost": 0})
    with pytest.raises(ValueError):
        Batching.model_validate({"costs": {"image_megapixel": -1}})
