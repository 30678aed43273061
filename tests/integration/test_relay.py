"""The relay (SPEC §5): every stored event reaches `LIBJOBS_EVENTS` once, in store order, whatever NATS does.

A real nats-server (started per test, never the developer's), a real store (SQLite and PostgreSQL), the
real `Service`; the stream is read back message by message.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from uuid import UUID, uuid4

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from contracts.nats import EVENTS_STREAM, RUNS_STREAM, EventEnvelope, JobRunRequested
from service.bootstrap import Service
from service.domain.jobs import ConfigDraft, CreateDraft, PatchDraft
from service.settings import Settings
from tests.integration.harness import PROVIDER, ctx, make_settings, running
from tests.support.nats import NatsServer

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None, nats_server: NatsServer) -> Settings:
    return make_settings(tmp_path, database_url, nats_urls=(nats_server.url,))


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield nc
    await nc.close()


async def stream_envelopes(nc: Client) -> list[tuple[str, EventEnvelope]]:
    """Every message of the events stream, in stream order: (subject, envelope)."""
    js = nc.jetstream()
    try:
        state = (await js.stream_info(EVENTS_STREAM)).state
    except NotFoundError:
        return []
    found = []
    for seq in range(state.first_seq, state.last_seq + 1):
        message = await js.get_msg(EVENTS_STREAM, seq)
        assert message.data is not None
        assert message.subject is not None
        assert message.headers is not None
        envelope = msgspec.json.decode(message.data, type=EventEnvelope)
        assert message.headers["Nats-Msg-Id"] == str(envelope.event_id)
        found.append((message.subject, envelope))
    return found


async def until(condition: Callable[[], bool], timeout_s: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(what())
        await asyncio.sleep(0.05)


async def until_relayed(
    service: Service, nc: Client, timeout_s: float = 20
) -> list[tuple[str, EventEnvelope]]:
    """Waits until the relay has published everything stored; returns the stream's messages."""
    stored = await service.run_sync(service.reader.max_position)
    relay = service.relay
    await until(
        lambda: relay.position >= stored,
        timeout_s,
        lambda: f"relay at {relay.position}, store at {stored}: {relay.last_error}",
    )
    return await stream_envelopes(nc)


def assert_exactly_once_in_store_order(messages: list[tuple[str, EventEnvelope]], stored: int) -> None:
    positions = [envelope.position for _, envelope in messages]
    assert positions == list(range(1, stored + 1))
    assert len({envelope.event_id for _, envelope in messages}) == stored


async def create_job(service: Service, library: UUID, cron: str = "0 4 * * *") -> UUID:
    draft = CreateDraft(cron_schedule=cron, config=ConfigDraft(provider=PROVIDER), enabled=True)
    saved = await service.run_sync(service.commands.create_job, library, draft, ctx())
    return saved.id


async def new_library(service: Service) -> UUID:
    library = uuid4()
    await service.run_sync(service.commands.upsert_library, library, "Comics", ctx())
    await service.follower.catch_up()
    return library


async def test_commands_become_envelopes_on_their_subjects_in_store_order(
    settings: Settings, client: Client
) -> None:
    async with running(settings) as service:
        library = await new_library(service)
        job = await create_job(service, library)
        await service.run_sync(
            service.commands.update_job, library, job, PatchDraft(cron_schedule="30 5 * * *"), ctx()
        )
        await service.run_sync(service.commands.update_job, library, job, PatchDraft(enabled=False), ctx())
        await service.run_sync(service.commands.delete_job, library, job, ctx(actor="key:ops"))
        messages = await until_relayed(service, client)

    assert_exactly_once_in_store_order(messages, len(messages))
    assert [envelope.type for _, envelope in messages] == [
        "LibraryRegistered",
        "JobCreated",
        "JobUpdated",
        "JobDisabled",
        "JobDeleted",
    ]
    assert messages[0][0] == f"libjobs.evt.library.{library}"
    job_messages = messages[1:]
    assert {subject for subject, _ in job_messages} == {f"libjobs.evt.job.{library}.{job}"}
    assert [envelope.version for _, envelope in job_messages] == [1, 2, 3, 4]
    assert {(envelope.job_id, envelope.library_id) for _, envelope in job_messages} == {(job, library)}
    assert job_messages[1][1].data["definition"]["cronSchedule"] == "30 5 * * *"
    assert job_messages[-1][1].actor == "key:ops"


async def test_an_outage_during_a_burst_loses_nothing_and_doubles_nothing(
    settings: Settings, client: Client, nats_server: NatsServer
) -> None:
    async with running(settings) as service:
        library = await new_library(service)
        await until_relayed(service, client)
        nats_server.stop()
        jobs = await asyncio.gather(*(create_job(service, library) for _ in range(60)))
        await asyncio.sleep(1.5)  # the relay keeps trying meanwhile
        assert service.relay.position == 1  # nothing counts as relayed while NATS is down
        for job in jobs[:20]:
            await service.run_sync(
                service.commands.update_job, library, job, PatchDraft(name="Renamed"), ctx()
            )
        nats_server.start()
        await client.flush(timeout=10)  # our reader is back too
        messages = await until_relayed(service, client, timeout_s=30)
        stored = await service.run_sync(service.reader.max_position)

    assert stored == 1 + 60 + 20
    assert_exactly_once_in_store_order(messages, stored)
    for job in jobs:
        versions = [e.version for s, e in messages if s == f"libjobs.evt.job.{library}.{job}"]
        assert versions == sorted(versions)


async def test_a_relay_that_lost_its_position_publishes_nothing_twice(
    tmp_path: Path, nats_server: NatsServer, client: Client
) -> None:
    settings = make_settings(tmp_path, None, nats_urls=(nats_server.url,))
    async with running(settings) as service:
        library = await new_library(service)
        for _ in range(5):
            await create_job(service, library)
        before = await until_relayed(service, client)
    # As if the relay had crashed after publishing but before recording its position.
    with sqlite3.connect(settings.data_dir / "relay.sqlite3") as db:
        db.execute("DELETE FROM tracking WHERE application_name = 'relay_v1'")
    async with running(settings) as service:
        await create_job(service, library)
        after = await until_relayed(service, client)
    assert_exactly_once_in_store_order(after, len(before) + 1)


async def test_the_relay_follows_writes_of_another_process(settings: Settings, client: Client) -> None:
    async with running(settings) as relaying, running(settings) as writer:
        library = await new_library(writer)
        await create_job(writer, library)
        stored = await writer.run_sync(writer.reader.max_position)
        relays = (relaying.relay, writer.relay)
        await until(lambda: any(r.position >= stored for r in relays), 10, lambda: "nothing was relayed")
        assert [r.leading for r in relays].count(True) == 1  # one relay leads; the other stands by
        messages = await stream_envelopes(client)
    assert_exactly_once_in_store_order(messages, stored)


async def test_a_run_request_becomes_one_work_item_on_the_runs_queue(
    settings: Settings, client: Client
) -> None:
    async with running(settings) as service:
        library = await new_library(service)
        job = await create_job(service, library)
        _, run_id = await service.run_sync(service.commands.run_now, library, job, ctx())
        await until_relayed(service, client)
    js = client.jetstream()
    info = await js.stream_info(RUNS_STREAM)
    assert info.state.messages == 1
    message = await js.get_msg(RUNS_STREAM, info.state.last_seq)
    assert message.subject == "libjobs.run.requested.metadata_refresh"
    assert message.headers is not None
    assert message.headers["Nats-Msg-Id"] == str(run_id)
    assert message.data is not None
    item = msgspec.json.decode(message.data, type=JobRunRequested)
    assert (item.run_id, item.job_id, item.library_id, item.trigger) == (run_id, job, library, "manual")
    assert item.config.provider == PROVIDER
