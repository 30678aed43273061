"""The relay: every stored event, in store order, to JetStream; its position advances only after the acks.

It is a projection whose view is NATS (a `RunRequested` also becomes the `JobRunRequested` work item of
`LIBJOBS_RUNS`, `Nats-Msg-Id` = run id, right after its event). One relay leads at a time (the same kind
of lock as the persisted read models); it reads the store after its tracked position, publishes each
event's envelope with `Nats-Msg-Id` = event id, waits for every ack of the batch, then records the
batch's last position.

- **Nothing is lost**: while NATS is down the position stands still; publishing resumes where it stopped.
- **No duplicates**: a batch published again after a crash or a timeout carries the same message ids, and
  JetStream drops the repeats within the de-duplication window (`StreamSettings.duplicate_window_s`).
- **In order**: a batch is pipelined on one connection, which JetStream stores in sending order; a failed
  batch is re-sent from its first unacknowledged message.

An event carries its library (and a catalog item its public id) only in its aggregate's first event, so
the relay remembers each aggregate's `Origin` and reads the first event from the store when it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol
from uuid import UUID

from nats.js import JetStreamContext

from contracts.nats import MSG_ID_HEADER, Subjects
from projections.envelopes import Origin, Outgoing, derived_message, origin_of, outgoing
from service.adapters.follower import Batch

log = logging.getLogger("libjobs.relay")
_FIRST_BACKOFF_S = 0.1
_MAX_BACKOFF_S = 5.0


class RelayTracking(Protocol):
    """Where the relay keeps its position, and who leads (see `projections.sqlview`)."""

    def try_lead(self) -> bool: ...
    def load(self) -> tuple[int, Any]: ...
    def save(self, position: int, upserts: Sequence[Any], deletes: Sequence[Any]) -> None: ...


class Origins:
    """Aggregate id → `Origin`, learnt from first events as they pass, else read from the store. Bounded
    (least recently used go first): a miss costs one small read, while an entry per job costs memory."""

    def __init__(self, first_event: Callable[[UUID], Any], capacity: int = 20_000) -> None:
        self._first_event = first_event
        self._capacity = capacity
        self._known: OrderedDict[UUID, Origin] = OrderedDict()

    def of(self, event: Any) -> Origin:
        aggregate_id: UUID = event.originator_id
        origin = origin_of(event) or self._known.get(aggregate_id)
        if origin is None:
            first = self._first_event(aggregate_id)
            origin = origin_of(first)
            if origin is None:
                raise LookupError(f"aggregate {aggregate_id} has no creation event")
        self._known[aggregate_id] = origin
        self._known.move_to_end(aggregate_id)
        if len(self._known) > self._capacity:
            self._known.popitem(last=False)
        return origin


class Relay:
    def __init__(
        self,
        *,
        read: Callable[[int, int], Batch],
        first_event: Callable[[UUID], Any],
        tracking: RelayTracking,
        subjects: Subjects,
        run_sync: Callable[..., Any],
        batch_size: int = 500,
        ack_timeout_s: float = 5.0,
        idle_poll_s: float = 1.0,
        on_published: Callable[[int, int], None] | None = None,
        repair: Callable[[JetStreamContext], Awaitable[Any]] | None = None,
    ) -> None:
        self._read = read
        self._origins = Origins(first_event)
        self._tracking = tracking
        self._subjects = subjects
        self._run_sync = run_sync
        self._batch_size = batch_size
        self._ack_timeout_s = ack_timeout_s
        self._idle_poll_s = idle_poll_s
        self._on_published = on_published  # (position, messages): metrics
        self._repair = repair  # re-creates the streams, should someone have deleted them
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.position = 0
        self.leading = False
        self.last_error: str | None = None

    def wake(self) -> None:
        """New events are stored (called on the loop, e.g. when the read models advance)."""
        self._wake.set()

    def start(self, js: JetStreamContext) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(js), name="relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, js: JetStreamContext) -> None:
        while True:
            try:
                await self._follow(js)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the store or the tracking table failed: keep relaying afterwards
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("the relay failed; retrying")
                await asyncio.sleep(1)

    async def _follow(self, js: JetStreamContext) -> None:
        while not await self._run_sync(self._tracking.try_lead):
            self.leading = False
            await asyncio.sleep(self._idle_poll_s)  # another process relays; take over if it stops
        self.leading = True
        self.position, _ = await self._run_sync(self._tracking.load)
        while True:
            messages, last = await self._run_sync(self._next_batch, self.position)
            if last == self.position:
                self._wake.clear()
                # asyncio.timeout, not wait_for: in Python 3.11 wait_for loses a cancel that meets a wake-up
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._idle_poll_s):
                        await self._wake.wait()
                if not await self._run_sync(self._tracking.try_lead):
                    return  # lost the lead (its connection died): start over
                continue
            await self._publish_all(js, messages)
            await self._run_sync(self._tracking.save, last, [], [])
            self.position = last
            if self._on_published is not None:
                self._on_published(last, len(messages))

    def _next_batch(self, after: int) -> tuple[list[Outgoing], int]:
        """In the store's thread pool: the next events as messages, and the position of the last one."""
        batch = self._read(after, self._batch_size)
        messages = []
        for position, event in batch:
            origin = self._origins.of(event)
            messages.append(outgoing(self._subjects, position, event, origin))
            item = derived_message(self._subjects, event, origin)  # a work item, a metadata refresh
            if item is not None:
                messages.append(item)
        return messages, batch[-1][0] if batch else after

    async def _publish_all(self, js: JetStreamContext, messages: list[Outgoing]) -> None:
        """Publishes until every message is acknowledged, re-sending from the first that was not."""
        backoff = _FIRST_BACKOFF_S
        pending = messages
        while pending:
            acked = await self._publish_batch(js, pending)
            pending = pending[acked:]
            if pending:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                if self._repair is not None and backoff >= _MAX_BACKOFF_S:
                    with contextlib.suppress(Exception):  # NATS itself is down: the next round tries again
                        await self._repair(js)
        self.last_error = None

    async def _publish_batch(self, js: JetStreamContext, messages: list[Outgoing]) -> int:
        """Sends the whole batch at once (pipelined); returns how many leading messages were acked."""
        futures: list[asyncio.Future[Any]] = []
        try:
            for message in messages:
                futures.append(
                    await js.publish_async(
                        message.subject, message.payload, headers={MSG_ID_HEADER: message.msg_id}
                    )
                )
            await asyncio.wait(futures, timeout=self._ack_timeout_s)
        except Exception as e:  # the connection is down or closing: what was acked so far counts
            self.last_error = f"{type(e).__name__}: {e}"
        acked = 0
        for future in futures:
            if not future.done() or future.cancelled() or future.exception() is not None:
                break
            acked += 1
        for future in futures[acked:]:
            if future.done() and not future.cancelled() and future.exception() is not None:
                self.last_error = f"{type(future.exception()).__name__}: {future.exception()}"
                break
        for future in futures[acked:]:
            future.cancel()  # an ack that comes later is not needed: the message is sent again
        if acked < len(messages):
            log.warning(
                "NATS did not acknowledge every event; sending again",
                extra={"acked": acked, "sent": len(messages), "error": self.last_error},
            )
        return acked
