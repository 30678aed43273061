"""`LiveEvents`, the broadcaster behind `GET /events`: fan-out, filters, slow subscribers, shutdown."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from datetime import UTC, datetime
from uuid import UUID

import msgspec
import pytest

from contracts.jobs import LibraryJobDto, MetadataRefreshConfigDto
from contracts.live import DROPPED, JOB_CHANGED, RUN_CHANGED, JobChanged, LiveEvent, StreamDropped
from projections.readmodels import JobChange
from service.adapters.live import LiveEvents, Subscription
from service.ports import LiveMessage

pytestmark = pytest.mark.unit

LIB_A = UUID("aaaaaaaa-0000-4000-8000-000000000001")
LIB_B = UUID("bbbbbbbb-0000-4000-8000-000000000002")
JOB = UUID("cccccccc-0000-4000-8000-000000000003")


def publish(live: LiveEvents, n: int, kind: str = JOB_CHANGED, library_id: UUID = LIB_A) -> None:
    live.publish(kind, b'{"n":%d}' % n, id=str(n), library_id=library_id)


async def drain(subscription: Subscription) -> list[LiveMessage]:
    """What a subscription yields until its end, quiet-spell markers left out."""
    return [m async for m in subscription if m is not None]


def ids(messages: list[LiveMessage]) -> list[str | None]:
    return [m.id for m in messages]


async def test_every_subscriber_gets_every_message_in_order() -> None:
    live = LiveEvents()
    subscriptions = [live.subscribe() for _ in range(3)]
    for n in range(5):
        publish(live, n)
    live.close()

    for subscription in subscriptions:
        assert ids(await drain(subscription)) == ["0", "1", "2", "3", "4"]


async def test_filters_by_library_and_kind() -> None:
    live = LiveEvents()
    of_a = live.subscribe(library_id=LIB_A)
    runs = live.subscribe(kinds=frozenset({RUN_CHANGED}))
    runs_of_b = live.subscribe(library_id=LIB_B, kinds=frozenset({RUN_CHANGED}))
    publish(live, 1, JOB_CHANGED, LIB_A)
    publish(live, 2, RUN_CHANGED, LIB_A)
    publish(live, 3, JOB_CHANGED, LIB_B)
    publish(live, 4, RUN_CHANGED, LIB_B)
    live.close()

    assert ids(await drain(of_a)) == ["1", "2"]
    assert ids(await drain(runs)) == ["2", "4"]
    assert ids(await drain(runs_of_b)) == ["4"]


async def test_a_waiting_subscriber_wakes_for_a_message() -> None:
    live = LiveEvents()
    with live.subscribe() as subscription:
        waiting = asyncio.create_task(anext(subscription))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        publish(live, 7)
        message = await asyncio.wait_for(waiting, 1)

    assert message is not None
    assert (message.kind, message.data, message.id) == (JOB_CHANGED, b'{"n":7}', "7")


async def test_a_quiet_spell_yields_none_for_a_keep_alive() -> None:
    live = LiveEvents(idle_s=0.01)
    with live.subscribe() as subscription:
        assert await asyncio.wait_for(anext(subscription), 1) is None
        publish(live, 1)
        message = await anext(subscription)

    assert message is not None
    assert message.id == "1"


async def test_a_slow_subscriber_is_dropped_while_a_fast_one_gets_everything() -> None:
    live = LiveEvents(max_queued=10)
    slow = live.subscribe()
    fast = live.subscribe()
    received: list[LiveMessage] = []

    async def read_fast() -> None:
        async for message in fast:
            if message is not None:
                received.append(message)

    reader = asyncio.create_task(read_fast())
    for n in range(100):
        publish(live, n)
        await asyncio.sleep(0)  # the fast reader takes each message as it comes
    live.close()
    await asyncio.wait_for(reader, 1)

    assert ids(received) == [str(n) for n in range(100)]
    assert (live.dropped, live.subscribers) == (1, 0)
    (last,) = await drain(slow)  # its backlog is gone; only the notice is left
    assert (last.kind, last.id) == (DROPPED, None)
    notice = msgspec.json.decode(last.data, type=LiveEvent)
    assert isinstance(notice, StreamDropped)
    assert "10 messages behind" in notice.message


async def test_a_full_queue_holds_exactly_max_queued() -> None:
    live = LiveEvents(max_queued=3)
    subscription = live.subscribe()
    for n in range(3):
        publish(live, n)
    assert live.dropped == 0  # a full queue is not yet behind
    live.close()

    assert ids(await drain(subscription)) == ["0", "1", "2"]


async def test_memory_stays_bounded_with_a_subscriber_that_never_reads() -> None:
    live = LiveEvents(max_queued=100)
    live.subscribe()  # never read, never closed
    publish(live, 0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(5000):
            live.publish(JOB_CHANGED, bytes(1024) + str(n).encode(), id=str(n), library_id=LIB_A)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()

    assert grown < 200 * 1024  # without a bound: 5000 x 1 KiB held
    assert live.dropped == 1


async def test_close_ends_subscribers_and_any_made_later() -> None:
    live = LiveEvents()
    subscription = live.subscribe()
    publish(live, 1)
    waiting = asyncio.create_task(drain(live.subscribe()))
    await asyncio.sleep(0.01)

    live.close()

    assert await asyncio.wait_for(waiting, 1) == []
    assert ids(await drain(subscription)) == ["1"]  # what was queued before is still delivered
    assert await drain(live.subscribe()) == []
    assert live.subscribers == 0


async def test_leaving_with_unsubscribes() -> None:
    live = LiveEvents()
    with live.subscribe():
        assert live.subscribers == 1
    assert live.subscribers == 0
    publish(live, 1)  # nobody to tell


def dto_bytes() -> bytes:
    moment = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    config = MetadataRefreshConfigDto(
        provider="plugin:mangabaka",
        scope="series_only",
        field_groups=["ratings"],
        extra_fields=[],
        book_field_groups=[],
        book_extra_fields=[],
        existing_source_ids_only=True,
        skip_recently_synced_within_s=3600,
        max_concurrency=4,
    )
    dto = LibraryJobDto(
        id=JOB,
        library_id=LIB_B,
        name="Nightly",
        enabled=True,
        cron_schedule="0 4 * * *",
        timezone=None,
        config=config,
        last_run_at=None,
        last_run_status=None,
        last_run_message=None,
        created_at=moment,
        updated_at=moment,
        version=3,
        next_run_at=moment,
        current_run_id=None,
    )
    return msgspec.json.encode(dto)


async def test_a_job_change_is_a_job_changed_message_embedding_the_dto_bytes() -> None:
    live = LiveEvents()
    subscription = live.subscribe(library_id=LIB_B)
    raw = dto_bytes()
    live.job_changed(JobChange(42, LIB_B, JOB, raw, 3))
    live.job_changed(JobChange(43, LIB_B, JOB, None, 3))
    live.close()

    changed, deleted = await drain(subscription)

    assert (changed.kind, changed.id, changed.library_id) == (JOB_CHANGED, "42", LIB_B)
    assert raw in changed.data
    assert b"\n" not in changed.data
    message = msgspec.json.decode(changed.data, type=LiveEvent)
    assert message == JobChanged(
        position=42,
        library_id=LIB_B,
        job_id=JOB,
        deleted=False,
        job=msgspec.json.decode(raw, type=LibraryJobDto),
    )
    assert msgspec.json.decode(deleted.data, type=LiveEvent) == JobChanged(
        position=43, library_id=LIB_B, job_id=JOB, deleted=True, job=None
    )
