"""Runs on the `LibraryJob` aggregate (SPEC §2.6, §3.3, §3.4): claiming fires once, overlap, run-now and
recording outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4, uuid5
from zoneinfo import ZoneInfo

import pytest

from service.domain.errors import Conflict, NotFound, ValidationFailed
from service.domain.jobs import (
    RECENT_RUNS_KEPT,
    AlreadyClaimed,
    ConfigDraft,
    CreateDraft,
    FireRefused,
    LibraryJob,
    ProviderInfo,
    ValidationPolicy,
    fire_run_id,
    validate_create,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
FIRE = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)  # the first fire of "0 4 * * *" in UTC after T0
DAY = timedelta(days=1)
JOB = UUID("9a1d4e2b-7c3f-4e8a-b5d6-1f0e2c3b4a02")
PROVIDERS = {"mangabaka": ProviderInfo(enabled=True, capabilities=frozenset({"series"}))}
STAMP: dict[str, Any] = {"actor": "scheduler", "request_id": "r-1"}


def new_job(*, enabled: bool = True) -> LibraryJob:
    draft = CreateDraft(cron_schedule="0 4 * * *", config=ConfigDraft(provider="plugin:mangabaka"))
    definition, _ = validate_create(draft, ValidationPolicy(), PROVIDERS.get)
    job = LibraryJob.create(
        job_id=JOB, library_id=uuid4(), definition=definition, enabled=enabled, at=T0, **STAMP
    )
    job.collect_events()
    return job


def fire(job: LibraryJob, instant: datetime, trigger: Any = "schedule", missed: int = 0) -> UUID | None:
    return job.fire(instant, trigger, missed_fires=missed, at=instant + timedelta(seconds=1), **STAMP)


def finish(job: LibraryJob, run_id: UUID, status: Any = "success", at: datetime = FIRE) -> bool:
    return job.finish_run(
        run_id,
        status,
        message="Refreshed 1 of 1 series (1 succeeded, 0 failed, 0 skipped)",
        started_at=at,
        finished_at=at + timedelta(seconds=9),
        counts={"planned": 1, "done": 1, "succeeded": 1, "failed": 0, "skipped": 0},
        at=at + timedelta(seconds=10),
        **STAMP,
    )


def replayed(job: LibraryJob, events: list[Any]) -> LibraryJob:
    """The job rebuilt from its creation and `events` (what loading it from the store does)."""
    fresh = new_job()
    for event in events:
        event.mutate(fresh)
    return fresh


# --- claiming fires ---------------------------------------------------------------------------------


def test_a_fire_requests_a_run_whose_id_is_derived_from_the_job_and_the_instant() -> None:
    job = new_job()
    run_id = fire(job, FIRE)

    (event,) = job.collect_events()
    assert isinstance(event, LibraryJob.RunRequested)
    assert run_id == event.run_id == uuid5(JOB, "2026-03-02T04:00:00Z") == fire_run_id(JOB, FIRE)
    assert (event.trigger, event.scheduled_for, event.missed_fires) == ("schedule", FIRE, 0)
    assert event.requested_at == event.timestamp == FIRE + timedelta(seconds=1)
    assert event.config == job.definition.config.to_dict()  # the work item is self-contained
    assert (event.actor, event.request_id) == ("scheduler", "r-1")
    assert (job.current_run_id, job.last_fire, job.job_version) == (run_id, FIRE, 1)  # runs never bump it


def test_the_run_id_does_not_depend_on_how_the_instant_is_written() -> None:
    paris = FIRE.astimezone(ZoneInfo("Europe/Paris"))
    assert fire_run_id(JOB, paris) == fire_run_id(JOB, FIRE)
    assert fire_run_id(JOB, FIRE + timedelta(seconds=1)) != fire_run_id(JOB, FIRE)
    assert fire_run_id(uuid4(), FIRE) != fire_run_id(JOB, FIRE)
    with pytest.raises(ValueError, match="aware"):
        fire_run_id(JOB, FIRE.replace(tzinfo=None))


def test_an_instant_is_claimed_once_and_nothing_at_or_before_the_last_claim_is() -> None:
    job = new_job()
    run_id = fire(job, FIRE)
    assert run_id is not None
    finish(job, run_id)
    job.collect_events()

    for instant in (FIRE, FIRE.astimezone(ZoneInfo("Asia/Tokyo")), FIRE - DAY):
        with pytest.raises(AlreadyClaimed, match="2026-03-0"):
            fire(job, instant)
    assert job.collect_events() == []
    assert fire(job, FIRE + DAY) == fire_run_id(JOB, FIRE + DAY)


def test_a_catch_up_claims_the_latest_missed_fire_so_the_older_ones_are_refused() -> None:
    job = new_job()
    latest = FIRE + 2 * DAY
    run_id = fire(job, latest, "catchup", missed=2)

    (event,) = job.collect_events()
    assert isinstance(event, LibraryJob.RunRequested)
    assert (event.run_id, event.trigger, event.scheduled_for, event.missed_fires) == (
        run_id,
        "catchup",
        latest,
        2,
    )
    for older in (FIRE, FIRE + DAY, latest):  # a replica that saw the downtime differently
        with pytest.raises(AlreadyClaimed):
            fire(job, older)


def test_a_fire_while_a_run_is_in_flight_is_skipped_and_claimed() -> None:
    job = new_job()
    in_flight = fire(job, FIRE)
    job.collect_events()

    assert fire(job, FIRE + DAY) is None

    (event,) = job.collect_events()
    assert isinstance(event, LibraryJob.FireSkipped)
    assert (event.scheduled_for, event.reason, event.run_id_in_flight, event.missed_fires) == (
        FIRE + DAY,
        "overlap",
        in_flight,
        0,
    )
    assert (job.current_run_id, job.last_fire) == (in_flight, FIRE + DAY)  # never queued twice
    with pytest.raises(AlreadyClaimed):
        fire(job, FIRE + DAY)


def test_fires_too_old_to_run_are_recorded_as_skipped() -> None:
    job = new_job()
    assert fire(job, FIRE + DAY, "missed", missed=3) is None

    (event,) = job.collect_events()
    assert isinstance(event, LibraryJob.FireSkipped)
    assert (event.reason, event.run_id_in_flight, event.missed_fires) == ("missed", None, 3)
    assert (job.current_run_id, job.last_fire) == (None, FIRE + DAY)


def test_a_disabled_or_deleted_job_does_not_fire() -> None:
    disabled = new_job(enabled=False)
    with pytest.raises(FireRefused):
        fire(disabled, FIRE)
    deleted = new_job()
    deleted.delete(at=T0, **STAMP)
    deleted.collect_events()
    with pytest.raises(FireRefused):
        fire(deleted, FIRE)
    assert disabled.collect_events() == deleted.collect_events() == []


def test_a_fire_needs_an_aware_instant_and_a_count_that_is_not_negative() -> None:
    job = new_job()
    with pytest.raises(ValueError, match="aware"):
        fire(job, FIRE.replace(tzinfo=None))
    with pytest.raises(ValueError, match="missed_fires"):
        fire(job, FIRE, "catchup", missed=-1)


# --- run now ----------------------------------------------------------------------------------------


def test_run_now_requests_a_manual_run_also_of_a_disabled_job() -> None:
    job = new_job(enabled=False)
    run_id = uuid4()
    job.run_now(run_id, at=T0, actor="key:web-ui", request_id=None)

    (event,) = job.collect_events()
    assert isinstance(event, LibraryJob.RunRequested)
    assert (event.run_id, event.trigger, event.scheduled_for, event.requested_at) == (
        run_id,
        "manual",
        None,
        T0,
    )
    assert (job.current_run_id, job.last_fire, job.job_version) == (run_id, None, 1)


def test_run_now_while_a_run_is_in_flight_is_a_conflict() -> None:
    job = new_job()
    fire(job, FIRE)
    job.collect_events()
    with pytest.raises(Conflict) as refused:
        job.run_now(uuid4(), at=FIRE, **STAMP)
    assert refused.value.message == "A run of this job is already in flight"
    assert not isinstance(refused.value, AlreadyClaimed | FireRefused)
    assert job.collect_events() == []


def test_run_now_of_a_deleted_job_is_not_found() -> None:
    job = new_job()
    job.delete(at=T0, **STAMP)
    with pytest.raises(NotFound):
        job.run_now(uuid4(), at=T0, **STAMP)


def test_a_manual_run_does_not_claim_a_fire() -> None:
    job = new_job()
    manual = uuid4()
    job.run_now(manual, at=FIRE - timedelta(minutes=1), **STAMP)
    finish(job, manual)
    assert fire(job, FIRE) == fire_run_id(JOB, FIRE)


# --- recording outcomes -------------------------------------------------------------------------------


def test_recording_the_run_in_flight_ends_it() -> None:
    job = new_job()
    run_id = fire(job, FIRE)
    assert run_id is not None
    job.collect_events()

    assert finish(job, run_id, "partial") is True

    (event,) = job.collect_events()
    assert isinstance(event, LibraryJob.RunFinished)
    assert (event.run_id, event.status, event.started_at, event.finished_at) == (
        run_id,
        "partial",
        FIRE,
        FIRE + timedelta(seconds=9),
    )
    assert event.counts == {"planned": 1, "done": 1, "succeeded": 1, "failed": 0, "skipped": 0}
    assert (job.current_run_id, job.finished_runs[str(run_id)], job.job_version) == (None, "partial", 1)
    job.run_now(uuid4(), at=FIRE + DAY, **STAMP)  # no longer in flight


def test_recording_a_run_again_changes_nothing() -> None:
    job = new_job()
    run_id = fire(job, FIRE)
    assert run_id is not None
    finish(job, run_id, "success")
    job.collect_events()

    assert finish(job, run_id, "failure") is False
    assert job.collect_events() == []
    assert job.finished_runs[str(run_id)] == "success"


def test_a_run_executed_elsewhere_is_recorded_without_ending_the_run_in_flight() -> None:
    job = new_job()
    in_flight = fire(job, FIRE)
    job.collect_events()
    assert finish(job, uuid4()) is True
    assert job.current_run_id == in_flight


def test_the_memory_of_recorded_runs_is_bounded() -> None:
    job = new_job()
    runs = [uuid4() for _ in range(RECENT_RUNS_KEPT + 1)]
    for run_id in runs:
        finish(job, run_id)
    assert list(job.finished_runs) == [str(r) for r in runs[1:]]


def test_a_run_cannot_finish_before_it_started() -> None:
    job = new_job()
    with pytest.raises(ValidationFailed) as refused:
        job.finish_run(
            uuid4(),
            "success",
            message=None,
            started_at=FIRE,
            finished_at=FIRE - timedelta(seconds=1),
            counts={},
            at=FIRE,
            **STAMP,
        )
    assert refused.value.details == {"field": "finishedAt", "code": "before_start"}


def test_recording_a_run_of_a_deleted_job_is_not_found() -> None:
    job = new_job()
    job.delete(at=T0, **STAMP)
    with pytest.raises(NotFound):
        finish(job, uuid4())


# --- replay -------------------------------------------------------------------------------------------


def test_a_replayed_job_knows_its_claims_its_run_in_flight_and_its_recorded_runs() -> None:
    job = new_job()
    first = fire(job, FIRE)
    assert first is not None
    finish(job, first)
    second = fire(job, FIRE + DAY)
    fire(job, FIRE + 2 * DAY)  # skipped: the second is in flight
    events = job.collect_events()
    assert [type(e).__name__ for e in events] == [
        "RunRequested",
        "RunFinished",
        "RunRequested",
        "FireSkipped",
    ]

    again = replayed(job, events)

    assert (again.current_run_id, again.last_fire, again.finished_runs) == (
        second,
        FIRE + 2 * DAY,
        {str(first): "success"},
    )
    with pytest.raises(AlreadyClaimed):
        fire(again, FIRE + 2 * DAY)


def test_the_run_events_have_stable_topics() -> None:
    assert LibraryJob.RunRequested.TOPIC == "libjobs:LibraryJob.RunRequested"
    assert LibraryJob.FireSkipped.TOPIC == "libjobs:LibraryJob.FireSkipped"
    assert LibraryJob.RunFinished.TOPIC == "libjobs:LibraryJob.RunFinished"
