"""The relay: every stored event, in store order, to JetStream; its position advances only after the acks.

It is a projection whose view is NATS (a `RunRequested` also becomes the `JobRunRequested` work item of
`LIBJOBS_RUNS`, `Nats-Msg-Id` = run id, right after its event). One relay leads at a time (the same kind
of lock as the persisted read models); it reads the store after its tracked position, publishes each
event's envelope with `Nats-Msg-Id` = event id, waits for every ack of the batch, then counts the
batch's last position as relayed (`position`; saved at most every `save_every_s`, and when it stops).

- **Nothing is lost**: while NATS is down the position stands still; publishing resumes where it stopped.
- **No duplicates**: a batch published again after a crash or a timeout carries the same message ids, and
  JetStream drops the repeats within the de-duplication window (`StreamSettings.duplicate_window_s`).
- **In order**: a batch is pipelined on one connection, which JetStream stores in sending order; a failed
  batch is re-sent from its first unacknowledged message.

An event carries its library (and a catalog item its public id) only in its aggregate's first event, so
the relay remembers each aggregate's `Origin` and reads the first event from the store when it does not.

**Fed by the follower.** The read models' follower can hand over every batch it applies (`feed`: the
decoded events, in store order, on the loop). While the relay is caught up it publishes those without
reading and decoding them again; when it is behind (a start, a backlog, events it was not fed) it reads
the store until it reaches what it was fed. After a crash it publishes again what it had not saved, and
JetStream drops the repeats. While events keep coming, those stored within `linger_s` of the last batch
go out together in the next one: a batch costs round trips and system calls, whatever its size.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol
from uuid import UUID

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError

from contracts.nats import MSG_ID_HEADER, Subjects
from projections.envelopes import Origin, Outgoing, derived_message, origin_of, outgoing
from service.adapters.follower import Batch

log = logging.getLogger("libjobs.relay")
_FIRST_BACKOFF_S = 0.1
_MAX_BACKOFF_S = 5.0
_ON_LOOP_MAX = 100  # fed events whose messages are built on the loop; more go to the thread pool


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
        self._remember(aggregate_id, origin)
        return origin

    def known(self, event: Any) -> Origin | None:
        """The origin when it needs no store read (the event says it, or it is remembered), else None."""
        aggregate_id: UUID = event.originator_id
        origin = origin_of(event) or self._known.get(aggregate_id)
        if origin is not None:
            self._remember(aggregate_id, origin)
        return origin

    def _remember(self, aggregate_id: UUID, origin: Origin) -> None:
        self._known[aggregate_id] = origin
        self._known.move_to_end(aggregate_id)
        if len(self._known) > self._capacity:
            self._known.popitem(last=False)


class Acks:
    """JetStream publishing with the acknowledgements read here: each message is a request whose reply
    (a `PubAck`, or an error) comes to one inbox subscription of the connection, and settles the message's
    future. It is what nats-py's `publish_async` does, at about half the cost per message (no semaphore,
    no random token, no `PubAck` object). One batch is in flight at a time: a new one forgets the replies
    of the one before."""

    def __init__(self) -> None:
        self._client: Client | None = None
        self._prefix = ""
        self._count = 0
        self._waiting: dict[str, asyncio.Future[None]] = {}

    async def new_batch(self, js: JetStreamContext) -> None:
        self._waiting.clear()
        client: Client = js._nc  # the JetStream context's connection (nats-py keeps no public name)
        if client is not self._client:  # first use or a new client (nats-py resubscribes on reconnects)
            prefix = client.new_inbox() + "."
            await client.subscribe(prefix + "*", cb=self._on_reply)
            self._client, self._prefix = client, prefix

    async def publish(self, message: Outgoing) -> asyncio.Future[None]:
        assert self._client is not None, "new_batch first"
        self._count += 1
        reply = self._prefix + str(self._count)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[reply] = future
        await self._client.publish(
            message.subject, message.payload, reply=reply, headers={MSG_ID_HEADER: message.msg_id}
        )
        return future

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject, None)
        if future is None or future.done():
            return  # a reply to a batch given up on: that message was sent again
        if msg.headers and msg.headers.get("Status") == "503":  # no stream listens on the subject
            future.set_exception(NoStreamResponseError())
            return
        if b'"error"' in msg.data:
            error = json.loads(msg.data).get("error")
            if error is not None:
                try:
                    APIError.from_error(error)  # raises the error's own kind
                except APIError as e:
                    future.set_exception(e)
                    return
        future.set_result(None)  # {"stream": …, "seq": …}, possibly "duplicate": true


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
        save_every_s: float = 0.2,
        linger_s: float = 0.01,
        fed_capacity: int = 10_000,
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
        self._idle_poll_s = idle_poll_s  # also how often a busy relay checks that it still leads
        self._save_every_s = save_every_s
        self._linger_s = linger_s
        self._fed_capacity = fed_capacity
        self._on_published = on_published  # (position, messages) once acknowledged: metrics
        self._repair = repair  # re-creates the streams, should someone have deleted them
        self._acks = Acks()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # (position before, events after it): what the follower applied, not published yet
        self._fed: deque[tuple[int, Batch]] = deque()
        self._fed_events = 0
        self._fed_ever = False  # once fed, the follower hands over whatever is stored from then on
        self._store_ahead = True  # the store may hold events after the position that were not fed
        self._saved = 0  # the position last saved
        self._saved_at = 0.0
        self._lead_checked_at = 0.0
        self._sent_at = -1.0  # when the last batch was sent
        self._backlog = False  # the last batch was full: more is waiting, no lingering
        self.position = 0  # everything up to here is acknowledged by JetStream
        self.leading = False
        self.last_error: str | None = None

    def wake(self) -> None:
        """New events are stored (called on the loop, e.g. when the read models advance)."""
        self._wake.set()

    def feed(self, after: int, batch: Batch) -> None:
        """On the loop: the follower applied `batch`, every event stored after position `after` up to the
        batch's last, in store order. Published from here when they continue the relay's position."""
        if not self.leading or not batch or batch[-1][0] <= self.position:
            return  # another process relays: this one reads the store when it takes over
        self._fed.append((after, batch))
        self._fed_events += len(batch)
        self._fed_ever = True
        while self._fed_events > self._fed_capacity:  # far behind: the oldest are read from the store
            _, dropped = self._fed.popleft()
            self._fed_events -= len(dropped)
        self._wake.set()

    def start(self, js: JetStreamContext) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(js), name="relay")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.leading and self.position > self._saved:  # what was acknowledged since the last save
            try:
                await self._run_sync(self._tracking.save, self.position, [], [])
                self._saved = self.position
            except Exception:  # the next leader publishes those again; JetStream drops the repeats
                log.warning("could not save the relay's position at shutdown", exc_info=True)

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
        loop = asyncio.get_running_loop()
        while not await self._run_sync(self._tracking.try_lead):
            self.leading = False
            await asyncio.sleep(self._idle_poll_s)  # another process relays; take over if it stops
        self._lead_checked_at = loop.time()
        saved, _ = await self._run_sync(self._tracking.load)
        self._saved, self._saved_at = saved, loop.time()
        # What this process saw acknowledged counts even if it was not saved (a retry after a failure).
        self.position = max(self.position, saved)
        self._store_ahead = True  # whatever was stored while it did not lead was not fed
        self.leading = True
        while True:
            now = loop.time()
            await self._save_if_due(now)
            if now - self._lead_checked_at >= self._idle_poll_s:
                if not await self._run_sync(self._tracking.try_lead):
                    self.leading = False
                    self._fed.clear()
                    self._fed_events = 0
                    return  # lost the lead (its connection died): start over
                self._lead_checked_at = now
            self._wake.clear()  # before looking: a feed or wake-up from now on ends the wait below
            if not self._backlog:
                # A batch costs round trips and system calls whatever its size: while events keep
                # coming, those stored within `linger_s` of the last batch go out together in the next.
                lingering = self._sent_at + self._linger_s - loop.time()
                if lingering > 0:
                    await asyncio.sleep(lingering)
            fed = self._take_fed()
            if fed is not None:
                last = fed[-1][0]
                self._backlog = len(fed) >= self._batch_size
                built = self._build(fed, self._origins.known) if len(fed) <= _ON_LOOP_MAX else None
                # large, or an origin must be read from the store: in the pool
                messages = built if built is not None else await self._run_sync(self._build_all, fed)
            elif self._fed or self._store_ahead or not self._fed_ever:  # (a gap in what was fed)
                messages, last, more = await self._run_sync(self._next_batch, self.position)
                self._store_ahead = self._backlog = more
            else:
                messages, last = [], self.position  # published all that was fed: nothing else is stored
            if last == self.position:
                if await self._idle(loop):
                    self._store_ahead = True  # a quiet poll interval: look at the store all the same
                continue
            self._sent_at = loop.time()
            await self._publish_all(js, messages)
            self.position = last
            if self._on_published is not None:
                self._on_published(last, len(messages))

    async def _idle(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Nothing to publish: waits for a wake-up, or the time to save the position, or at most the poll
        interval. True when that whole interval passed without a wake-up."""
        timeout = self._idle_poll_s
        if self.position > self._saved:
            timeout = min(timeout, max(0.0, self._saved_at + self._save_every_s - loop.time()))
        try:
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for loses a cancel that meets a wake-up
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            return timeout == self._idle_poll_s
        return False

    async def _save_if_due(self, now: float) -> None:
        """Saves the acknowledged position, at most every `save_every_s`."""
        position = self.position
        if position > self._saved and now - self._saved_at >= self._save_every_s:
            await self._run_sync(self._tracking.save, position, [], [])
            self._saved, self._saved_at = position, now

    def _take_fed(self) -> Batch | None:
        """The fed events that continue the relay's position (at most a batch); None when the next ones
        were not fed (they are read from the store)."""
        while self._fed and self._fed[0][1][-1][0] <= self.position:  # published already
            _, done = self._fed.popleft()
            self._fed_events -= len(done)
        taken: Batch = []
        last = self.position
        for after, batch in self._fed:
            if after > last:
                break  # something stored before these was not fed
            new = batch if batch[0][0] > last else [item for item in batch if item[0] > last]
            room = self._batch_size - len(taken)
            part = new if len(new) <= room else new[:room]
            taken = part if not taken else taken + part  # never changes the follower's lists
            last = taken[-1][0]
            if len(taken) >= self._batch_size:
                break
        return taken or None

    def _next_batch(self, after: int) -> tuple[list[Outgoing], int, bool]:
        """In the store's thread pool: the next events as messages, the position of the last one, and
        whether the store may hold more."""
        batch = self._read(after, self._batch_size)
        more = len(batch) >= self._batch_size
        return self._build_all(batch), batch[-1][0] if batch else after, more

    def _build_all(self, batch: Batch) -> list[Outgoing]:
        """In the store's thread pool: the messages of these events, reading origins it does not know."""
        return self._build(batch, self._origins.of) or []

    def _build(self, batch: Batch, origin: Callable[[Any], Origin | None]) -> list[Outgoing] | None:
        """The messages of these events (a work item, a metadata refresh after its event); None when
        `origin` does not know an event's origin."""
        messages = []
        for position, event in batch:
            known = origin(event)
            if known is None:
                return None
            messages.append(outgoing(self._subjects, position, event, known))
            item = derived_message(self._subjects, event, known)
            if item is not None:
                messages.append(item)
        return messages

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
        futures: list[asyncio.Future[None]] = []
        try:
            await self._acks.new_batch(js)
            for message in messages:
                futures.append(await self._acks.publish(message))
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
