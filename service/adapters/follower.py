"""Keeps this process's read models current with the store and lets a writer wait for its own write.

Only the event loop's thread changes the read models, so a request never sees half of a command (a PATCH
that records `Updated` and `Enabled`) nor a dict changing under it. Reading and decoding the store runs
in the store's thread pool; applying runs here. The follower catches up whenever it is woken (a
PostgreSQL NOTIFY from another process) or the poll interval passes (SQLite has no push); a command of
this process hands over its own events (`offer`), which apply at once when they are next in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

log = logging.getLogger("libjobs.follower")
Batch = list[tuple[int, Any]]  # (store position, domain event)


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
    ) -> None:
        self._read = read  # (after, limit) → the next stored events; blocking, runs in the pool
        self._apply = apply  # applies a batch (skipping what it already has) → the new position
        self._current = current  # the read models' position
        self._executor = executor
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._on_advance = on_advance
        self._wake = asyncio.Event()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last_error: BaseException | None = None

    @property
    def position(self) -> int:
        return self._current()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
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

    def _call_threadsafe(self, callback: Callable[..., None], *args: Any) -> None:
        if self._loop is not None and not self._stopping:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to do
                self._loop.call_soon_threadsafe(callback, *args)

    def wake_threadsafe(self) -> None:
        self._call_threadsafe(self._wake.set)

    def offer(self, saved: Batch) -> None:
        """From any thread: a command's own stored events, applied on the loop when next in order."""
        self._call_threadsafe(self._take_offer, saved)

    def _take_offer(self, saved: Batch) -> None:
        if saved and saved[0][0] == self._current() + 1:
            self._apply(saved)
            self._settle()
        elif saved and saved[-1][0] > self._current():
            self._wake.set()  # something stored before it is missing here: read the store

    async def wait_for(self, position: int | None, timeout_s: float = 5.0) -> None:
        """Returns once the read models include `position` (read-your-writes)."""
        if position is None or position <= self._current():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((position, future))
        self.wake()
        await asyncio.wait_for(future, timeout_s)

    async def catch_up(self) -> int:
        """Applies everything stored so far; concurrent calls are safe (applying skips what is in)."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await loop.run_in_executor(self._executor, self._read, self._current(), self._batch_size)
            self._apply(batch)
            if len(batch) < self._batch_size:
                break
        self.last_error = None
        self._settle()
        return self._current()

    def _settle(self) -> None:
        position = self._current()
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
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)
            if self._stopping:
                return
            self._wake.clear()
            try:
                await self.catch_up()
            except Exception as e:  # the store may be briefly unreachable: keep following
                self.last_error = e
                log.exception("catching up with the store failed")
                await asyncio.sleep(0.5)
