"""The relay fed by the follower: while it is caught up it publishes the events the read models applied,
without reading them back; a gap in what it was fed is read from the store; its position is saved after
the acks, at most every `save_every_s` and when it stops; a JetStream error is never taken for an ack.

Real pieces: a SQLite event store written through `LibraryJobs`, the relay's SQLite tracking, a
nats-server per test (the same as `Service` uses, without the rest of it)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.js.api import DiscardPolicy, StreamConfig

from contracts.nats import EVENTS_STREAM, EventEnvelope, Subjects
from projections.sqlview import RELAY_NAME, SqliteViewStore
from service.adapters.follower import Batch
from service.adapters.nats.relay import Relay
from service.adapters.nats.streams import StreamSettings, ensure_streams
from service.adapters.store import StoreReader, store_env
from service.application import LibraryJobs
from service.domain.catalog import Library
from service.domain.jobs import (
    ConfigDraft,
    CreateDraft,
    LibraryJob,
    ProviderInfo,
    ValidationPolicy,
    validate_create,
)
from service.ports import LibraryContents
from tests.support.nats import NatsServer

pytestmark = pytest.mark.integration

SUBJECTS = Subjects()


def _provider(_: str) -> ProviderInfo:
    return ProviderInfo(enabled=True, capabilities=frozenset({"series", "book"}))


@dataclass
class Store:
    """An event store; `write` stores new jobs and returns their events as the follower would feed them."""

    app: LibraryJobs
    reader: StoreReader
    library_id: uuid.UUID = field(default_factory=uuid.uuid4)
    reads: list[int] = field(default_factory=list)  # `after` of each read of the store

    def read(self, after: int, limit: int) -> Batch:
        self.reads.append(after)
        return self.reader.read(after, limit)

    def write_library(self) -> Batch:
        library = Library.register(
            self.library_id, "Comics", at=datetime.now(UTC), actor="test", request_id=None
        )
        return self._saved(library)

    def write_jobs(self, count: int) -> Batch:
        draft = CreateDraft(cron_schedule="0 4 * * *", config=ConfigDraft(provider="plugin:test"))
        definition, enabled = validate_create(draft, ValidationPolicy(), _provider)
        jobs = [
            LibraryJob.create(
                job_id=uuid.uuid4(),
                library_id=self.library_id,
                definition=definition,
                enabled=enabled,
                at=datetime.now(UTC),
                actor="test",
                request_id=None,
            )
            for _ in range(count)
        ]
        return self._saved(*jobs)

    def _saved(self, *aggregates: Any) -> Batch:
        return [(r.notification.id, r.domain_event) for r in self.app.save(*aggregates)]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    env = store_env(data_dir=tmp_path / "data", database_url=None, pool_size=4, lock_timeout_s=5)
    app = LibraryJobs(env, providers=_provider, library_contents=lambda _: LibraryContents((), (), ()))
    return Store(app, StoreReader(app))


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    await ensure_streams(nc.jetstream(), SUBJECTS, StreamSettings())
    yield nc
    await nc.close()


class Relaying:
    """A started relay and what it reported."""

    def __init__(self, store: Store, tracking: SqliteViewStore, **options: Any) -> None:
        self.pool = ThreadPoolExecutor(4)
        self.published: list[tuple[int, int]] = []
        self.tracking = tracking
        self.relay = Relay(
            read=store.read,
            first_event=store.reader.first_event,
            tracking=tracking,
            subjects=SUBJECTS,
            run_sync=self.run_sync,
            on_published=lambda position, count: self.published.append((position, count)),
            **options,
        )

    def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def until_position(self, position: int, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while self.relay.position < position:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"relay at {self.relay.position}, not {position}: {self.relay.last_error}"
                )
            await asyncio.sleep(0.01)

    async def until_leading(self) -> None:
        deadline = time.monotonic() + 10
        while not self.relay.leading:
            assert time.monotonic() < deadline, "the relay did not take the lead"
            await asyncio.sleep(0.01)

    def saved(self) -> int:
        return self.tracking.load()[0]

    async def stop(self) -> None:
        await self.relay.stop()
        self.pool.shutdown()


@pytest.fixture
async def relaying(store: Store, client: Client, tmp_path: Path) -> AsyncIterator[Relaying]:
    relaying = Relaying(store, SqliteViewStore(tmp_path / "relay.sqlite3", RELAY_NAME), save_every_s=0.05)
    relaying.relay.start(client.jetstream())
    await relaying.until_leading()
    yield relaying
    await relaying.stop()
    relaying.tracking.close()


async def stream_positions(nc: Client) -> list[int]:
    js = nc.jetstream()
    state = (await js.stream_info(EVENTS_STREAM)).state
    positions = []
    for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
        message = await js.get_msg(EVENTS_STREAM, seq)
        assert message.data is not None
        positions.append(msgspec.json.decode(message.data, type=EventEnvelope).position)
    return positions


async def test_fed_events_are_published_without_reading_the_store(
    store: Store, client: Client, tmp_path: Path
) -> None:
    relaying = Relaying(store, SqliteViewStore(tmp_path / "relay.sqlite3", RELAY_NAME), idle_poll_s=30)
    relaying.relay.start(client.jetstream())
    try:
        first = store.write_library() + store.write_jobs(3)
        await relaying.until_position(first[-1][0])  # it started behind: it read the store
        after = relaying.relay.position
        batch = store.write_jobs(1)
        relaying.relay.feed(after, batch)  # fed from now on (until fed, it reads the store when woken)
        await relaying.until_position(batch[-1][0])
        reads = len(store.reads)

        for count in (1, 5, 2):  # as the follower applies them: contiguous, in store order
            after = relaying.relay.position
            batch = store.write_jobs(count)
            relaying.relay.feed(after, batch)
            relaying.relay.wake()  # as the follower's `on_advance` does too
            await relaying.until_position(batch[-1][0])

        assert len(store.reads) == reads
        assert await stream_positions(client) == list(range(1, 14))
    finally:
        await relaying.stop()
        relaying.tracking.close()


async def test_a_gap_in_what_was_fed_is_read_from_the_store(
    store: Store, relaying: Relaying, client: Client
) -> None:
    store.write_library()
    await relaying.until_position(1)
    not_fed = store.write_jobs(2)  # applied before the relay listened, say
    fed = store.write_jobs(3)
    relaying.relay.feed(not_fed[-1][0], fed)
    await relaying.until_position(fed[-1][0])
    assert 1 in store.reads  # it read what came after its position
    assert await stream_positions(client) == [1, 2, 3, 4, 5, 6]


async def test_events_fed_twice_or_already_published_are_published_once(
    store: Store, relaying: Relaying, client: Client
) -> None:
    batch = store.write_library() + store.write_jobs(4)
    await relaying.until_position(batch[-1][0])
    relaying.relay.feed(0, batch)  # all published already
    more = store.write_jobs(2)
    relaying.relay.feed(batch[-2][0], [batch[-1], *more])  # overlaps the position
    await relaying.until_position(more[-1][0])
    assert await stream_positions(client) == list(range(1, 8))


async def test_while_quiet_it_still_looks_at_the_store(store: Store, client: Client, tmp_path: Path) -> None:
    """Fed once, it trusts the feed; a quiet poll interval later it reads the store all the same (events
    the follower never handed over are not stranded)."""
    relaying = Relaying(store, SqliteViewStore(tmp_path / "relay.sqlite3", RELAY_NAME), idle_poll_s=0.2)
    relaying.relay.start(client.jetstream())
    try:
        batch = store.write_library()
        await relaying.until_position(1)
        relaying.relay.feed(0, batch)
        hidden = store.write_jobs(2)  # stored, never fed
        await relaying.until_position(hidden[-1][0], timeout_s=5)
    finally:
        await relaying.stop()
        relaying.tracking.close()


async def test_the_position_is_saved_after_the_acks_at_most_every_interval_and_at_stop(
    store: Store, client: Client, tmp_path: Path
) -> None:
    tracking = SqliteViewStore(tmp_path / "relay.sqlite3", RELAY_NAME)
    relaying = Relaying(store, tracking, save_every_s=60)
    relaying.relay.start(client.jetstream())
    await relaying.until_leading()
    first = store.write_library() + store.write_jobs(2)
    await relaying.until_position(3)
    await asyncio.sleep(0.1)
    saved_early = relaying.saved()
    after = relaying.relay.position
    more = store.write_jobs(3)
    relaying.relay.feed(after, more)
    await relaying.until_position(6)
    saved_later = relaying.saved()
    await relaying.stop()
    assert saved_early == saved_later == 0  # not yet: at most every 60 s
    assert relaying.saved() == 6  # at stop, what was acknowledged
    assert [p for p, _ in relaying.published][-1] == 6
    assert first[-1][0] == 3
    tracking.close()


async def test_a_position_saved_often_follows_the_acks(store: Store, relaying: Relaying) -> None:
    batch = store.write_library() + store.write_jobs(5)
    await relaying.until_position(batch[-1][0])
    deadline = time.monotonic() + 5
    while relaying.saved() < batch[-1][0]:  # every 50 ms here
        assert time.monotonic() < deadline, f"saved {relaying.saved()}"
        await asyncio.sleep(0.02)


async def test_a_jetstream_error_is_not_taken_for_an_ack(
    store: Store, client: Client, tmp_path: Path
) -> None:
    """The stream refuses a message (full, new ones discarded): the relay's position stays before it and
    the relay says why; once there is room again, it publishes the rest, each message once."""
    js = client.jetstream()
    config = (await js.stream_info(EVENTS_STREAM)).config
    await js.delete_stream(EVENTS_STREAM)
    limited = StreamConfig(
        name=EVENTS_STREAM, subjects=config.subjects, max_msgs=2, discard=DiscardPolicy.NEW
    )
    await js.add_stream(limited)
    relaying = Relaying(store, SqliteViewStore(tmp_path / "relay.sqlite3", RELAY_NAME), ack_timeout_s=2)
    relaying.relay.start(js)
    try:
        store.write_library()
        store.write_jobs(3)
        deadline = time.monotonic() + 10
        while relaying.relay.last_error is None:
            assert time.monotonic() < deadline, "the relay did not notice the refusal"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert relaying.relay.position < 3  # the batch is not done while its third message is refused
        assert "maximum messages" in relaying.relay.last_error
        await js.update_stream(StreamConfig(name=EVENTS_STREAM, subjects=config.subjects, max_msgs=-1))
        await relaying.until_position(4, timeout_s=15)
        assert await stream_positions(client) == [1, 2, 3, 4]
    finally:
        await relaying.stop()
        relaying.tracking.close()


async def test_no_stream_for_the_subjects_is_not_taken_for_an_ack(
    store: Store, client: Client, tmp_path: Path
) -> None:
    js = client.jetstream()
    await js.delete_stream(EVENTS_STREAM)
    relaying = Relaying(store, SqliteViewStore(tmp_path / "relay.sqlite3", RELAY_NAME), ack_timeout_s=2)
    relaying.relay.start(js)
    try:
        store.write_library()
        await asyncio.sleep(0.5)
        assert relaying.relay.position == 0
        assert relaying.relay.last_error is not None
        await ensure_streams(js, SUBJECTS, StreamSettings())
        await relaying.until_position(1, timeout_s=15)
        assert await stream_positions(client) == [1]
    finally:
        await relaying.stop()
        relaying.tracking.close()
