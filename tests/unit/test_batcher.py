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


# --- length bucketing ------------------------------------------------------------------------
# Items are "<name>:<tokens>"; the fake model upper-cases them, so a result names its item.


def tokens(item: str) -> int:
    return int(item.rsplit(":", 1)[1])


def bucketed(model: FakeModel, **limits: object) -> Batcher[str, str]:
    """Buckets <= 16, 17..64, > 64 tokens; batches of 4; no waiting for more items."""
    settings: dict[str, object] = {"max_batch": 4, "max_wait_s": 0.0, "length_buckets": (16, 64)}
    batch_limits = BatchLimits(**{**settings, **limits})  # type: ignore[arg-type]
    return Batcher(model, limits=batch_limits, length=tokens)


def test_a_batch_takes_items_of_one_length_bucket_only() -> None:
    model = FakeModel(hold_first=True)

    async def scenario() -> None:
        batcher = bucketed(model)
        await batcher.start()
        first = batcher.submit(["warm:3"])
        await started(model)
        later = batcher.submit(["s1:5", "long1:200", "s2:16", "m1:40", "s3:9", "long2:180"])
        model.release.set()
        await asyncio.gather(*first, *later)
        await batcher.stop()

    run(scenario)
    assert model.batches == [
        ["warm:3"],
        ["s1:5", "s2:16", "s3:9"],  # bucket <= 16, built around the oldest waiting item
        ["long1:200", "long2:180"],  # bucket > 64
        ["m1:40"],  # bucket 17..64
    ]


def test_bucketing_never_reorders_a_requests_results() -> None:
    model = FakeModel()
    requests = [[f"r{r}i{i}:{(7 * r + 31 * i) % 300 + 1}" for i in range(6)] for r in range(12)]

    async def scenario() -> list[list[str]]:
        batcher = bucketed(model, max_batch=3, max_wait_s=0.001)
        await batcher.start()
        results = await asyncio.gather(*(batcher.run(request) for request in requests))
        await batcher.stop()
        return results

    assert run(scenario) == [[item.upper() for item in request] for request in requests]
    assert any(  # the items really travelled in batches other than their request's
        [item.split("i")[0] for item in batch] != [batch[0].split("i")[0]] * len(batch)
        for batch in model.batches
    )


def test_a_long_item_is_not_starved_by_a_stream_of_short_ones() -> None:
    model = FakeModel(hold_first=True)

    async def scenario() -> None:
        batcher = bucketed(model, max_batch=2)
        await batcher.start()
        first = batcher.submit(["warm:3"])
        await started(model)
        queued = batcher.submit(["long:200", *(f"s{i}:5" for i in range(6))])
        model.release.set()
        await asyncio.gather(*first, *queued)
        await batcher.stop()

    run(scenario)
    # The long item was queued first, so it goes next even though short batches would be fuller.
    assert model.batches[1] == ["long:200"]
    assert model.batches[2:] == [["s0:5", "s1:5"], ["s2:5", "s3:5"], ["s4:5", "s5:5"]]


def test_max_tokens_caps_a_batch_by_padded_size_but_a_lone_long_item_still_runs() -> None:
    model = FakeModel(hold_first=True)

    async def scenario() -> None:
        batcher = bucketed(model, max_batch=8, max_tokens=100, length_buckets=())
        await batcher.start()
        first = batcher.submit(["warm:3"])
        await started(model)
        queued = batcher.submit(["a:30", "b:30", "c:40", "d:150", "e:10"])
        model.release.set()
        await asyncio.gather(*first, *queued)
        await batcher.stop()

    run(scenario)
    # a+b = 2 x 30 = 60; adding c makes 3 x 40 = 120 > 100. c alone = 40, with d 2 x 150 > 100.
    assert model.batches[1:] == [["a:30", "b:30"], ["c:40"], ["d:150"], ["e:10"]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens must be at least 1, got 0"),
        ({"length_buckets": (32, 16)}, r"length_buckets must be positive and strictly increasing"),
    ],
)
def test_bucket_limits_reject_impossible_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchLimits(**kwargs)  # type: ignore[arg-type]
