"""The follower changes the read models only on the event loop's thread, so a request never sees half of
a command; commands from other threads hand their events over (`offer`)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from service.adapters.follower import Follower

pytestmark = pytest.mark.unit


class Models:
    """Records which thread applied each position; the store holds positions 1..stored."""

    def __init__(self) -> None:
        self.position = 0
        self.stored = 0
        self.applied_on: list[tuple[int, int]] = []
        self.reads = 0

    def read(self, after: int, limit: int) -> list[tuple[int, Any]]:
        self.reads += 1
        return [(p, f"event {p}") for p in range(after + 1, min(self.stored, after + limit) + 1)]

    def apply(self, batch: list[tuple[int, Any]]) -> int:
        for position, _ in batch:
            if position == self.position + 1:
                self.applied_on.append((position, threading.get_ident()))
                self.position = position
        return self.position


async def follower_of(models: Models, pool: ThreadPoolExecutor) -> Follower:
    follower = Follower(models.read, models.apply, lambda: models.position, pool, poll_interval_s=60)
    await follower.start()
    return follower


async def test_events_offered_from_other_threads_are_applied_on_the_loop() -> None:
    models = Models()
    with ThreadPoolExecutor(4) as pool:
        follower = await follower_of(models, pool)
        loop_thread = threading.get_ident()

        def command(position: int) -> None:  # a command's worker thread, after its save
            models.stored = max(models.stored, position)
            follower.offer([(position, f"event {position}")])

        for position in range(1, 6):
            await asyncio.get_running_loop().run_in_executor(pool, command, position)
            await follower.wait_for(position, timeout_s=2)
        await follower.stop()
    assert [p for p, _ in models.applied_on] == [1, 2, 3, 4, 5]
    assert {thread for _, thread in models.applied_on} == {loop_thread}


async def test_an_offer_out_of_order_is_filled_from_the_store() -> None:
    models = Models()
    with ThreadPoolExecutor(2) as pool:
        follower = await follower_of(models, pool)
        models.stored = 3  # another writer stored 1 and 2 before this command's 3
        follower.offer([(3, "event 3")])
        await follower.wait_for(3, timeout_s=2)
        await follower.stop()
    assert [p for p, _ in models.applied_on] == [1, 2, 3]


async def test_offers_arriving_out_of_order_apply_in_order_without_reading_the_store() -> None:
    models = Models()
    with ThreadPoolExecutor(2) as pool:
        follower = await follower_of(models, pool)
        reads_at_start = models.reads
        models.stored = 3  # one group commit stored three commands; their threads report 3, 1, 2
        for position in (3, 1, 2):
            follower.offer([(position, f"event {position}")])
        for _ in range(200):  # not wait_for: a waiter that comes before the offers reads the store
            if models.position == 3:
                break
            await asyncio.sleep(0.005)
        await follower.stop()
    assert [p for p, _ in models.applied_on] == [1, 2, 3]
    assert models.reads == reads_at_start


async def test_a_poll_reads_the_store_only_when_it_may_have_changed() -> None:
    models = Models()
    changed = [False]
    with ThreadPoolExecutor(2) as pool:
        follower = Follower(
            models.read,
            models.apply,
            lambda: models.position,
            pool,
            poll_interval_s=0.01,
            maybe_changed=lambda: changed[0],
            full_poll_every_s=60,
        )
        await follower.start()
        reads_at_start = models.reads
        await asyncio.sleep(0.2)  # about twenty polls, nothing changed: nothing read
        assert models.reads == reads_at_start
        models.stored, changed[0] = 2, True  # another process stored two events
        await follower.wait_for(2, timeout_s=2)
        await follower.stop()
    assert [p for p, _ in models.applied_on] == [1, 2]
