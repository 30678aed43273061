"""Runs through the application on both stores (SPEC §2.6, §3.3): a fire is claimed exactly once however
many services race for it, run-now refuses a second run in flight, and an outcome is recorded once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from contracts.jobs import LibraryJobDto
from service.application import Fired, ItemRefresh, RunCounts
from service.bootstrap import Service
from service.domain.catalog import Series
from service.domain.errors import Conflict, NotFound
from service.domain.jobs import LibraryJob, fire_run_id
from service.domain.timetable import Fire
from service.domain.timezones import zone
from tests.integration.harness import ctx, new_job, new_library, race, series_state, stored, write

pytestmark = pytest.mark.integration

# Feb 29 only: no scheduler of these services fires these jobs meanwhile, whatever the date.
RARE_CRON = "0 0 29 2 *"
INSTANT = datetime(2028, 2, 29, 0, 0, tzinfo=UTC)
RACERS_PER_SERVICE = 2


def claims(svc: Service, job_id: UUID) -> list[Any]:
    """The job's stored claims of fires: RunRequested (with a fire instant) and FireSkipped events."""
    return [
        e
        for _, e in stored(svc)
        if e.originator_id == job_id
        and isinstance(e, LibraryJob.RunRequested | LibraryJob.FireSkipped)
        and e.scheduled_for is not None
    ]


def events_of(svc: Service, series_id: UUID) -> list[str]:
    aggregate_id = Series.aggregate_id(series_id)
    return [type(e).__name__ for _, e in stored(svc) if e.originator_id == aggregate_id]


def dto(svc: Service, library_id: UUID, job_id: UUID) -> LibraryJobDto:
    found = svc.models.job_json(library_id, job_id)
    assert found is not None
    return msgspec.json.decode(found[0], type=LibraryJobDto)


async def test_services_racing_for_a_fire_store_exactly_one_claim(pair: tuple[Service, Service]) -> None:
    one, other = pair
    library_id = await new_library(one)
    for attempt in range(5):
        job_id = await new_job(one, library_id, cron_schedule=RARE_CRON, enabled=True)
        await other.follower.wait_for(one.reader.max_position())
        instant = INSTANT + timedelta(days=attempt)
        racers = [
            partial(svc.commands.request_run, job_id, instant, "schedule", ctx(actor="scheduler"))
            for svc in (one, other)
            for _ in range(RACERS_PER_SERVICE)
        ]

        outcomes = await asyncio.to_thread(race, *racers)

        wins = [o for o in outcomes if isinstance(o, Fired)]
        assert len(wins) == 1, outcomes
        assert outcomes.count(None) == len(racers) - 1, outcomes  # the others found it claimed
        (claim,) = claims(one, job_id)
        assert isinstance(claim, LibraryJob.RunRequested)
        assert claim.scheduled_for == instant
        assert claim.run_id == wins[0].run_id == fire_run_id(job_id, instant)
        await one.follower.wait_for(wins[0].position)
        await other.follower.wait_for(wins[0].position)
        assert dto(one, library_id, job_id).current_run_id == claim.run_id
        assert one.models.job_json(library_id, job_id) == other.models.job_json(library_id, job_id)


async def test_services_racing_for_a_batch_of_fires_claim_each_exactly_once(
    pair: tuple[Service, Service],
) -> None:
    # Two schedulers with the same fires due: each claims them all in one transaction; the batch that
    # loses the race falls back to claiming one by one and finds them claimed.
    one, other = pair
    library_id = await new_library(one)
    jobs = [await new_job(one, library_id, cron_schedule=RARE_CRON, enabled=True) for _ in range(30)]
    await other.follower.wait_for(one.reader.max_position())
    fires = [Fire(job_id, INSTANT, "schedule") for job_id in jobs]
    racers = [
        partial(svc.commands.request_runs, fires, ctx(actor="scheduler"))
        for svc in (one, other)
        for _ in range(RACERS_PER_SERVICE)
    ]

    outcomes = await asyncio.to_thread(race, *racers)

    for index, job_id in enumerate(jobs):
        wins = [batch[index] for batch in outcomes if batch[index] is not None]
        assert len(wins) == 1
        (claim,) = claims(one, job_id)
        assert claim.run_id == fire_run_id(job_id, INSTANT)


async def test_a_fire_during_a_run_is_skipped_and_the_next_run_moves_on(service: Service) -> None:
    library_id = await new_library(service)
    job_id = await new_job(service, library_id, cron_schedule="0 4 * * *", enabled=True)
    paris = zone("Europe/Paris")
    first = datetime(2026, 3, 2, 4, 0, tzinfo=paris)

    fired = await write(service, service.commands.request_run, job_id, first, "schedule", ctx())
    skipped = await write(
        service, service.commands.request_run, job_id, first + timedelta(days=1), "schedule", ctx()
    )

    assert isinstance(fired, Fired)
    assert isinstance(skipped, Fired)
    assert fired.run_id == fire_run_id(job_id, first)
    assert skipped.run_id is None
    job = dto(service, library_id, job_id)
    assert job.current_run_id == fired.run_id
    assert job.next_run_at == datetime(2026, 3, 4, 3, 0, tzinfo=UTC)  # 04:00 in Paris, after the skip
    again = await service.run_sync(service.commands.request_run, job_id, first, "schedule", ctx())
    assert again is None


async def test_fires_of_disabled_deleted_or_unknown_jobs_are_nothing_to_do(service: Service) -> None:
    library_id = await new_library(service)
    disabled = await new_job(service, library_id, cron_schedule=RARE_CRON, enabled=False)
    deleted = await new_job(service, library_id, cron_schedule=RARE_CRON, enabled=True)
    await write(service, service.commands.delete_job, library_id, deleted, ctx())
    before = service.reader.max_position()

    for job_id in (disabled, deleted, uuid4()):
        fired = await service.run_sync(service.commands.request_run, job_id, INSTANT, "schedule", ctx())
        assert fired is None
    assert service.reader.max_position() == before


async def test_run_now_then_its_outcome_recorded_once(service: Service) -> None:
    library_id = await new_library(service)
    job_id = await new_job(service, library_id, cron_schedule=RARE_CRON, enabled=False)
    app = service.commands

    saved, run_id = await service.run_sync(app.run_now, library_id, job_id, ctx())
    await service.follower.wait_for(saved.position)
    assert dto(service, library_id, job_id).current_run_id == run_id
    with pytest.raises(Conflict, match="already in flight"):
        await service.run_sync(app.run_now, library_id, job_id, ctx())
    with pytest.raises(NotFound):
        await service.run_sync(app.run_now, uuid4(), job_id, ctx())  # another library's job

    started = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    record = partial(
        app.record_run,
        job_id,
        run_id,
        "success",
        "Refreshed 2 of 2 series (2 succeeded, 0 failed, 0 skipped)",
        started,
        started + timedelta(seconds=30),
        {"planned": 2, "done": 2, "succeeded": 2, "failed": 0, "skipped": 0},
        ctx(),
    )
    first, status = await service.run_sync(record)
    await service.follower.wait_for(first.position)
    again, status_again = await service.run_sync(record)

    assert first.position is not None
    assert again.position is None
    assert status == status_again == "success"
    finished = [e for _, e in stored(service) if isinstance(e, LibraryJob.RunFinished)]
    assert [e.run_id for e in finished] == [run_id]
    job = dto(service, library_id, job_id)
    assert (job.current_run_id, job.last_run_status, job.last_run_at, job.version) == (
        None,
        "success",
        started + timedelta(seconds=30),
        1,
    )
    saved, _ = await service.run_sync(app.run_now, library_id, job_id, ctx())  # no longer in flight
    assert saved.position is not None
    with pytest.raises(NotFound):
        await service.run_sync(
            partial(app.record_run, uuid4(), run_id, "success", None, started, started, {}, ctx())
        )


async def test_items_are_refreshed_at_the_version_the_run_knew_or_loaded_when_they_changed_meanwhile(
    service: Service,
) -> None:
    """`record_items` records a `Refreshed` for the version the run planned with, without loading the
    item; an item the library server changed or deleted since makes the store refuse that, and the items
    are then loaded: the change is kept under the refresh, the deleted item is left alone."""
    library_id = await new_library(service)
    app = service.commands
    kept, changed, deleted = uuid4(), uuid4(), uuid4()
    for series_id in (kept, changed, deleted):
        await write(service, app.upsert_series, library_id, series_id, series_state("S"), ctx())
    entries = {entry.id: entry for entry in service.models.catalog.series.entries(library_id)}
    assert {entries[i].version for i in (kept, changed, deleted)} == {1}
    job_id = await new_job(service, library_id, cron_schedule=RARE_CRON, enabled=True)
    _, run_id = await service.run_sync(app.run_now, library_id, job_id, ctx())
    await service.run_sync(partial(app.start_run, job_id, run_id, ctx(actor="executor"), max_attempts=3))

    def refreshed(series_id: UUID, rating: float) -> ItemRefresh:
        return ItemRefresh("series", series_id, "plugin:fixture", "ext", None,
                           {"rating": {"before": None, "after": rating}}, [],
                           version=entries[series_id].version)  # fmt: skip

    counts = RunCounts({"planned": 3, "done": 1, "succeeded": 1}, {}, 1)
    first = await service.run_sync(app.record_items, job_id, run_id, [refreshed(kept, 7.0)], counts, ctx())
    await service.follower.wait_for(first)
    assert events_of(service, kept) == ["Upserted", "Refreshed"]
    # the library server writes one item and deletes another while the run goes on
    await write(service, app.upsert_series, library_id, changed, series_state("S2", locks=["summary"]), ctx())
    await write(service, app.delete_series, library_id, deleted, ctx())
    counts = RunCounts({"planned": 3, "done": 3, "succeeded": 3}, {}, 3)
    items = [refreshed(changed, 8.0), refreshed(deleted, 9.0)]
    last = await service.run_sync(app.record_items, job_id, run_id, items, counts, ctx())
    await service.follower.wait_for(last)

    changed_series = app.repository.get(Series.aggregate_id(changed))
    assert (changed_series.version, changed_series.state["title"]) == (3, "S2")  # refreshed on top
    assert changed_series.state["locks"] == ["summary"]
    assert changed_series.state["metadata"]["rating"] == 8.0
    assert events_of(service, changed) == ["Upserted", "Changed", "Refreshed"]
    assert events_of(service, deleted) == ["Upserted", "Deleted"]
    progressed = [e for _, e in stored(service) if isinstance(e, LibraryJob.RunProgressed)]
    assert [e.progress["done"] for e in progressed] == [1, 3]
