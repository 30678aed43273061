"""Live events: fans out the changes this process applies to the subscribers of `GET /events`.

Everything runs on the one event loop (where the read models change): `publish` never blocks nor raises.
Each subscriber has a bounded queue of shared messages. One that falls `max_queued` messages behind is
dropped: its backlog is freed, it gets a last `dropped` message and its stream ends (the client
reconnects and reloads what it shows). So a slow client costs at most `max_queued` references, and never
slows the others or the read models.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Self
from uuid import UUID

import msgspec

from contracts.live import DROPPED, JOB_CHANGED, RUN_CHANGED, StreamDropped
from projections.readmodels import JobChange, RunChange
from service.ports import LiveMessage

log = logging.getLogger("libjobs.live")
MAX_QUEUED = 1000
IDLE_S = 15.0  # proxies cut streams that stay silent for long (nginx: 60 s)


class Subscription:
    """One subscriber: an async iterator of the messages that pass its filter, and of None after `idle_s`
    without any (time for a keep-alive). Leaving `with` unsubscribes."""

    def __init__(
        self,
        feed: LiveEvents,
        library_id: UUID | None,
        kinds: frozenset[str] | None,
        max_queued: int,
        idle_s: float | None,
    ) -> None:
        self._feed = feed
        self._library_id = library_id
        self._kinds = kinds
        self._max_queued = max_queued
        self._idle_s = idle_s
        self._queue: deque[LiveMessage] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False

    def wants(self, message: LiveMessage) -> bool:
        return (self._kinds is None or message.kind in self._kinds) and (
            self._library_id is None or message.library_id == self._library_id
        )

    def offer(self, message: LiveMessage) -> bool:
        """Queues the message; False when the queue is full."""
        if len(self._queue) >= self._max_queued:
            return False
        self._queue.append(message)
        self._wake()
        return True

    def end(self) -> None:
        """The iterator yields what is queued, then stops."""
        self._ended = True
        self._wake()

    def drop(self, last: LiveMessage) -> None:
        """Frees the backlog; the iterator yields `last` and stops."""
        self._queue.clear()
        self._queue.append(last)
        self.end()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._feed.unsubscribe(self)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> LiveMessage | None:
        if not self._queue and not self._ended:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self._idle_s):
                    await waiter
            except TimeoutError:
                return None
            finally:
                self._waiter = None
        if self._queue:
            return self._queue.popleft()
        raise StopAsyncIteration


class LiveEvents:
    """The broadcaster (`service.ports.LiveFeed`); `job_changed` and `run_changed` listen to the read
    models."""

    def __init__(self, *, max_queued: int = MAX_QUEUED, idle_s: float | None = IDLE_S) -> None:
        self._max_queued = max_queued
        self._idle_s = idle_s
        self._subscriptions: dict[Subscription, None] = {}  # ordered: fan-out in subscription order
        self._closed = False
        self._dropped_message = LiveMessage(
            DROPPED,
            msgspec.json.encode(
                StreamDropped(message=f"This client fell {max_queued} messages behind; reconnect and reload")
            ),
        )
        self.dropped = 0  # subscribers dropped for falling behind, since start

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    def subscribe(
        self, *, library_id: UUID | None = None, kinds: frozenset[str] | None = None
    ) -> Subscription:
        subscription = Subscription(self, library_id, kinds, self._max_queued, self._idle_s)
        if self._closed:
            subscription.end()  # shutting down: nothing more will come
        else:
            self._subscriptions[subscription] = None
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.pop(subscription, None)

    def publish(
        self, kind: str, data: bytes, *, id: str | None = None, library_id: UUID | None = None
    ) -> None:
        if not self._subscriptions:
            return
        message = LiveMessage(kind, data, id, library_id)
        behind = [s for s in self._subscriptions if s.wants(message) and not s.offer(message)]
        for subscription in behind:
            self.unsubscribe(subscription)
            subscription.drop(self._dropped_message)
            self.dropped += 1
        if behind:
            log.warning("dropped %d live subscriber(s) that fell behind", len(behind))

    def job_changed(self, change: JobChange) -> None:
        """The read models' listener: one `job.changed` message (`contracts.live.JobChanged`)."""
        if not self._subscriptions:
            return  # nobody to tell (a replay at start): skip the encoding
        head = (
            f'{{"type":"{JOB_CHANGED}","position":{change.position},"libraryId":"{change.library_id}",'
            f'"jobId":"{change.job_id}","deleted":{"true" if change.json is None else "false"},"job":'
        )
        # the DTO bytes are embedded as they are, never decoded and encoded again
        data = head.encode() + (b"null" if change.json is None else change.json) + b"}"
        self.publish(JOB_CHANGED, data, id=str(change.position), library_id=change.library_id)

    def run_changed(self, change: RunChange) -> None:
        """The read models' run listener: one `run.changed` message (`contracts.live.RunChanged`)."""
        if not self._subscriptions:
            return
        head = (
            f'{{"type":"{RUN_CHANGED}","position":{change.position},"libraryId":"{change.library_id}",'
            f'"jobId":"{change.job_id}","runId":"{change.run_id}","run":'
        )
        data = head.encode() + (b"null" if change.json is None else change.json) + b"}"
        self.publish(RUN_CHANGED, data, id=str(change.position), library_id=change.library_id)

    def close(self) -> None:
        """Ends every subscription once it has taken what is queued for it, and any made later (shutdown)."""
        self._closed = True
        for subscription in self._subscriptions:
            subscription.end()
        self._subscriptions.clear()
