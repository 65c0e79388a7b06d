"""Dynamic micro-batching: many concurrent callers, one model worker thread.

Callers on the event loop ``submit`` items; a collector coroutine groups waiting items into a batch
of at most ``max_batch`` and hands it to ONE worker thread that runs the model function. A batch is
dispatched as soon as it is full, or when its oldest item has waited ``max_wait_s``; items that
arrive while the worker is busy wait for it and go out together in the next batch, which is where
the throughput comes from. The queue is bounded: when the items of a request do not fit, ``submit``
raises ``QueueFullError`` at once rather than letting latency grow without limit.

Length bucketing: with a ``length`` function (tokens per item) and ``length_buckets`` bounds, a
batch takes items of ONE bucket only, so one 200-token paragraph does not pad 31 short queries to
200 tokens; ``max_tokens`` caps a batch's padded size (items x longest item) as ``max_batch`` caps
its item count. Every batch is built around the OLDEST waiting item (plus the items after it in its
bucket), so nothing starves: an item goes out no later than right after every item queued before
it. Results come back per item, so a request's answers keep its input order whatever batches its
items travelled in.

If a batch raises, each of its items is run again alone, so one poisonous input fails only its own
caller (``ModelFailure``) and the others still get answers.

The batcher knows nothing of HTTP or of torch: it takes any ``run_batch`` function, which is how the
unit tests drive it with a fake model.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from inference.errors import BatcherClosedError, ModelFailure, QueueFullError

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

log = logging.getLogger(__name__)

BatchObserver = Callable[[int, float], None]
"""Called on the event loop after each batch with (batch size, model seconds)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchLimits:
    """How the batcher groups work; validated once here so the loop can trust them."""

    max_batch: int = 32
    max_wait_s: float = 0.005
    max_queue: int = 256
    max_tokens: int | None = None  # padded tokens per batch (items x longest); None = no cap
    length_buckets: tuple[int, ...] = ()  # upper token bounds; longer items share a last bucket

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {self.max_wait_s}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {self.max_queue}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        bounds = self.length_buckets
        if any(b < 1 for b in bounds) or list(bounds) != sorted(set(bounds)):
            raise ValueError(
                f"length_buckets must be positive and strictly increasing, got {list(bounds)}"
            )

    def bucket(self, length: int) -> int:
        """Index of the bucket for an item of ``length`` tokens (0 when there are no bounds)."""
        return bisect_left(self.length_buckets, length)


@dataclass(slots=True)
class _Pending(Generic[ItemT, ResultT]):
    item: ItemT
    future: asyncio.Future[ResultT]
    enqueued_at: float = field(default=0.0)
    length: int = 0
    bucket: int = 0


_Job = Callable[[], None]


class _WorkerThread:
    """One daemon thread running jobs in order; a hung model cannot block process exit."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def run(self, fn: Callable[[], ResultT]) -> asyncio.Future[ResultT]:
        """Run ``fn`` on the worker thread; the returned future resolves on the caller's loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ResultT] = loop.create_future()

        def settle(result: ResultT | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        def job() -> None:
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who decides
                loop.call_soon_threadsafe(settle, None, exc)
            else:
                loop.call_soon_threadsafe(settle, result, None)

        self._jobs.put(job)
        return future

    def stop(self) -> None:
        """Let the thread finish its current job and exit; does not wait for it."""
        self._jobs.put(None)


class Batcher(Generic[ItemT, ResultT]):
    """Groups items from concurrent callers into batches for one worker thread."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[ItemT]], Sequence[ResultT]],
        *,
        limits: BatchLimits,
        on_batch: BatchObserver | None = None,
        clock: Callable[[], float] = time.perf_counter,
        length: Callable[[ItemT], int] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._length = length
        self.limits = limits
        self._on_batch = on_batch
        self._clock = clock
        self._pending: deque[_Pending[ItemT, ResultT]] = deque()
        self._arrived = asyncio.Event()
        self._closed = False
        self._worker: _WorkerThread | None = None
        self._collector: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Items waiting for a batch (not counting the batch the worker is running)."""
        return len(self._pending)

    async def start(self) -> None:
        """Start the collector; call once, on the loop that will submit.

        The worker thread starts with the first batch, after the model (and torch) loaded: in our
        measurements on 2 cores a worker thread created before torch was imported ran forwards
        several times slower than one created after.
        """
        self._collector = asyncio.create_task(self._collect_forever(), name="batch-collector")

    async def stop(self) -> None:
        """Refuse new items, finish the ones already queued, then stop the worker thread."""
        self._closed = True
        self._arrived.set()
        if self._collector is not None:
            await self._collector
        if self._worker is not None:
            self._worker.stop()

    def submit(self, items: Sequence[ItemT]) -> list[asyncio.Future[ResultT]]:
        """Queue all ``items`` or none of them; one future per item, in order.

        Raises ``QueueFullError`` when they do not all fit, ``BatcherClosedError`` after ``stop``.
        """
        if self._closed:
            raise BatcherClosedError("the server is shutting down and takes no new work")
        free = self.limits.max_queue - len(self._pending)
        if len(items) > free:
            raise QueueFullError(
                f"queue full: {len(items)} item(s) asked for, {free} of "
                f"{self.limits.max_queue} place(s) free; retry shortly"
            )
        loop = asyncio.get_running_loop()
        now = self._clock()
        entries = [self._pending_entry(item, loop.create_future(), now) for item in items]
        self._pending.extend(entries)
        self._arrived.set()
        return [entry.future for entry in entries]

    def _pending_entry(
        self, item: ItemT, future: asyncio.Future[ResultT], now: float
    ) -> _Pending[ItemT, ResultT]:
        length = 0 if self._length is None else self._length(item)
        return _Pending(item, future, now, length, self.limits.bucket(length))

    async def run(self, items: Sequence[ItemT]) -> list[ResultT]:
        """Submit ``items`` and wait for all their results (in order)."""
        return list(await asyncio.gather(*self.submit(items)))

    async def _collect_forever(self) -> None:
        while True:
            if not self._pending:
                if self._closed:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._wait_until_due()
            batch, _ = self._next_batch()
            taken = {id(entry) for entry in batch}
            self._pending = deque(entry for entry in self._pending if id(entry) not in taken)
            live = [entry for entry in batch if not entry.future.done()]
            if live:
                await self._dispatch(live)

    def _next_batch(self) -> tuple[list[_Pending[ItemT, ResultT]], bool]:
        """The oldest item and the items queued after it in its bucket, within the limits.

        The flag is True when a limit (``max_batch`` or ``max_tokens``) closed the batch, i.e.
        waiting longer cannot make it bigger. Items are taken in arrival order; the oldest one is
        always taken, even when it alone is longer than ``max_tokens``.
        """
        head = self._pending[0]
        batch, longest = [head], head.length
        max_batch, max_tokens = self.limits.max_batch, self.limits.max_tokens
        for entry in self._pending:
            if entry is head or entry.bucket != head.bucket:
                continue
            if len(batch) >= max_batch:
                return batch, True
            longest_with = max(longest, entry.length)
            if max_tokens is not None and (len(batch) + 1) * longest_with > max_tokens:
                return batch, True
            batch.append(entry)
            longest = longest_with
        return batch, len(batch) >= max_batch

    async def _wait_until_due(self) -> None:
        """Wait until the next batch is full, its oldest item is ``max_wait_s`` old, or we close."""
        deadline = self._pending[0].enqueued_at + self.limits.max_wait_s
        while not self._closed and not self._next_batch()[1]:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=remaining)
            except TimeoutError:
                return

    async def _dispatch(self, batch: list[_Pending[ItemT, ResultT]]) -> None:
        try:
            results = await self._timed_run([entry.item for entry in batch])
        except Exception as exc:  # noqa: BLE001 - any model error is the callers' ModelFailure
            if len(batch) == 1:
                _settle_error(batch[0], exc)
                return
            log.warning("batch of %d failed (%s); running its items one by one", len(batch), exc)
            for entry in batch:
                await self._dispatch_alone(entry)
            return
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)

    async def _dispatch_alone(self, entry: _Pending[ItemT, ResultT]) -> None:
        try:
            (result,) = await self._timed_run([entry.item])
        except Exception as exc:  # noqa: BLE001 - any model error is the caller's ModelFailure
            _settle_error(entry, exc)
            return
        if not entry.future.done():
            entry.future.set_result(result)

    async def _timed_run(self, items: list[ItemT]) -> Sequence[ResultT]:
        if self._worker is None:
            self._worker = _WorkerThread("inference-batch-worker")
        run_batch, clock = self._run_batch, self._clock

        def timed() -> tuple[Sequence[ResultT], float]:
            started = clock()
            results = run_batch(items)
            return results, clock() - started

        results, seconds = await self._worker.run(timed)
        if len(results) != len(items):
            raise RuntimeError(f"model returned {len(results)} results for {len(items)} items")
        if self._on_batch is not None:
            self._on_batch(len(items), seconds)
        return results


def _settle_error(entry: _Pending[ItemT, ResultT], exc: Exception) -> None:
    if not entry.future.done():
        entry.future.set_exception(ModelFailure(exc))
