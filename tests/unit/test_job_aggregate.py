"""The `LibraryJob` aggregate (what it records) and the stored topics of every event class."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from eventsourcing.domain import Aggregate, CanMutateAggregate
from eventsourcing.utils import resolve_topic

from service.domain.catalog import Book, Library, Series
from service.domain.jobs import (
    ConfigDraft,
    CreateDraft,
    JobDefinition,
    LibraryJob,
    ProviderInfo,
    ValidationPolicy,
    validate_create,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
LIBRARY = UUID("00000000-0000-4000-8000-00000000000a")
PROVIDERS = {"mangabaka": ProviderInfo(enabled=True, capabilities=frozenset({"series"}))}


def definition(**overrides: object) -> JobDefinition:
    d, _ = validate_create(
        CreateDraft(
            cron_schedule="0 4 * * *", config=ConfigDraft(provider="plugin:mangabaka"), name="Nightly"
        ),
        ValidationPolicy(),
        PROVIDERS.get,
    )
    return replace(d, **overrides)


def new_job(*, enabled: bool = False) -> LibraryJob:
    return LibraryJob.create(
        job_id=uuid4(),
        library_id=LIBRARY,
        definition=definition(),
        enabled=enabled,
        at=T0,
        actor="key:web-ui",
        request_id="req-1",
    )


@pytest.fixture
def job() -> LibraryJob:
    """A job whose creation has already been saved (its pending events collected)."""
    job = new_job()
    job.collect_events()
    return job


def change(job: LibraryJob, d: JobDefinition, enabled: bool, minutes: int = 1) -> bool:
    return job.change(d, enabled, at=T0 + timedelta(minutes=minutes), actor="key:web-ui", request_id="req-2")


def test_create_records_created_at_version_1() -> None:
    job = new_job(enabled=True)
    (event,) = job.collect_events()
    assert isinstance(event, LibraryJob.Created)
    assert event.originator_version == 1
    assert event.job_version == 1
    assert event.timestamp == T0
    assert event.library_id == LIBRARY
    assert event.definition == definition().to_dict()
    assert event.enabled is True
    assert (event.actor, event.request_id) == ("key:web-ui", "req-1")
    assert (job.job_version, job.definition, job.enabled, job.deleted) == (1, definition(), True, False)


def test_change_without_a_difference_records_nothing(job: LibraryJob) -> None:
    assert change(job, definition(), enabled=False) is False
    assert job.collect_events() == []
    assert job.job_version == 1


def test_change_of_the_definition_records_updated(job: LibraryJob) -> None:
    renamed = definition(name="Weekly")
    assert change(job, renamed, enabled=False) is True
    (event,) = job.collect_events()
    assert isinstance(event, LibraryJob.Updated)
    assert event.definition == renamed.to_dict()
    assert (event.job_version, event.timestamp) == (2, T0 + timedelta(minutes=1))
    assert (job.job_version, job.definition) == (2, renamed)


@pytest.mark.parametrize(("start", "event_class"), [(False, LibraryJob.Enabled), (True, LibraryJob.Disabled)])
def test_toggling_enabled_records_its_own_event(start: bool, event_class: type[LibraryJob.Event]) -> None:
    job = new_job(enabled=start)
    job.collect_events()
    assert change(job, definition(), enabled=not start) is True
    (event,) = job.collect_events()
    assert type(event) is event_class
    assert event.job_version == 2
    assert job.enabled is (not start)


def test_one_patch_changing_name_and_enabled_is_one_version(job: LibraryJob) -> None:
    assert change(job, definition(name="Weekly"), enabled=True) is True
    updated, enabled = job.collect_events()
    assert isinstance(updated, LibraryJob.Updated)
    assert isinstance(enabled, LibraryJob.Enabled)
    assert updated.job_version == enabled.job_version == 2
    assert (updated.originator_version, enabled.originator_version) == (2, 3)
    assert (job.job_version, job.enabled, job.definition.name) == (2, True, "Weekly")


def test_versions_count_user_changes(job: LibraryJob) -> None:
    change(job, definition(name="A"), enabled=True, minutes=1)
    change(job, definition(name="A"), enabled=True, minutes=2)  # no-op
    change(job, definition(name="B"), enabled=False, minutes=3)
    # Updated + Enabled (version 2), nothing, Updated + Disabled (version 3)
    assert [e.job_version for e in job.collect_events()] == [2, 2, 3, 3]
    assert job.job_version == 3


def test_delete_records_deleted(job: LibraryJob) -> None:
    job.delete(at=T0 + timedelta(hours=1), actor="key:admin", request_id=None)
    (event,) = job.collect_events()
    assert isinstance(event, LibraryJob.Deleted)
    assert (event.job_version, event.actor, event.request_id) == (2, "key:admin", None)
    assert job.deleted is True


# --- stored topics ---------------------------------------------------------------------------------

AGGREGATES: tuple[type[Aggregate], ...] = (LibraryJob, Library, Series, Book)


def event_classes() -> list[type[CanMutateAggregate[UUID]]]:
    """Every event class nested in our aggregates, including those the eventsourcing metaclass adds.

    Each class once, even if an aggregate names it twice (e.g. `Created = Registered`).
    """
    found = (
        value
        for aggregate in AGGREGATES
        for value in vars(aggregate).values()
        if isinstance(value, type) and issubclass(value, CanMutateAggregate)
    )
    return list(dict.fromkeys(found))


def test_every_aggregate_has_its_own_topic() -> None:
    for aggregate in AGGREGATES:
        assert aggregate.__dict__["TOPIC"] == f"libjobs:{aggregate.__qualname__}"


def test_the_events_we_record_are_all_found() -> None:
    names = {cls.__qualname__ for cls in event_classes()}
    assert {
        "LibraryJob.Created",
        "LibraryJob.Updated",
        "LibraryJob.Enabled",
        "LibraryJob.Disabled",
        "LibraryJob.Deleted",
        "Library.Registered",
        "Library.Renamed",
        "Library.Deleted",
        "Series.Upserted",
        "Series.Changed",
        "Series.Deleted",
        "Book.Upserted",
        "Book.Changed",
        "Book.Deleted",
    } <= names


# eventsourcing adds a `Created` class to an aggregate that does not define one; ours alias it to their
# creation event, so no class without a topic of its own can appear (and take over another's topic).
@pytest.mark.parametrize("event_class", event_classes(), ids=lambda cls: cls.__qualname__)
def test_every_event_class_has_its_own_explicit_topic(event_class: type) -> None:
    topic = event_class.__dict__.get("TOPIC")
    assert isinstance(topic, str)
    assert topic == f"libjobs:{event_class.__qualname__}"


@pytest.mark.parametrize("event_class", event_classes(), ids=lambda cls: cls.__qualname__)
def test_every_topic_resolves_to_its_class(event_class: type) -> None:
    assert resolve_topic(event_class.TOPIC) is event_class


def test_topics_are_unique() -> None:
    counts = Counter(cls.TOPIC for cls in event_classes())
    assert [topic for topic, n in counts.items() if n > 1] == []


def test_config_to_dict_names_every_field_once() -> None:
    """RefreshConfig.to_dict is spelled out for speed: it must not miss a field added later."""
    from dataclasses import fields

    from service.domain.jobs import RefreshConfig

    config = RefreshConfig("plugin:x", "series_only", ("ratings",), (), (), (), True, 3600, 4)
    assert set(config.to_dict()) == {"type"} | {f.name for f in fields(RefreshConfig)}
    assert RefreshConfig.from_dict(config.to_dict()) == config
