"""The batcher: requests made while a batch is in the pool go together in the next one, each caller hears
its own outcome, and a failure never strands a caller."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pytest

from service.adapters.batching import Batcher

pytestmark = pytest.mark.unit
T = TypeVar("T")


async def in_thread(fn: Callable[..., T], /, *args: Any) -> T:
    """The service's `run_sync`, with a thread of its own."""
    return await asyncio.to_thread(fn, *args)


class Doubler:
    """A `run_batch` that doubles numbers, refuses negative ones alone, and can be held in the pool."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()  # a batch is in the pool
        self.release = threading.Event()
        self.release.set()

    def __call__(self, requests: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(requests))
        self.entered.set()
        self.release.wait(5)
        return [ValueError(f"negative: {n}") if n < 0 else 2 * n for n in requests]


async def in_pool(run: Doubler) -> None:
    assert await asyncio.to_thread(run.entered.wait, 5)


async def test_requests_made_while_a_batch_is_in_the_pool_go_together_in_the_next() -> None:
    run = Doubler()
    batcher = Batcher(run, in_thread)
    run.release.clear()
    first = asyncio.ensure_future(batcher.submit(1))
    await in_pool(run)  # and held there
    rest = [asyncio.ensure_future(batcher.submit(n)) for n in range(2, 7)]
    await asyncio.sleep(0.01)
    assert run.batches == [[1]]  # nothing else goes while a batch is in the pool
    run.release.set()
    assert await first == 2
    assert await asyncio.gather(*rest) == [4, 6, 8, 10, 12]
    assert run.batches == [[1], [2, 3, 4, 5, 6]]


async def test_each_caller_hears_only_its_own_error() -> None:
    batcher = Batcher(Doubler(), in_thread)
    outcomes = await asyncio.gather(*(batcher.submit(n) for n in (1, -2, 3)), return_exceptions=True)
    assert outcomes[0] == 2
    assert outcomes[2] == 6
    assert isinstance(outcomes[1], ValueError)
    assert str(outcomes[1]) == "negative: -2"


async def test_a_failing_batch_fails_its_callers_and_the_next_batch_runs() -> None:
    calls: list[list[int]] = []

    def run(requests: Sequence[int]) -> list[int | BaseException]:
        calls.append(list(requests))
        if len(calls) == 1:
            raise OSError("disk I/O error")
        return list(requests)

    batcher = Batcher(run, in_thread)
    failed = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert [type(e) for e in failed] == [OSError, OSError]
    assert await batcher.submit(3) == 3


async def test_a_run_batch_that_answers_the_wrong_number_of_outcomes_fails_every_caller() -> None:
    batcher: Batcher[int, int] = Batcher(lambda requests: [0], in_thread)
    failed = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert all(isinstance(e, RuntimeError) and "1 outcomes for 2 requests" in str(e) for e in failed)


async def test_batches_are_at_most_max_batch() -> None:
    run = Doubler()
    batcher = Batcher(run, in_thread, max_batch=4)
    assert await asyncio.gather(*(batcher.submit(n) for n in range(10))) == [2 * n for n in range(10)]
    assert [len(batch) for batch in run.batches] == [4, 4, 2]


async def test_a_caller_that_goes_away_leaves_the_others_their_outcomes() -> None:
    run = Doubler()
    batcher = Batcher(run, in_thread)
    run.release.clear()
    gone = asyncio.ensure_future(batcher.submit(1))
    staying = asyncio.ensure_future(batcher.submit(2))
    await in_pool(run)
    gone.cancel()
    run.release.set()
    assert await staying == 4
    assert gone.cancelled()
    assert await batcher.submit(5) == 10  # and the batcher goes on


async def test_stopping_the_sender_cancels_every_waiting_caller() -> None:
    run = Doubler()
    batcher = Batcher(run, in_thread)
    run.release.clear()
    pooled = asyncio.ensure_future(batcher.submit(1))
    await in_pool(run)
    queued = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)
    sender = batcher._sender
    assert sender is not None
    sender.cancel()
    outcomes = await asyncio.gather(pooled, queued, return_exceptions=True)
    run.release.set()
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
