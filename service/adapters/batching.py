"""Commands that arrive together run together: one trip to the store's thread pool for many requests.

A command sent to the thread pool alone pays a thread hop, a wake-up and a transaction of its own, and
while the event loop is busy a pool thread waits for the GIL at every call into SQLite or the network
(the loop takes it back first). Under load that made a create cost about twice its work. The batcher
collects the requests made while its last batch was in the pool and sends them as the next batch: one
hop and one transaction for all of them, and a batch grows with the load (about 8 at 16 concurrent
clients), with no wait when the service is idle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from service.ports import RunSync

Request = TypeVar("Request")
Outcome = TypeVar("Outcome")


class Batcher(Generic[Request, Outcome]):
    """`await submit(request)` → its outcome from `run_batch(requests)`, which runs in the pool and
    answers each request in order with its outcome, or an exception that concerns that request alone.
    An exception raised by `run_batch` itself goes to every request of the batch."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[Request]], Sequence[Outcome | BaseException]],
        run_sync: RunSync,
        max_batch: int = 64,
    ) -> None:
        self._run_batch = run_batch
        self._run_sync = run_sync
        self._max_batch = max_batch
        self._waiting: list[tuple[Request, asyncio.Future[Outcome]]] = []
        self._sender: asyncio.Task[None] | None = None  # the task sending batches, while there are any

    async def submit(self, request: Request) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send(), name="batcher")
        return await future

    async def _send(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                try:
                    outcomes: Sequence[Any] = await self._run_sync(
                        self._run_batch, [request for request, _ in batch]
                    )
                    if len(outcomes) != len(batch):
                        raise RuntimeError(f"{len(outcomes)} outcomes for {len(batch)} requests")
                except asyncio.CancelledError:
                    _cancel(batch)
                    raise
                except Exception as e:  # the store failed: every request of the batch hears it
                    outcomes = [e] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):  # lengths checked
                    if future.done():  # its caller went away (a client hung up); the work is done
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        except asyncio.CancelledError:  # the loop shuts down: nobody is left waiting forever
            _cancel(self._waiting)
            self._waiting.clear()
            raise
        finally:
            self._sender = None


def _cancel(batch: Sequence[tuple[Any, asyncio.Future[Any]]]) -> None:
    for _, future in batch:
        future.cancel()
