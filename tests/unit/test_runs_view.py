"""The runs read model (SPEC §2.6): `RunDto` bytes for each run event, pages newest first, retention, the
persisted rows and the `RunChange` announcements. Fed with events recorded by the real aggregate."""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from contracts.runs import ListRunsResponse, RunDto
from projections.catalog import BadCursor, encode_cursor
from projections.readmodels import JobChange, ReadModels, RunChange
from projections.runs import RUNS_KEPT_PER_JOB, RunsView
from service.domain.jobs import (
    ConfigDraft,
    CreateDraft,
    LibraryJob,
    ProviderInfo,
    ValidationPolicy,
    validate_create,
)
from tests.support.spec import RUN_KEYS

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
FIRE = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)  # "0 4 * * *" in UTC: the first fire after T0
LIBRARY = UUID("aaaaaaaa-0000-4000-8000-000000000001")
OTHER_LIBRARY = UUID("bbbbbbbb-0000-4000-8000-000000000002")
PROVIDERS = {"mangabaka": ProviderInfo(enabled=True, capabilities=frozenset({"series"}))}
STAMP: dict[str, Any] = {"actor": "executor", "request_id": None}
ZERO_PROGRESS = {"planned": 0, "done": 0, "succeeded": 0, "failed": 0, "skipped": 0}
ZERO_SKIPPED = {"no_external_id": 0, "recently_synced": 0, "no_match": 0, "locked_only": 0}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Log:
    """Events numbered in save order; each save is one batch applied to the models."""

    def __init__(self, models: ReadModels) -> None:
        self.models = models
        self.events: list[tuple[int, Any]] = []

    def save(self, *jobs: LibraryJob) -> list[tuple[int, Any]]:
        pending = [event for job in jobs for event in job.collect_events()]
        batch = [(len(self.events) + i, event) for i, event in enumerate(pending, start=1)]
        self.events += batch
        self.models.apply(batch)
        return batch


@pytest.fixture
def heard() -> list[JobChange | RunChange]:
    return []


@pytest.fixture
def models(heard: list[JobChange | RunChange]) -> ReadModels:
    return ReadModels(on_change=heard.append, on_run_change=heard.append)


@pytest.fixture
def log(models: ReadModels) -> Log:
    return Log(models)


def new_job(log: Log, *, library: UUID = LIBRARY, enabled: bool = True) -> LibraryJob:
    draft = CreateDraft(cron_schedule="0 4 * * *", config=ConfigDraft(provider="plugin:mangabaka"))
    definition, _ = validate_create(draft, ValidationPolicy(), PROVIDERS.get)
    job = LibraryJob.create(
        job_id=uuid4(), library_id=library, definition=definition, enabled=enabled, at=T0, **STAMP
    )
    log.save(job)
    return job


def run_now(log: Log, job: LibraryJob, when: datetime) -> UUID:
    run_id = uuid4()
    job.run_now(run_id, at=when, **STAMP)
    log.save(job)
    return run_id


def start(log: Log, job: LibraryJob, run_id: UUID, when: datetime) -> None:
    job.start_run(run_id, at=when, **STAMP)
    log.save(job)


def progress(log: Log, job: LibraryJob, run_id: UUID, when: datetime, **counts: int) -> None:
    done = counts.get("succeeded", 0) + counts.get("failed", 0)
    job.record_progress(
        run_id,
        {"planned": 10, "done": done, **counts},
        {"no_external_id": 2, "recently_synced": 1},
        fields_changed=7,
        at=when,
        **STAMP,
    )
    log.save(job)


def finish(
    log: Log,
    job: LibraryJob,
    run_id: UUID,
    started: datetime,
    finished: datetime,
    status: Any = "success",
    counts: dict[str, int] | None = None,
) -> None:
    recorded = job.finish_run(
        run_id,
        status,
        message=f"{status} message",
        started_at=started,
        finished_at=finished,
        counts=counts if counts is not None else {"planned": 10, "done": 10, "succeeded": 10},
        at=finished,
        **STAMP,
    )
    assert recorded
    log.save(job)


def run(models: ReadModels, job: LibraryJob, run_id: UUID) -> dict[str, Any]:
    raw = models.run_json(job.library_id, job.id, run_id)
    assert raw is not None
    body = json.loads(raw)
    assert list(body) == list(RUN_KEYS)  # every key, always, in order (nulls are not omitted)
    msgspec.json.decode(raw, type=RunDto)  # and it is a RunDto
    return body  # type: ignore[no-any-return]


def page(models: ReadModels, job: LibraryJob, cursor: str | None = None, limit: int = 50) -> ListRunsResponse:
    raw = models.runs_page_json(job.library_id, job.id, cursor, limit)
    assert raw is not None
    return msgspec.json.decode(raw, type=ListRunsResponse)


def all_ids(models: ReadModels, job: LibraryJob, limit: int) -> list[list[UUID]]:
    pages, cursor = [], None
    while True:
        current = page(models, job, cursor, limit)
        pages.append([r.id for r in current.runs])
        if current.next_cursor is None:
            return pages
        cursor = current.next_cursor


def runs_heard(heard: list[JobChange | RunChange]) -> list[RunChange]:
    return [change for change in heard if isinstance(change, RunChange)]


# --- each transition ------------------------------------------------------------------------------------


def test_run_now_queues_a_manual_run_with_every_key(models: ReadModels, log: Log) -> None:
    job = new_job(log, enabled=False)
    run_id = run_now(log, job, at(5))

    assert run(models, job, run_id) == {
        "id": str(run_id),
        "jobId": str(job.id),
        "libraryId": str(LIBRARY),
        "trigger": "manual",
        "scheduledFor": None,
        "requestedAt": "2026-03-01T10:00:05Z",
        "startedAt": None,
        "finishedAt": None,
        "status": "queued",
        "message": None,
        "progress": ZERO_PROGRESS,
        "skipped": ZERO_SKIPPED,
        "fieldsChanged": 0,
        "attempt": 0,
    }


def test_a_claimed_fire_queues_a_scheduled_run_and_a_catch_up_says_so(models: ReadModels, log: Log) -> None:
    job = new_job(log)
    scheduled = job.fire(FIRE, "schedule", at=FIRE + timedelta(seconds=1), **STAMP)
    log.save(job)
    assert scheduled is not None
    body = run(models, job, scheduled)
    assert (body["trigger"], body["scheduledFor"], body["requestedAt"], body["status"]) == (
        "schedule",
        "2026-03-02T04:00:00Z",
        "2026-03-02T04:00:01Z",
        "queued",
    )
    finish(log, job, scheduled, FIRE, FIRE + timedelta(minutes=1))

    catchup = job.fire(
        FIRE + timedelta(days=3), "catchup", missed_fires=2, at=FIRE + timedelta(days=3), **STAMP
    )
    log.save(job)
    assert catchup is not None
    assert (run(models, job, catchup)["trigger"], run(models, job, catchup)["scheduledFor"]) == (
        "catchup",
        "2026-03-05T04:00:00Z",
    )


def test_a_run_starts_progresses_and_finishes(models: ReadModels, log: Log) -> None:
    job = new_job(log)
    run_id = run_now(log, job, at(0))

    start(log, job, run_id, at(2))
    started = run(models, job, run_id)
    assert (started["status"], started["startedAt"], started["attempt"]) == ("running", iso(at(2)), 1)
    assert started["finishedAt"] is None

    progress(log, job, run_id, at(3), succeeded=3, failed=1)
    progressed = run(models, job, run_id)
    assert progressed["progress"] == {"planned": 10, "done": 4, "succeeded": 3, "failed": 1, "skipped": 0}
    assert progressed["skipped"] == {
        "no_external_id": 2,
        "recently_synced": 1,
        "no_match": 0,
        "locked_only": 0,
    }
    assert (progressed["fieldsChanged"], progressed["status"]) == (7, "running")

    counts = {"planned": 10, "done": 10, "succeeded": 9, "failed": 1, "skipped": 3}
    finish(log, job, run_id, at(2), at(9), "partial", counts)
    finished = run(models, job, run_id)
    assert finished == progressed | {
        "status": "partial",
        "message": "partial message",
        "finishedAt": iso(at(9)),
        "progress": counts,  # the final counts
    }
    # the job's own DTO agrees: no run in flight, the last run is this one
    job_body = json.loads(models.job_json(LIBRARY, job.id)[0])  # type: ignore[index]
    assert (job_body["currentRunId"], job_body["lastRunStatus"]) == (None, "partial")


def test_a_resumed_run_keeps_its_first_start_and_counts_its_attempts(models: ReadModels, log: Log) -> None:
    job = new_job(log)
    run_id = run_now(log, job, at(0))
    start(log, job, run_id, at(1))
    progress(log, job, run_id, at(2), succeeded=2)
    start(log, job, run_id, at(60))  # the executor crashed; another one resumes the run

    resumed = run(models, job, run_id)
    assert (resumed["status"], resumed["startedAt"], resumed["attempt"]) == ("running", iso(at(1)), 2)
    assert resumed["progress"]["succeeded"] == 2  # what the first attempt did stays

    start(log, job, run_id, at(120))
    finish(log, job, run_id, at(1), at(130))
    final = run(models, job, run_id)
    assert (final["startedAt"], final["finishedAt"], final["attempt"]) == (iso(at(1)), iso(at(130)), 3)


def test_a_run_recorded_without_a_request_is_a_manual_run_requested_when_it_started(
    models: ReadModels, log: Log
) -> None:
    job = new_job(log)
    run_id = uuid4()
    finish(log, job, run_id, at(100), at(160), "failure", {"planned": 4, "done": 4, "failed": 4})

    assert run(models, job, run_id) == {
        "id": str(run_id),
        "jobId": str(job.id),
        "libraryId": str(LIBRARY),
        "trigger": "manual",
        "scheduledFor": None,
        "requestedAt": iso(at(100)),
        "startedAt": iso(at(100)),
        "finishedAt": iso(at(160)),
        "status": "failure",
        "message": "failure message",
        "progress": {"planned": 4, "done": 4, "succeeded": 0, "failed": 4, "skipped": 0},
        "skipped": ZERO_SKIPPED,
        "fieldsChanged": 0,
        "attempt": 1,
    }


def test_a_queued_run_recorded_as_finished_counts_one_attempt(models: ReadModels, log: Log) -> None:
    """An executor outside libjobs (NATS `run.record`) may report a run it took from the work queue."""
    job = new_job(log)
    run_id = run_now(log, job, at(0))
    finish(log, job, run_id, at(4), at(8))
    body = run(models, job, run_id)
    assert (body["trigger"], body["requestedAt"], body["startedAt"], body["attempt"]) == (
        "manual",
        iso(at(0)),
        iso(at(4)),
        1,
    )


# --- deletion, other jobs and libraries -------------------------------------------------------------------


def test_a_deleted_jobs_runs_leave_the_read_model(
    models: ReadModels, log: Log, heard: list[JobChange | RunChange]
) -> None:
    job, other = new_job(log), new_job(log)
    done = run_now(log, job, at(0))
    finish(log, job, done, at(1), at(2))
    in_flight = run_now(log, job, at(3))
    kept = run_now(log, other, at(4))
    heard.clear()

    job.delete(at=at(5), **STAMP)
    log.save(job)

    assert models.run_json(LIBRARY, job.id, done) is None
    assert models.runs_page_json(LIBRARY, job.id, None, 50) is None
    assert job.id not in models.runs.by_job
    assert set(models.runs.rows) == {kept}
    assert [row.key for row in models.dump()[1] if row.kind == "run"] == [str(kept)]
    # the job's change first, then each of its runs, gone
    assert [type(c) for c in heard] == [JobChange, RunChange, RunChange]
    assert {(c.run_id, c.json) for c in runs_heard(heard)} == {(done, None), (in_flight, None)}
    # a run in flight that ends after the deletion (cancelled) does not come back
    job.finish_run(
        in_flight,
        "cancelled",
        message=None,
        started_at=at(3),
        finished_at=at(6),
        counts={},
        at=at(6),
        **STAMP,
    )
    log.save(job)
    assert models.run_json(LIBRARY, job.id, in_flight) is None
    assert in_flight not in models.runs.rows


def test_a_run_is_found_only_through_its_own_job_and_library(models: ReadModels, log: Log) -> None:
    job, other = new_job(log), new_job(log)
    elsewhere = new_job(log, library=OTHER_LIBRARY)
    run_id = run_now(log, job, at(0))

    assert models.run_json(LIBRARY, job.id, run_id) is not None
    assert models.run_json(LIBRARY, other.id, run_id) is None  # another job's run
    assert models.run_json(OTHER_LIBRARY, job.id, run_id) is None  # the job is not that library's
    assert models.run_json(LIBRARY, job.id, uuid4()) is None
    assert models.runs_page_json(OTHER_LIBRARY, job.id, None, 50) is None
    assert models.runs_page_json(LIBRARY, uuid4(), None, 50) is None  # no such job
    # a live job without runs has an empty page
    assert models.runs_page_json(OTHER_LIBRARY, elsewhere.id, None, 50) == b'{"runs":[],"nextCursor":null}'


def test_run_events_of_a_job_the_view_does_not_know_are_ignored() -> None:
    view = RunsView(library_of=lambda _job_id: None)
    job = LibraryJob.create(
        job_id=uuid4(),
        library_id=LIBRARY,
        definition=validate_create(
            CreateDraft(cron_schedule="0 4 * * *", config=ConfigDraft(provider="plugin:mangabaka")),
            ValidationPolicy(),
            PROVIDERS.get,
        )[0],
        enabled=True,
        at=T0,
        **STAMP,
    )
    job.run_now(uuid4(), at=at(1), **STAMP)
    job.finish_run(
        uuid4(), "success", message=None, started_at=at(2), finished_at=at(3), counts={}, at=at(3), **STAMP
    )
    assert [view.apply(event) for event in job.collect_events()] == [[], [], []]
    assert view.rows == {}


# --- retention --------------------------------------------------------------------------------------------


def test_only_the_latest_runs_of_a_job_are_kept_the_oldest_finished_go_first(
    models: ReadModels, log: Log, heard: list[JobChange | RunChange]
) -> None:
    job = new_job(log)
    queued = run_now(log, job, at(0))  # the oldest run, never finished: it is never dropped
    recorded = []
    for i in range(RUNS_KEPT_PER_JOB + 2):  # runs executed elsewhere, one a minute
        run_id = uuid4()
        finish(log, job, run_id, at(60 * (i + 1)), at(60 * (i + 1) + 30))
        recorded.append(run_id)

    ids = [r.id for r in page(models, job, limit=500).runs]
    assert len(ids) == RUNS_KEPT_PER_JOB
    assert ids == [*reversed(recorded[3:]), queued]  # newest first; the three oldest finished are gone
    for dropped in recorded[:3]:
        assert models.run_json(LIBRARY, job.id, dropped) is None
    assert len(models.runs.rows) == RUNS_KEPT_PER_JOB
    # each drop was announced (null), in the batch of the run that made room for it
    last = runs_heard(heard)[-2:]
    assert [(c.run_id, c.json is None) for c in last] == [(recorded[-1], False), (recorded[2], True)]
    # and the persisted rows lose it too
    _, upserts, deletes = models.take_changes()
    assert ("run", str(recorded[0])) in deletes
    assert str(queued) in {row.key for row in upserts if row.kind == "run"}


def test_a_run_recorded_late_older_than_every_kept_run_is_dropped_at_once(
    models: ReadModels, log: Log
) -> None:
    job = new_job(log)
    for i in range(RUNS_KEPT_PER_JOB):
        finish(log, job, uuid4(), at(3600 + 60 * i), at(3600 + 60 * i + 30))
    before = page(models, job, limit=500)

    finish(log, job, (late := uuid4()), at(10), at(20))  # started before all of them

    assert models.run_json(LIBRARY, job.id, late) is None
    assert page(models, job, limit=500) == before


# --- pages ------------------------------------------------------------------------------------------------


def test_pages_go_newest_first_and_end_with_a_null_cursor(models: ReadModels, log: Log) -> None:
    job = new_job(log)
    ids = []
    for i in range(7):
        run_id = run_now(log, job, at(10 * i))
        finish(log, job, run_id, at(10 * i + 1), at(10 * i + 2))
        ids.append(run_id)
    newest_first = list(reversed(ids))

    assert all_ids(models, job, 3) == [newest_first[0:3], newest_first[3:6], newest_first[6:]]
    assert all_ids(models, job, 7) == [newest_first]  # exactly one page: no cursor to an empty one
    assert all_ids(models, job, 500) == [newest_first]
    assert page(models, job, limit=50).next_cursor is None
    # a cursor stays valid while runs are added: the next page goes on from where the first stopped
    first = page(models, job, limit=2)
    newer = run_now(log, job, at(1000))
    assert first.next_cursor is not None
    assert [r.id for r in page(models, job, first.next_cursor, 2).runs] == newest_first[2:4]
    assert page(models, job, limit=1).runs[0].id == newer


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "!!!",
        base64.urlsafe_b64encode(b'["not a time","x"]').decode(),
        encode_cursor(("2026-03-01T10:00:00.000000Z", "not-a-uuid")),
        encode_cursor(("Berserk", str(UUID(int=1)))),  # a series cursor
    ],
)
def test_a_cursor_this_service_did_not_hand_out_is_a_bad_cursor(
    models: ReadModels, log: Log, cursor: str
) -> None:
    job = new_job(log)
    run_now(log, job, at(0))
    with pytest.raises(BadCursor) as raised:
        models.runs_page_json(LIBRARY, job.id, cursor, 10)
    assert (raised.value.field, raised.value.code) == ("cursor", "invalid_cursor")


# --- persistence ------------------------------------------------------------------------------------------


def build_history(log: Log) -> tuple[LibraryJob, LibraryJob, list[UUID]]:
    job, other = new_job(log), new_job(log, library=OTHER_LIBRARY)
    ids = []
    for i in range(4):
        run_id = run_now(log, job, at(100 * i))
        start(log, job, run_id, at(100 * i + 1))
        progress(log, job, run_id, at(100 * i + 2), succeeded=1)
        finish(log, job, run_id, at(100 * i + 1), at(100 * i + 5))
        ids.append(run_id)
    ids.append(run_now(log, job, at(1000)))  # queued
    ids.append(run_now(log, other, at(1001)))
    start(log, other, ids[-1], at(1002))
    return job, other, ids


def test_restored_rows_serve_the_same_bytes_and_go_on_like_a_replay(models: ReadModels, log: Log) -> None:
    job, other, ids = build_history(log)
    position, rows = models.dump()
    assert sorted(r.key for r in rows if r.kind == "run") == sorted(map(str, ids))

    restored = ReadModels()
    restored.restore(position, reversed(rows))  # the store returns rows in no particular order

    assert sorted(restored.dump()[1], key=repr) == sorted(rows, key=repr)  # the same payload bytes
    for limit in (1, 2, 50):
        assert all_ids(restored, job, limit) == all_ids(models, job, limit)
    assert restored.runs_page_json(LIBRARY, job.id, None, 50) == models.runs_page_json(
        LIBRARY, job.id, None, 50
    )
    for run_id in ids[:-1]:
        assert restored.run_json(LIBRARY, job.id, run_id) == models.run_json(LIBRARY, job.id, run_id)
    assert restored.run_json(OTHER_LIBRARY, other.id, ids[-1]) == models.run_json(
        OTHER_LIBRARY, other.id, ids[-1]
    )

    # later events give the same bytes on the restored models as on the ones that saw everything
    start(log, job, ids[4], at(2000))
    finish(log, other, ids[-1], at(1002), at(2001))
    later = log.events[position:]
    restored.apply(later)
    replayed = ReadModels()
    replayed.apply(log.events)
    for target in (restored, replayed):
        assert target.run_json(LIBRARY, job.id, ids[4]) == models.run_json(LIBRARY, job.id, ids[4])
        assert target.run_json(OTHER_LIBRARY, other.id, ids[-1]) == models.run_json(
            OTHER_LIBRARY, other.id, ids[-1]
        )
        assert target.runs_page_json(LIBRARY, job.id, None, 50) == models.runs_page_json(
            LIBRARY, job.id, None, 50
        )
    assert sorted(replayed.dump()[1], key=repr) == sorted(models.dump()[1], key=repr)


def test_changed_runs_are_taken_for_persistence(models: ReadModels, log: Log) -> None:
    job = new_job(log)
    models.take_changes()
    run_id = run_now(log, job, at(0))

    position, upserts, deletes = models.take_changes()

    run_rows = [row for row in upserts if row.kind == "run"]
    assert [(r.key, r.library_id) for r in run_rows] == [(str(run_id), str(LIBRARY))]
    assert run_rows[0].payload == models.run_json(LIBRARY, job.id, run_id)
    assert (position, deletes) == (len(log.events), [])


# --- announcements ----------------------------------------------------------------------------------------


def test_each_run_is_announced_once_per_batch_after_the_job_changes_in_store_order(
    models: ReadModels, log: Log, heard: list[JobChange | RunChange]
) -> None:
    first, second = new_job(log), new_job(log)
    run_a = run_now(log, first, at(0))
    start(log, first, run_a, at(1))
    heard.clear()

    # one batch: the second job's request, then three events of the first job's run
    run_b = uuid4()
    second.run_now(run_b, at=at(2), **STAMP)
    first.record_progress(run_a, {"planned": 2, "done": 1, "succeeded": 1}, {}, 3, at=at(3), **STAMP)
    first.record_progress(run_a, {"planned": 2, "done": 2, "succeeded": 2}, {}, 5, at=at(4), **STAMP)
    first.finish_run(
        run_a,
        "success",
        message="ok",
        started_at=at(1),
        finished_at=at(5),
        counts={"planned": 2},
        at=at(5),
        **STAMP,
    )
    batch = log.save(second, first)

    assert [type(c) for c in heard] == [JobChange, JobChange, RunChange, RunChange]
    run_changes = runs_heard(heard)
    assert [(c.run_id, c.job_id, c.library_id) for c in run_changes] == [
        (run_b, second.id, LIBRARY),
        (run_a, first.id, LIBRARY),
    ]
    assert [c.position for c in run_changes] == [batch[0][0], batch[-1][0]]  # its last event's position
    assert run_changes[1].json == models.run_json(LIBRARY, first.id, run_a)  # the state after the batch
    assert json.loads(run_changes[1].json or b"")["status"] == "success"


def test_a_failing_run_listener_is_logged_and_the_models_go_on(
    log: Log, models: ReadModels, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(change: RunChange) -> None:
        raise RuntimeError("listener bug")

    models.on_run_change = broken
    job = new_job(log)
    with caplog.at_level(logging.ERROR, logger="libjobs.projections"):
        first = run_now(log, job, at(0))

    assert "a run change listener failed" in caplog.text
    assert models.run_json(LIBRARY, job.id, first) is not None
    assert models.position() == len(log.events)


def test_without_a_run_listener_nothing_is_announced_and_runs_are_kept(log: Log, models: ReadModels) -> None:
    models.on_run_change = None
    job = new_job(log)
    run_id = run_now(log, job, at(0))
    assert models.run_json(LIBRARY, job.id, run_id) is not None
