"""The micro-batcher with a fake model function: order, limits, failures, shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import pytest

from inference.batcher import Batcher, BatchLimits
from inference.errors import BatcherClosedError, ModelFailure, QueueFullError

T = TypeVar("T")
DEADLINE_S = 10.0  # a safety net so a bug fails the test instead of hanging it


class FakeModel:
    """Upper-cases texts; records each batch; can hold the first batch until released."""

    def __init__(self, *, hold_first: bool = False, poison: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.poison = poison
        if not hold_first:
            self.release.set()

    def __call__(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        self.started.set()
        assert self.release.wait(DEADLINE_S), "test never released the model"
        if self.poison is not None and self.poison in items:
            raise ValueError(f"cannot handle {self.poison!r}")
        return [item.upper() for item in items]


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), timeout=DEADLINE_S)

    return asyncio.run(bounded())


async def started(model: FakeModel) -> None:
    assert await asyncio.to_thread(model.started.wait, DEADLINE_S)


def test_results_come_back_in_submission_order() -> None:
    model = FakeModel()

    async def scenario() -> list[list[str]]:
        batcher = Batcher(model, limits=BatchLimits(max_batch=4, max_wait_s=0.001))
        await batcher.start()
        results = await asyncio.gather(*(batcher.run([f"a{i}", f"b{i}"]) for i in range(10)))
        await batcher.stop()
        return results

    assert run(scenario) == [[f"A{i}", f"B{i}"] for i in range(10)]
    assert all(len(batch) <= 4 for batch in model.batches)


def test_items_arriving_while_the_worker_is_busy_go_out_together() -> None:
    model = FakeModel(hold_first=True)
    sizes: list[int] = []

    async def scenario() -> None:
        batcher = Batcher(
            model,
            limits=BatchLimits(max_batch=4, max_wait_s=0.0),
            on_batch=lambda size, _: sizes.append(size),
        )
        await batcher.start()
        first = batcher.submit(["first"])
        await started(model)
        later = batcher.submit([f"x{i}" for i in range(10)])
        assert batcher.depth == 10
        model.release.set()
        await asyncio.gather(*first, *later)
        await batcher.stop()

    run(scenario)
    assert [len(batch) for batch in model.batches] == [1, 4, 4, 2]
    assert sizes == [1, 4, 4, 2]


def test_a_full_batch_goes_out_without_waiting_for_max_wait() -> None:
    model = FakeModel()

    async def scenario() -> list[str]:
        batcher = Batcher(model, limits=BatchLimits(max_batch=3, max_wait_s=60.0))
        await batcher.start()
        results = await batcher.run(["a", "b", "c"])  # would take 60 s if it waited
        await batcher.stop()
        return results

    assert run(scenario) == ["A", "B", "C"]
    assert model.batches == [["a", "b", "c"]]


def test_a_request_that_does_not_fit_is_refused_whole() -> None:
    model = FakeModel(hold_first=True)

    async def scenario() -> None:
        batcher = Batcher(model, limits=BatchLimits(max_batch=1, max_wait_s=0.0, max_queue=3))
        await batcher.start()
        running = batcher.submit(["running"])
        await started(model)
        queued = batcher.submit(["q1", "q2"])
        with pytest.raises(QueueFullError) as refused:
            batcher.submit(["q3", "q4"])
        assert str(refused.value) == (
            "queue full: 2 item(s) asked for, 1 of 3 place(s) free; retry shortly"
        )
        assert batcher.depth == 2  # nothing of the refused request was queued
        model.release.set()
        await asyncio.gather(*running, *queued)
        await batcher.stop()

    run(scenario)


def test_a_failing_item_fails_only_its_own_caller() -> None:
    model = FakeModel(hold_first=True, poison="bad")

    async def scenario() -> list[object]:
        batcher = Batcher(model, limits=BatchLimits(max_batch=8, max_wait_s=0.0))
        await batcher.start()
        warm = batcher.submit(["warm"])
        await started(model)
        futures = batcher.submit(["ok1", "bad", "ok2"])
        model.release.set()
        await asyncio.gather(*warm)
        results = await asyncio.gather(*futures, return_exceptions=True)
        await batcher.stop()
        return list(results)

    ok1, bad, ok2 = run(scenario)
    assert (ok1, ok2) == ("OK1", "OK2")
    assert isinstance(bad, ModelFailure)
    assert isinstance(bad.cause, ValueError)
    assert str(bad) == "model forward failed: ValueError: cannot handle 'bad'"
    assert model.batches[1:] == [["ok1", "bad", "ok2"], ["ok1"], ["bad"], ["ok2"]]


def test_stop_finishes_queued_items_then_refuses_new_ones() -> None:
    model = FakeModel(hold_first=True)

    async def scenario() -> list[str]:
        batcher = Batcher(model, limits=BatchLimits(max_batch=2, max_wait_s=0.0))
        await batcher.start()
        futures = batcher.submit(["a", "b", "c"])
        await started(model)
        stopping = asyncio.create_task(batcher.stop())
        model.release.set()
        await stopping
        with pytest.raises(BatcherClosedError):
            batcher.submit(["late"])
        return list(await asyncio.gather(*futures))

    assert run(scenario) == ["A", "B", "C"]


def test_a_model_returning_the_wrong_number_of_results_is_a_model_failure() -> None:
    async def scenario() -> None:
        batcher: Batcher[str, str] = Batcher(lambda items: [], limits=BatchLimits(max_wait_s=0))
        await batcher.start()
        with pytest.raises(ModelFailure, match="model returned 0 results for 1 items"):
            await batcher.run(["a"])
        await batcher.stop()

    run(scenario)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch": 0}, "max_batch must be at least 1, got 0"),
        ({"max_wait_s": -1.0}, "max_wait_s must not be negative, got -1.0"),
        ({"max_queue": 0}, "max_queue must be at least 1, got 0"),
    ],
)
def test_batch_limits_reject_impossible_values(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchLimits(**kwargs)  # type: ignore[arg-type]
