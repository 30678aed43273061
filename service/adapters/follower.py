"""Keeps this process's read models current with the store and lets a writer wait for its own write.

Only the event loop's thread changes the read models, so a request never sees half of a command (a PATCH
that records `Updated` and `Enabled`) nor a dict changing under it. Reading and decoding the store runs
in the store's thread pool; applying runs here. The follower catches up whenever it is woken (a
PostgreSQL NOTIFY from another process) or the poll interval passes (SQLite has no push); a command of
this process hands over its own events (`offer`), which apply at once when they are next in order. Offers
can arrive out of order (group commit stores several commands at once, and their threads report back in
any order), so an offer that is ahead waits briefly for the ones before it before the store is read.

Whatever it applies, from an offer or from the store, it can pass on (`on_applied`, on the loop): the
relay publishes those decoded events instead of reading them back from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

log = logging.getLogger("libjobs.follower")
Batch = list[tuple[int, Any]]  # (store position, domain event)
OFFER_GAP_S = 0.005  # how long an offer that is ahead waits for the offers before it
QUIET_AFTER_S = 2.0  # after this long without a change, polls come QUIET_SLOWDOWN times less often
QUIET_SLOWDOWN = 4


class Follower:
    def __init__(
        self,
        read: Callable[[int, int], Batch],
        apply: Callable[[Batch], int],
        current: Callable[[], int],
        executor: Executor,
        *,
        batch_size: int = 1000,
        poll_interval_s: float = 0.05,
        on_advance: Callable[[int], None] | None = None,
        on_applied: Callable[[int, Batch], None] | None = None,
        maybe_changed: Callable[[], bool] | None = None,
        full_poll_every_s: float = 1.0,
    ) -> None:
        self._read = read  # (after, limit) → the next stored events; blocking, runs in the pool
        self._apply = apply  # applies a batch (skipping what it already has) → the new position
        self._current = current  # the read models' position
        self._executor = executor
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._on_advance = on_advance
        # (position before, the events applied after it): every stored event after `position before` up
        # to the last one, in store order, each passed on exactly once
        self._on_applied = on_applied
        # A cheap test, on the loop, of whether anything may have been stored since it was last asked;
        # when it says no, a poll reads nothing (idle CPU). The store is still read every
        # `full_poll_every_s`, in case the test missed a change.
        self._maybe_changed = maybe_changed
        self._full_poll_every_s = full_poll_every_s
        self._last_read = 0.0
        self._last_change = 0.0
        self._settled_at = -1
        self._wake = asyncio.Event()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._offers: dict[int, Batch] = {}  # first position → offered batch that is not next yet
        self._offered: deque[Batch] = deque()  # offers from command threads, not taken by the loop yet
        self._offers_due = False  # a call to take them is on its way to the loop
        self._gap_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last_error: BaseException | None = None

    @property
    def position(self) -> int:
        return self._current()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._last_read = self._loop.time()
        await self.catch_up()
        self._task = asyncio.create_task(self._run(), name="read-model-follower")

    async def stop(self) -> None:
        self._stopping = True  # Python 3.11's wait_for can swallow a cancel that meets a wake-up
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self) -> None:
        self._wake.set()

    def _call_threadsafe(self, callback: Callable[..., None], *args: Any) -> bool:
        if self._loop is not None and not self._stopping:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to do
                self._loop.call_soon_threadsafe(callback, *args)
                return True
        return False

    def wake_threadsafe(self) -> None:
        self._call_threadsafe(self._wake.set)

    def offer(self, saved: Batch) -> None:
        """From any thread: a command's own stored events, applied on the loop when next in order.

        Offers made while the loop has not taken the earlier ones yet go with them: one call into the
        loop (a write to its wake-up pipe) for all, not one each. The call is made before the command
        returns, so the loop takes the offer before it hears that the command is done."""
        if not saved:
            return
        self._offered.append(saved)
        if not self._offers_due:
            self._offers_due = True  # before calling: the loop may take the offers at once
            if not self._call_threadsafe(self._take_offers):
                self._offers_due = False

    def _take_offers(self) -> None:
        self._offers_due = False  # first: an offer made from now on calls again, if the loop below misses it
        current = self._current()
        taken = False
        while self._offered:
            saved = self._offered.popleft()
            if saved[-1][0] > current:
                self._offers[saved[0][0]] = saved
                taken = True
        if not taken:
            return
        self._apply_offers()
        self._settle()
        if self._offers and self._gap_timer is None and self._loop is not None:
            # something stored before them is not here: it is probably on its way, else read the store
            self._gap_timer = self._loop.call_later(OFFER_GAP_S, self._wake.set)

    def _apply_offers(self) -> None:
        """Applies the offered batches that continue the read models; forgets those already in."""
        while self._offers:
            first = min(self._offers)
            if first > self._current() + 1:
                break
            batch = self._offers.pop(first)
            if batch[-1][0] > self._current():
                self._apply_batch(batch)
        if not self._offers and self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None

    def _apply_batch(self, batch: Batch) -> None:
        """Applies a batch (skipping what the read models already have) and passes the new events on."""
        before = self._current()
        self._apply(batch)
        if self._on_applied is None or not batch:
            return
        after = self._current()
        if after <= before:
            return
        if batch[0][0] <= before or batch[-1][0] > after:
            batch = [item for item in batch if before < item[0] <= after]
        self._on_applied(before, batch)

    async def wait_for(self, position: int | None, timeout_s: float = 5.0) -> None:
        """Returns once the read models include `position` (read-your-writes)."""
        if position is None or position <= self._current():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((position, future))
        if not self._offers:  # else the gap timer reads the store if the missing offer does not come
            self.wake()
        await asyncio.wait_for(future, timeout_s)

    def _worth_reading(self, now: float) -> bool:
        if self._maybe_changed is None or now - self._last_read >= self._full_poll_every_s:
            return True
        return self._maybe_changed()

    async def catch_up(self) -> int:
        """Applies everything stored so far; concurrent calls are safe (applying skips what is in)."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await loop.run_in_executor(self._executor, self._read, self._current(), self._batch_size)
            self._apply_batch(batch)
            if len(batch) < self._batch_size:
                break
        self._gap_timer = None  # the store was read: a new gap deserves a new wait
        self._apply_offers()
        self.last_error = None
        self._settle()
        return self._current()

    def _settle(self) -> None:
        position = self._current()
        if position != self._settled_at and self._loop is not None:
            self._settled_at = position
            self._last_change = self._loop.time()
        if self._on_advance is not None:
            self._on_advance(position)
        still_waiting = []
        for wanted, future in self._waiters:
            if future.done():
                continue
            if wanted <= position:
                future.set_result(None)
            else:
                still_waiting.append((wanted, future))
        self._waiters = still_waiting

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            woken = False
            # Quiet for a while: poll less often (idle CPU); the first change brings the pace back.
            quiet = loop.time() - self._last_change > QUIET_AFTER_S
            interval = self._poll_interval_s * (QUIET_SLOWDOWN if quiet else 1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):  # unlike wait_for, no task per poll
                    await self._wake.wait()
                woken = True
            if self._stopping:
                return
            self._wake.clear()
            if not woken and not self._worth_reading(loop.time()):
                continue
            self._last_read = loop.time()
            try:
                await self.catch_up()
            except Exception as e:  # the store may be briefly unreachable: keep following
                self.last_error = e
                log.exception("catching up with the store failed")
                await asyncio.sleep(0.5)
