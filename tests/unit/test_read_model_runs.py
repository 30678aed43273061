"""Runs in the jobs read model (SPEC §2.3): `currentRunId`, `nextRunAt` moved on by claimed fires, and
`lastRun*` from recorded outcomes; computed from the events alone, so a replay gives the same bytes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from contracts.jobs import LibraryJobDto
from projections.readmodels import JobChange, ReadModels
from service.domain.jobs import (
    ConfigDraft,
    CreateDraft,
    LibraryJob,
    ProviderInfo,
    ValidationPolicy,
    validate_create,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
FIRE = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)  # "0 4 * * *" in UTC: the first fire after T0
DAY = timedelta(days=1)
LIBRARY = UUID("aaaaaaaa-0000-4000-8000-000000000001")
PROVIDERS = {"mangabaka": ProviderInfo(enabled=True, capabilities=frozenset({"series"}))}
STAMP: dict[str, Any] = {"actor": "scheduler", "request_id": None}


class Log:
    """Events numbered in save order, applied to the models as they are saved."""

    def __init__(self, models: ReadModels) -> None:
        self.models = models
        self.events: list[tuple[int, Any]] = []

    def save(self, job: LibraryJob) -> None:
        batch = [(len(self.events) + i, event) for i, event in enumerate(job.collect_events(), start=1)]
        self.events += batch
        self.models.apply(batch)


@pytest.fixture
def changes() -> list[JobChange]:
    return []


@pytest.fixture
def models(changes: list[JobChange]) -> ReadModels:
    return ReadModels(on_change=changes.append)


@pytest.fixture
def log(models: ReadModels) -> Log:
    return Log(models)


def new_job(log: Log, *, enabled: bool = True, timezone: str | None = None) -> LibraryJob:
    draft = CreateDraft(
        cron_schedule="0 4 * * *", config=ConfigDraft(provider="plugin:mangabaka"), timezone=timezone
    )
    definition, _ = validate_create(draft, ValidationPolicy(), PROVIDERS.get)
    job = LibraryJob.create(
        job_id=uuid4(), library_id=LIBRARY, definition=definition, enabled=enabled, at=T0, **STAMP
    )
    log.save(job)
    return job


def dto(models: ReadModels, job: LibraryJob) -> LibraryJobDto:
    found = models.job_json(LIBRARY, job.id)
    assert found is not None
    return msgspec.json.decode(found[0], type=LibraryJobDto)


def fire(log: Log, job: LibraryJob, instant: datetime, trigger: Any = "schedule") -> UUID | None:
    run_id = job.fire(instant, trigger, at=instant + timedelta(seconds=1), **STAMP)
    log.save(job)
    return run_id


def finish(
    log: Log, job: LibraryJob, run_id: UUID, status: Any = "success", finished_at: datetime = FIRE
) -> None:
    job.finish_run(
        run_id,
        status,
        message=f"{status} message",
        started_at=finished_at - timedelta(seconds=9),
        finished_at=finished_at,
        counts={"planned": 1},
        at=finished_at + timedelta(seconds=1),
        **STAMP,
    )
    log.save(job)


def test_a_requested_run_is_the_current_run_and_the_next_run_moves_past_its_fire(
    models: ReadModels, log: Log, changes: list[JobChange]
) -> None:
    job = new_job(log)
    before = dto(models, job)
    assert (before.next_run_at, before.current_run_id) == (FIRE, None)

    run_id = fire(log, job, FIRE)

    after = dto(models, job)
    assert (after.current_run_id, after.next_run_at) == (run_id, FIRE + DAY)
    # a run is not a change of the definition
    assert (after.version, after.updated_at, after.last_run_at) == (1, T0, None)
    assert (changes[-1].job_id, changes[-1].version) == (job.id, 1)  # live clients hear of it


def test_a_skipped_fire_moves_the_next_run_on_and_keeps_the_run_in_flight(
    models: ReadModels, log: Log
) -> None:
    job = new_job(log)
    run_id = fire(log, job, FIRE)
    assert fire(log, job, FIRE + DAY) is None  # skipped: overlap
    assert (dto(models, job).current_run_id, dto(models, job).next_run_at) == (run_id, FIRE + 2 * DAY)


def test_a_catch_up_moves_the_next_run_past_the_latest_missed_fire(models: ReadModels, log: Log) -> None:
    job = new_job(log)
    fire(log, job, FIRE + 3 * DAY, "catchup")
    assert dto(models, job).next_run_at == FIRE + 4 * DAY


def test_the_next_run_follows_the_jobs_time_zone(models: ReadModels, log: Log) -> None:
    job = new_job(log, timezone="Europe/Paris")  # 04:00 in Paris is 03:00 UTC in March
    paris_fire = FIRE - timedelta(hours=1)
    assert dto(models, job).next_run_at == paris_fire
    fire(log, job, paris_fire)
    assert dto(models, job).next_run_at == paris_fire + DAY


def test_a_manual_run_of_a_disabled_job_is_current_and_has_no_next_run(models: ReadModels, log: Log) -> None:
    job = new_job(log, enabled=False)
    run_id = uuid4()
    job.run_now(run_id, at=T0 + DAY, **STAMP)
    log.save(job)
    assert (dto(models, job).current_run_id, dto(models, job).next_run_at) == (run_id, None)


def test_the_outcome_of_the_run_in_flight_ends_it_and_is_the_last_run(models: ReadModels, log: Log) -> None:
    job = new_job(log)
    run_id = fire(log, job, FIRE)
    assert run_id is not None
    finish(log, job, run_id, "partial", finished_at=FIRE + timedelta(minutes=2))

    after = dto(models, job)
    assert after.current_run_id is None
    assert (after.last_run_at, after.last_run_status, after.last_run_message) == (
        FIRE + timedelta(minutes=2),
        "partial",
        "partial message",
    )
    assert (after.version, after.updated_at, after.next_run_at) == (1, T0, FIRE + DAY)


def test_an_outcome_recorded_late_does_not_replace_a_later_one(models: ReadModels, log: Log) -> None:
    job = new_job(log)
    finish(log, job, uuid4(), "success", finished_at=FIRE + DAY)
    finish(log, job, uuid4(), "failure", finished_at=FIRE)  # finished earlier, recorded later
    assert (dto(models, job).last_run_at, dto(models, job).last_run_status) == (FIRE + DAY, "success")


def test_a_cancelled_run_ends_the_run_in_flight_but_is_not_a_last_run(models: ReadModels, log: Log) -> None:
    job = new_job(log)
    first = fire(log, job, FIRE)
    assert first is not None
    finish(log, job, first, "success", finished_at=FIRE + timedelta(minutes=1))
    second = fire(log, job, FIRE + DAY)
    assert second is not None
    finish(log, job, second, "cancelled", finished_at=FIRE + DAY + timedelta(minutes=1))

    after = dto(models, job)
    assert after.current_run_id is None
    assert (after.last_run_at, after.last_run_status) == (FIRE + timedelta(minutes=1), "success")


def test_the_outcome_of_another_run_leaves_the_run_in_flight(models: ReadModels, log: Log) -> None:
    job = new_job(log)
    run_id = fire(log, job, FIRE)
    finish(log, job, uuid4())
    assert dto(models, job).current_run_id == run_id


def test_an_edit_computes_the_next_run_after_the_edit(models: ReadModels, log: Log) -> None:
    job = new_job(log)
    fire(log, job, FIRE)
    job.change(job.definition, False, at=FIRE + timedelta(hours=1), **STAMP)
    job.change(job.definition, True, at=FIRE + 3 * DAY + timedelta(hours=1), **STAMP)
    log.save(job)
    assert dto(models, job).next_run_at == FIRE + 4 * DAY


def test_a_replay_and_a_restore_give_the_same_bytes(models: ReadModels, log: Log) -> None:
    job = new_job(log)
    run_id = fire(log, job, FIRE)
    assert run_id is not None
    fire(log, job, FIRE + DAY)
    finish(log, job, run_id)
    fire(log, job, FIRE + 2 * DAY)

    replayed = ReadModels()
    replayed.apply(log.events)
    restored = ReadModels()
    restored.restore(*models.dump())

    live = models.job_json(LIBRARY, job.id)
    assert replayed.job_json(LIBRARY, job.id) == live == restored.job_json(LIBRARY, job.id)
    assert replayed.jobs_json(LIBRARY) == models.jobs_json(LIBRARY)


def test_the_schedule_query_names_the_zone_the_cron_fires_in(log: Log) -> None:
    models = ReadModels(default_timezone="America/New_York")
    log.models = models
    own = new_job(log, timezone="Europe/Paris")
    default = new_job(log)
    assert models.job_cron(LIBRARY, own.id) == ("0 4 * * *", "Europe/Paris")
    assert models.job_cron(LIBRARY, default.id) == ("0 4 * * *", "America/New_York")
    assert models.job_cron(uuid4(), own.id) is None  # another library's job
    assert models.job_cron(LIBRARY, uuid4()) is None
