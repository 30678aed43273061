"""Stored events as published and audited (SPEC §5, §8): type names, ids, subjects and self-contained data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
import pytest

from contracts.nats import CATALOG_EVENT_TYPES, JOB_EVENT_TYPES, EventEnvelope, Subjects
from projections.envelopes import Origin, event_type, origin_of, outgoing
from service.domain.catalog import Book, Library, Series
from service.domain.jobs import (
    ConfigDraft,
    CreateDraft,
    LibraryJob,
    ProviderInfo,
    ValidationPolicy,
    validate_create,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 27, 4, 0, 9, tzinfo=UTC)
LIBRARY = UUID("3f2c7b9e-5d41-4c1a-9b0e-6a8d2f4e1c01")
JOB = UUID("9a1d4e2b-7c3f-4e8a-b5d6-1f0e2c3b4a02")
SERIES = UUID("c5e8f1a2-4b6d-4f9e-8a3c-7d2b1e0f5a03")
STAMP: dict[str, Any] = {"actor": "key:web-ui", "request_id": "r-1"}
SUBJECTS = Subjects("libjobs")


def new_job() -> LibraryJob:
    providers = {"mangabaka": ProviderInfo(enabled=True, capabilities=frozenset({"series"}))}
    draft = CreateDraft(
        cron_schedule="0 4 * * *", config=ConfigDraft(provider="plugin:mangabaka"), enabled=True
    )
    definition, enabled = validate_create(draft, ValidationPolicy(), providers.get)
    return LibraryJob.create(
        job_id=JOB, library_id=LIBRARY, definition=definition, enabled=enabled, at=T0, **STAMP
    )


def decoded(payload: bytes) -> dict[str, Any]:
    msgspec.json.decode(payload, type=EventEnvelope)  # it is a valid envelope...
    return msgspec.json.decode(payload)  # ...and this is what consumers read


def all_event_classes() -> list[type[Any]]:
    found: list[type[Any]] = []
    for aggregate in (LibraryJob, Library, Series, Book):
        for value in vars(aggregate).values():
            if (
                isinstance(value, type)
                and issubclass(value, aggregate.Event)
                and value is not aggregate.Event
            ):
                found.append(value)
    return found


@pytest.mark.parametrize("cls", all_event_classes(), ids=lambda cls: cls.__qualname__)
def test_every_stored_event_has_a_published_type_name(cls: type[Any]) -> None:
    event = cls.__new__(cls)  # the name depends on the class only
    assert event_type(event) in JOB_EVENT_TYPES + CATALOG_EVENT_TYPES


def test_a_job_event_is_self_contained_on_its_jobs_subject() -> None:
    job = new_job()
    (created,) = job.collect_events()
    message = outgoing(SUBJECTS, 7, created, Origin(LIBRARY, JOB))
    assert message.subject == f"libjobs.evt.job.{LIBRARY}.{JOB}"
    body = decoded(message.payload)
    assert body["eventId"] == message.msg_id
    assert {k: body[k] for k in ("type", "jobId", "libraryId", "version", "position", "actor")} == {
        "type": "JobCreated",
        "jobId": str(JOB),
        "libraryId": str(LIBRARY),
        "version": 1,
        "position": 7,
        "actor": "key:web-ui",
    }
    assert body["occurredAt"] == "2026-11-27T04:00:09Z"
    data = body["data"]
    assert (data["enabled"], data["requestId"], data["jobVersion"]) == (True, "r-1", 1)
    assert data["definition"]["cronSchedule"] == "0 4 * * *"
    assert data["definition"]["config"]["type"] == "metadata_refresh"
    assert data["definition"]["config"]["provider"] == "plugin:mangabaka"
    assert "maxConcurrency" in data["definition"]["config"]


def test_the_same_stored_event_always_gets_the_same_id_and_another_event_another() -> None:
    job = new_job()
    (created,) = job.collect_events()
    job.change(job.definition, False, at=T0, **STAMP)
    (disabled,) = job.collect_events()
    first = outgoing(SUBJECTS, 1, created, Origin(LIBRARY, JOB))
    again = outgoing(SUBJECTS, 1, created, Origin(LIBRARY, JOB))
    other = outgoing(SUBJECTS, 2, disabled, Origin(LIBRARY, JOB))
    assert first.msg_id == again.msg_id != other.msg_id
    assert decoded(other.payload)["type"] == "JobDisabled"


def test_catalog_events_carry_the_library_servers_ids() -> None:
    series = Series.new(SERIES, LIBRARY, {"title": "Berserk", "metadata": {}}, at=T0, **STAMP)
    series.upsert(LIBRARY, {"title": "Berserk (2)", "metadata": {"genres": ["Dark"]}}, at=T0, **STAMP)
    upserted, changed = series.collect_events()
    origin = origin_of(upserted)
    assert origin == Origin(LIBRARY, SERIES)
    assert origin_of(changed) is None  # only the first event says: the relay remembers it
    message = outgoing(SUBJECTS, 3, changed, origin)
    assert message.subject == f"libjobs.evt.series.{LIBRARY}.{SERIES}"
    body = decoded(message.payload)
    assert (body["type"], body["aggregateType"], body["aggregateId"], body["jobId"]) == (
        "SeriesChanged",
        "series",
        str(SERIES),
        None,
    )
    assert body["data"]["state"] == {"title": "Berserk (2)", "metadata": {"genres": ["Dark"]}}


def test_library_events_are_on_the_librarys_subject() -> None:
    library = Library.register(LIBRARY, "Comics", at=T0, **STAMP)
    library.upsert("Manga", at=T0, **STAMP)
    registered, renamed = library.collect_events()
    origin = origin_of(registered)
    assert origin == Origin(LIBRARY, LIBRARY)
    message = outgoing(SUBJECTS, 4, renamed, origin)
    assert message.subject == f"libjobs.evt.library.{LIBRARY}"
    assert decoded(message.payload)["data"] == {"name": "Manga", "requestId": "r-1"}


def test_run_events_name_themselves_and_carry_the_config_in_the_wire_shape() -> None:
    job = new_job()
    job.collect_events()
    fire = datetime(2026, 11, 28, 4, 0, tzinfo=UTC)
    run_id = job.fire(fire, "schedule", at=fire, actor="scheduler", request_id=None)
    job.fire(fire + timedelta(days=1), "schedule", at=fire, actor="scheduler", request_id=None)
    job.finish_run(
        run_id,  # type: ignore[arg-type]
        "success",
        message="Refreshed 1 of 1 series (1 succeeded, 0 failed, 0 skipped)",
        started_at=fire,
        finished_at=fire + timedelta(seconds=9),
        counts={"planned": 1, "done": 1, "succeeded": 1, "failed": 0, "skipped": 0},
        at=fire + timedelta(seconds=9),
        actor="executor",
        request_id=None,
    )
    requested, skipped, finished = (
        decoded(outgoing(SUBJECTS, 10 + i, event, Origin(LIBRARY, JOB)).payload)
        for i, event in enumerate(job.collect_events())
    )

    assert (requested["type"], requested["jobId"], requested["actor"]) == (
        "RunRequested",
        str(JOB),
        "scheduler",
    )
    data = requested["data"]
    assert (data["runId"], data["trigger"], data["scheduledFor"], data["missedFires"]) == (
        str(run_id),
        "schedule",
        "2026-11-28T04:00:00Z",
        0,
    )
    assert data["requestedAt"] == "2026-11-28T04:00:00Z"
    assert data["config"]["type"] == "metadata_refresh"
    assert data["config"]["fieldGroups"] == ["ratings", "status", "counts"]
    assert skipped["type"] == "FireSkipped"
    assert skipped["data"] == {
        "requestId": None,
        "scheduledFor": "2026-11-29T04:00:00Z",
        "reason": "overlap",
        "runIdInFlight": str(run_id),
        "missedFires": 0,
    }
    assert finished["type"] == "RunFinished"
    assert (finished["data"]["status"], finished["data"]["finishedAt"]) == ("success", "2026-11-28T04:00:09Z")
    assert finished["data"]["counts"]["succeeded"] == 1
