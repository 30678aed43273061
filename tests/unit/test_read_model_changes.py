"""The read models' job-change listener (the source of `GET /events`): what it hears, and when not."""

from __future__ import annotations

import logging

import msgspec
import pytest

from contracts.jobs import LibraryJobDto
from projections.readmodels import JobChange, ReadModels
from tests.unit.test_read_models import (
    LIB_A,
    LIB_B,
    STAMP,
    EventLog,
    edit,
    job_bytes,
    minutes,
    new_job,
    register,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def heard() -> list[JobChange]:
    return []


@pytest.fixture
def models(heard: list[JobChange]) -> ReadModels:
    return ReadModels(on_change=heard.append)


@pytest.fixture
def log(models: ReadModels) -> EventLog:
    return EventLog(models)


def test_a_created_job_is_heard_with_its_dto_bytes(
    models: ReadModels, log: EventLog, heard: list[JobChange]
) -> None:
    job = new_job(log, library=LIB_B)

    assert heard == [JobChange(1, LIB_B, job.id, job_bytes(models, job), 1)]
    assert heard[0].json is models.jobs.rows[job.id].json  # the very bytes a GET serves


def test_one_command_is_one_change_with_the_state_after_all_its_events(
    models: ReadModels, log: EventLog, heard: list[JobChange]
) -> None:
    job = new_job(log)
    heard.clear()

    edit(log, job, at=minutes(1), name="Weekly", enabled=True)  # Updated + Enabled, saved together

    assert [(c.position, c.version) for c in heard] == [(3, 2)]
    dto = msgspec.json.decode(heard[0].json or b"", type=LibraryJobDto)
    assert (dto.name, dto.enabled, dto.version) == ("Weekly", True, 2)


def test_a_deleted_job_is_heard_without_bytes_but_with_its_library(
    log: EventLog, heard: list[JobChange]
) -> None:
    job = new_job(log, library=LIB_B)
    edit(log, job, at=minutes(1), name="Weekly")
    heard.clear()

    job.delete(at=minutes(2), **STAMP)
    log.save(job)

    assert heard == [JobChange(3, LIB_B, job.id, None, 2)]


def test_changes_of_one_batch_are_heard_in_store_order(
    models: ReadModels, log: EventLog, heard: list[JobChange]
) -> None:
    first, second = new_job(log), new_job(log, at=minutes(1))
    heard.clear()
    first.change(first.definition, True, at=minutes(2), **STAMP)
    second.change(second.definition, True, at=minutes(2), **STAMP)
    first.delete(at=minutes(3), **STAMP)

    log.save(first, second)  # positions: first Enabled 3, first Deleted 4, second Enabled 5

    assert [(c.position, c.job_id, c.json is None) for c in heard] == [
        (4, first.id, True),
        (5, second.id, False),
    ]


def test_catalog_events_and_events_already_applied_are_not_heard(
    models: ReadModels, log: EventLog, heard: list[JobChange]
) -> None:
    register(log, LIB_A)
    job = new_job(log)
    heard.clear()

    models.apply(log.everything)

    assert heard == []
    assert models.position() == 2
    assert models.job_json(LIB_A, job.id) is not None


def test_restoring_and_resetting_are_not_heard(
    models: ReadModels, log: EventLog, heard: list[JobChange]
) -> None:
    new_job(log)
    position, rows = models.dump()
    heard.clear()

    restored = ReadModels(on_change=heard.append)
    restored.restore(position, rows)
    restored.reset()
    models.reset()

    assert heard == []


def test_a_failing_listener_does_not_stop_the_models(
    models: ReadModels, log: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(change: JobChange) -> None:
        raise RuntimeError("listener broke")

    models.on_change = fail
    with caplog.at_level(logging.ERROR, "libjobs.projections"):
        first, second = new_job(log), new_job(log, library=LIB_B)

    assert models.position() == 2
    assert models.job_json(LIB_A, first.id) is not None
    assert models.job_json(LIB_B, second.id) is not None
    assert [r.getMessage() for r in caplog.records] == ["a job change listener failed"] * 2
