"""What the follower applies it passes on (`on_applied`: the relay publishes from it), each new event once,
in store order, with the position it continues; offers that arrive together reach the loop together."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.adapters.follower import Batch, Follower

pytestmark = pytest.mark.unit


class Models:
    """A store holding positions 1..stored (with gaps where `missing` says, as PostgreSQL's sequence
    leaves them) and read models that apply in order, skipping what they have."""

    def __init__(self, missing: frozenset[int] = frozenset()) -> None:
        self.position = 0
        self.stored = 0
        self.missing = missing

    def events(self, first: int, last: int) -> Batch:
        return [(p, f"event {p}") for p in range(first, last + 1) if p not in self.missing]

    def read(self, after: int, limit: int) -> Batch:
        return self.events(after + 1, self.stored)[:limit]

    def apply(self, batch: Batch) -> int:
        for position, _ in batch:
            if position > self.position:
                self.position = position
        return self.position


class Fed:
    """Collects what `on_applied` passes on and checks that it is a gapless continuation."""

    def __init__(self) -> None:
        self.segments: list[tuple[int, Batch]] = []
        self.threads: set[int] = set()

    def __call__(self, after: int, batch: Batch) -> None:
        self.threads.add(threading.get_ident())
        self.segments.append((after, list(batch)))

    def positions(self) -> list[int]:
        return [p for _, batch in self.segments for p, _ in batch]

    def assert_continuous(self, start: int = 0) -> None:
        last = start
        for after, batch in self.segments:
            assert after == last, self.segments
            assert batch, self.segments
            last = batch[-1][0]


async def started(models: Models, fed: Fed, pool: ThreadPoolExecutor) -> Follower:
    follower = Follower(
        models.read, models.apply, lambda: models.position, pool, poll_interval_s=60, on_applied=fed
    )
    await follower.start()
    return follower


async def test_events_read_from_the_store_are_passed_on_once_in_order() -> None:
    models, fed = Models(missing=frozenset({4, 9})), Fed()
    models.stored = 5
    with ThreadPoolExecutor(2) as pool:
        follower = await started(models, fed, pool)  # start-up reads what is stored
        models.stored = 12
        await follower.catch_up()
        await follower.catch_up()  # nothing new: nothing passed on
        await follower.stop()
    assert fed.positions() == [1, 2, 3, 5, 6, 7, 8, 10, 11, 12]
    fed.assert_continuous()
    assert fed.threads == {threading.get_ident()}  # on the loop, like the read models


async def test_offers_pass_on_only_what_the_read_models_did_not_have() -> None:
    models, fed = Models(), Fed()
    with ThreadPoolExecutor(2) as pool:
        follower = await started(models, fed, pool)
        models.stored = 6
        follower.offer(models.events(1, 3))
        follower.offer(models.events(2, 5))  # overlaps what is applied
        follower.offer(models.events(1, 2))  # nothing new
        await follower.wait_for(5, timeout_s=2)
        follower.offer(models.events(6, 6))
        await follower.wait_for(6, timeout_s=2)
        await follower.stop()
    assert fed.positions() == [1, 2, 3, 4, 5, 6]
    fed.assert_continuous()


async def test_an_offer_ahead_of_the_read_models_is_passed_on_after_the_gap_is_read() -> None:
    models, fed = Models(), Fed()
    with ThreadPoolExecutor(2) as pool:
        follower = await started(models, fed, pool)
        models.stored = 4
        follower.offer(models.events(3, 4))  # 1 and 2 were stored by another process: read from the store
        await follower.wait_for(4, timeout_s=2)
        await follower.stop()
    assert fed.positions() == [1, 2, 3, 4]
    fed.assert_continuous()


async def test_offers_made_before_the_loop_takes_them_reach_it_in_one_call() -> None:
    models, fed = Models(), Fed()
    offers = 50
    with ThreadPoolExecutor(2) as pool:
        follower = await started(models, fed, pool)
        calls = 0
        take = follower._take_offers

        def counted() -> None:
            nonlocal calls
            calls += 1
            take()

        follower._take_offers = counted  # type: ignore[method-assign]

        def commands() -> None:  # one after the other, while the loop waits for this very function
            for position in range(1, offers + 1):
                models.stored = position
                follower.offer(models.events(position, position))

        await asyncio.get_running_loop().run_in_executor(pool, commands)
        # the offers were taken before the loop heard that the function returned (read-your-writes)
        assert models.position == offers
        await follower.stop()
    assert calls == 1
    assert fed.positions() == list(range(1, offers + 1))
    fed.assert_continuous()


async def test_offers_from_many_threads_are_all_applied_and_awaited() -> None:
    models, fed = Models(), Fed()
    lock = threading.Lock()
    with ThreadPoolExecutor(8) as pool:
        follower = await started(models, fed, pool)
        loop = asyncio.get_running_loop()

        def command() -> int:  # stores one event, then offers it (group commit: in any order)
            with lock:
                models.stored += 1
                position = models.stored
            follower.offer(models.events(position, position))
            return position

        async def write() -> None:
            position = await loop.run_in_executor(pool, command)
            await follower.wait_for(position, timeout_s=5)

        await asyncio.gather(*(write() for _ in range(300)))
        await follower.stop()
    assert fed.positions() == list(range(1, 301))
    fed.assert_continuous()


async def test_an_offer_with_nothing_new_lets_later_offers_through() -> None:
    """The flag saying that a call to the loop is on its way is cleared even when nothing was new."""
    models, fed = Models(), Fed()
    with ThreadPoolExecutor(2) as pool:
        follower = await started(models, fed, pool)
        models.stored = 2
        follower.offer(models.events(1, 2))
        await follower.wait_for(2, timeout_s=2)
        follower.offer(models.events(1, 1))  # old: ignored
        await asyncio.sleep(0.01)
        models.stored = 3
        follower.offer(models.events(3, 3))
        await follower.wait_for(3, timeout_s=2)
        await follower.stop()
    assert fed.positions() == [1, 2, 3]


async def test_offers_before_the_follower_starts_do_not_block_later_ones() -> None:
    models, fed = Models(), Fed()
    with ThreadPoolExecutor(2) as pool:
        follower = Follower(
            models.read, models.apply, lambda: models.position, pool, poll_interval_s=60, on_applied=fed
        )
        models.stored = 1
        follower.offer(models.events(1, 1))  # no loop yet: the start reads the store instead
        await follower.start()
        models.stored = 2
        follower.offer(models.events(2, 2))
        await follower.wait_for(2, timeout_s=2)
        await follower.stop()
    assert fed.positions() == [1, 2]
