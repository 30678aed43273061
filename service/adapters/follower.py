"""Keeps this process's read models current with the store and lets a writer wait for its own write.

One asyncio task catches up in the store's thread pool whenever it is woken (after a save in this
process, a PostgreSQL NOTIFY from another one) or when the poll interval passes (SQLite has no push).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor

log = logging.getLogger("libjobs.follower")


class Follower:
    def __init__(
        self,
        catch_up: Callable[[], int],
        current: Callable[[], int],
        executor: Executor,
        *,
        poll_interval_s: float = 0.05,
        on_advance: Callable[[int], None] | None = None,
    ) -> None:
        self._catch_up = catch_up
        self._current = current  # the read models' position: commands may advance it themselves
        self._executor = executor
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
        await self._step()
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

    def wake_threadsafe(self) -> None:
        if self._loop is not None and not self._stopping:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to wake
                self._loop.call_soon_threadsafe(self._wake.set)

    async def wait_for(self, position: int | None, timeout_s: float = 5.0) -> None:
        """Returns once the read models include `position` (read-your-writes)."""
        if position is None or position <= self._current():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((position, future))
        self.wake()
        await asyncio.wait_for(future, timeout_s)

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)
            if self._stopping:
                return
            self._wake.clear()
            try:
                await self._step()
            except Exception as e:  # the store may be briefly unreachable: keep following
                self.last_error = e
                log.exception("catching up with the store failed")
                await asyncio.sleep(0.5)

    async def _step(self) -> None:
        loop = asyncio.get_running_loop()
        before = self._current()
        position = await loop.run_in_executor(self._executor, self._catch_up)
        self.last_error = None
        if position != before and self._on_advance is not None:
            self._on_advance(position)
        still_waiting = []
        for wanted, future in self._waiters:
            if wanted <= position:
                if not future.done():
                    future.set_result(None)
            elif not future.done():
                still_waiting.append((wanted, future))
        self._waiters = still_waiting
