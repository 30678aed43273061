"""Stored event formats (SPEC §8, ARCHITECTURE "Stored event topics are a public format").

`tests/fixtures/events/vN.json` hold every format libjobs ever stored, exactly as stored. Every one must keep
loading through the current mapper, upcast to what the current code means; every topic the domain declares
must have a fixture of each of its versions; and the current code must store what the newest fixture of
each (topic, class_version) holds, so that a format never changes without a new `class_version`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.utils import resolve_topic

from service.application import LibraryJobs
from service.domain.catalog import (
    Book,
    CatalogItem,
    Library,
    Series,
    library_aggregate_id,
    series_aggregate_id,
)
from service.domain.jobs import LibraryJob
from tests.fixtures.events.generate import (
    FixtureFile,
    Record,
    aggregate_classes,
    class_version,
    covered,
    current_formats,
    fixture_files,
    formats_of,
    generate,
    new_app,
    stored_event_classes,
)

pytestmark = pytest.mark.unit

POPO = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
FILES = fixture_files()

# The scenario of `tests/fixtures/events/generate.py`, written out again: what its events must decode to.
LIBRARY_ID = UUID("5e1f0c3a-8d2b-4c6e-9f1a-0b2c3d4e5f01")
SERIES_ID = UUID("5e1f0c3a-8d2b-4c6e-9f1a-0b2c3d4e5f02")
BOOK_ID = UUID("5e1f0c3a-8d2b-4c6e-9f1a-0b2c3d4e5f03")
JOB_ID = UUID("5e1f0c3a-8d2b-4c6e-9f1a-0b2c3d4e5f04")
MANUAL_RUN = UUID("5e1f0c3a-8d2b-4c6e-9f1a-0b2c3d4e5f05")
SCHEDULED_RUN = UUID("09867ccf-864b-5ffb-9ab7-6ef4e4a83844")  # uuid5(JOB_ID, "2026-03-02T03:00:00Z")
LIBRARY_AGG = UUID("8eda3487-eb75-5ecd-a3c9-276fc253f671")
SERIES_AGG = UUID("3395d0ad-b9cf-58e0-860a-66ea7ef4c65d")
BOOK_AGG = UUID("61e14c3d-cf7f-5513-8c34-2f99ae43148e")
SERVER = {"actor": "key:library-server"}
ADMIN = {"actor": "jwt:alice"}
SCHEDULER = {"actor": "scheduler", "request_id": None}
EXECUTOR = {"actor": "executor", "request_id": None}
PROVIDER = "plugin:mangabaka"
GROUPS = ["ratings", "status", "counts"]
CONFIG = {
    "type": "metadata_refresh",
    "provider": PROVIDER,
    "scope": "series_and_books",
    "field_groups": GROUPS,
    "extra_fields": [],
    "book_field_groups": GROUPS,
    "book_extra_fields": [],
    "existing_source_ids_only": True,
    "skip_recently_synced_within_s": 3600,
    "max_concurrency": 2,
}
DEFINITION: dict[str, Any] = {
    "name": "mangabaka \u2014 ratings, status, counts",
    "cron_schedule": "0 4 * * *",
}
DEFINITION |= {"timezone": "Europe/Paris", "config": CONFIG}
SERIES_IDS = [{"source": PROVIDER, "externalId": "mb-1042", "externalUrl": None, "lastSyncedAt": None}]
SERIES_META = {"rating": 8.2, "status": "ongoing"}
BOOK_STATE: dict[str, Any] = {
    "titleSort": None,
    "metadata": {"pageCount": 192},
    "locks": [],
    "externalIds": [],
}
BOOK_STATE |= {"seriesId": str(SERIES_ID)}
PROGRESS = {"planned": 2, "done": 2, "succeeded": 1, "failed": 1, "skipped": 1}


def at(day: int, hour: int, minute: int, second: int) -> datetime:
    return datetime(2026, 3, day, hour, minute, second, tzinfo=UTC)


def series_state(title: str) -> dict[str, Any]:
    return {"title": title, "titleSort": title, "metadata": SERIES_META, "locks": ["status"]} | {
        "externalIds": SERIES_IDS
    }


# position → (class, originator id, originator version, every other attribute)
SCENARIO: dict[int, tuple[type[Any], UUID, int, dict[str, Any]]] = {
    1: (Library.Registered, LIBRARY_AGG, 1, {"timestamp": at(1, 10, 0, 1),
        "originator_topic": "libjobs:Library", **SERVER, "request_id": "req-0001", "library_id": LIBRARY_ID,
        "name": "Manga"}),
    2: (Library.Renamed, LIBRARY_AGG, 2, {"timestamp": at(1, 10, 0, 2), **SERVER, "request_id": "req-0002",
        "name": "Manga & Comics"}),
    3: (Series.Upserted, SERIES_AGG, 1, {"timestamp": at(1, 10, 0, 3), "originator_topic": "libjobs:Series",
        **SERVER, "request_id": "req-0003", "item_id": SERIES_ID, "library_id": LIBRARY_ID,
        "state": series_state("Dungeon Meshi")}),
    4: (Series.Changed, SERIES_AGG, 2, {"timestamp": at(1, 10, 0, 4), **SERVER, "request_id": "req-0004",
        "library_id": LIBRARY_ID, "state": series_state("Delicious in Dungeon")}),
    5: (Book.Upserted, BOOK_AGG, 1, {"timestamp": at(1, 10, 0, 5), "originator_topic": "libjobs:Book",
        **SERVER, "request_id": "req-0005", "item_id": BOOK_ID, "library_id": LIBRARY_ID,
        "state": {"title": "Volume 1", **BOOK_STATE}}),
    6: (Book.Changed, BOOK_AGG, 2, {"timestamp": at(1, 10, 0, 6), **SERVER, "request_id": "req-0006",
        "library_id": LIBRARY_ID, "state": {"title": "Delicious in Dungeon, Vol. 1", **BOOK_STATE}}),
    7: (LibraryJob.Created, JOB_ID, 1, {"timestamp": at(1, 10, 0, 7),
        "originator_topic": "libjobs:LibraryJob", **ADMIN, "request_id": "req-0007", "library_id": LIBRARY_ID,
        "definition": DEFINITION, "enabled": False, "job_version": 1}),
    8: (LibraryJob.Updated, JOB_ID, 2, {"timestamp": at(1, 10, 0, 8), **ADMIN, "request_id": "req-0008",
        "definition": DEFINITION | {"name": "Nightly ratings"}, "job_version": 2}),
    9: (LibraryJob.Enabled, JOB_ID, 3, {"timestamp": at(1, 10, 0, 8), **ADMIN, "request_id": "req-0008",
        "job_version": 2}),
    10: (LibraryJob.RunRequested, JOB_ID, 4, {"timestamp": at(2, 3, 0, 1), **SCHEDULER,
         "run_id": SCHEDULED_RUN, "trigger": "schedule", "scheduled_for": at(2, 3, 0, 0),
         "requested_at": at(2, 3, 0, 1), "missed_fires": 0, "config": CONFIG}),
    11: (LibraryJob.FireSkipped, JOB_ID, 5, {"timestamp": at(3, 3, 0, 1), **SCHEDULER,
         "scheduled_for": at(3, 3, 0, 0), "reason": "overlap", "run_id_in_flight": SCHEDULED_RUN,
         "missed_fires": 0}),
    # v1 stored the queued run here too; its cause is the age of the fires, so v2 (and the upcast) says None
    12: (LibraryJob.FireSkipped, JOB_ID, 6, {"timestamp": at(6, 5, 0, 1), **SCHEDULER,
         "scheduled_for": at(6, 3, 0, 0), "reason": "missed", "run_id_in_flight": None, "missed_fires": 3}),
    13: (LibraryJob.RunStarted, JOB_ID, 7, {"timestamp": at(6, 5, 0, 2), **EXECUTOR, "run_id": SCHEDULED_RUN,
         "attempt": 1, "started_at": at(6, 5, 0, 2)}),
    14: (Series.Refreshed, SERIES_AGG, 3, {"timestamp": at(6, 5, 0, 3), **EXECUTOR, "run_id": SCHEDULED_RUN,
         "job_id": JOB_ID, "provider": PROVIDER, "external_id": "mb-1042",
         "external_url": "https://mangabaka.example/series/1042", "synced_at": at(6, 5, 0, 3),
         "changes": {"rating": {"before": 8.2, "after": 8.7}},
         "skipped": [{"field": "status", "reason": "locked"}]}),
    15: (Book.Refreshed, BOOK_AGG, 3, {"timestamp": at(6, 5, 0, 3), **EXECUTOR, "run_id": SCHEDULED_RUN,
         "job_id": JOB_ID, "provider": PROVIDER, "external_id": "mb-b-77", "external_url": None,
         "synced_at": at(6, 5, 0, 3), "changes": {},
         "skipped": [{"field": "rating", "reason": "unchanged"}]}),
    16: (LibraryJob.RunProgressed, JOB_ID, 8, {"timestamp": at(6, 5, 0, 3), **EXECUTOR,
         "run_id": SCHEDULED_RUN, "progress": PROGRESS, "fields_changed": 1,
         "skipped": {"no_external_id": 0, "recently_synced": 1, "no_match": 0, "locked_only": 0}}),
    17: (LibraryJob.RunFinished, JOB_ID, 9, {"timestamp": at(6, 5, 0, 4), **EXECUTOR, "run_id": SCHEDULED_RUN,
         "status": "partial", "message": "Refreshed 1 of 2 items (1 succeeded, 1 failed, 1 skipped)",
         "started_at": at(6, 5, 0, 2), "finished_at": at(6, 5, 0, 4), "counts": PROGRESS}),
    18: (LibraryJob.Disabled, JOB_ID, 10, {"timestamp": at(6, 5, 0, 5), **ADMIN, "request_id": "req-0009",
         "job_version": 3}),
    19: (LibraryJob.RunRequested, JOB_ID, 11, {"timestamp": at(6, 5, 0, 6), "actor": "nats:ops-cli",
         "request_id": "req-0010", "run_id": MANUAL_RUN, "trigger": "manual", "scheduled_for": None,
         "requested_at": at(6, 5, 0, 6), "missed_fires": 0, "config": CONFIG}),
    20: (Library.Deleted, LIBRARY_AGG, 3, {"timestamp": at(6, 5, 0, 7), **SERVER, "request_id": "req-0011"}),
    21: (LibraryJob.Deleted, JOB_ID, 12, {"timestamp": at(6, 5, 0, 7), **SERVER, "request_id": "req-0011",
         "job_version": 4}),
    22: (Series.Deleted, SERIES_AGG, 4, {"timestamp": at(6, 5, 0, 7), **SERVER, "request_id": "req-0011"}),
    23: (Book.Deleted, BOOK_AGG, 4, {"timestamp": at(6, 5, 0, 7), **SERVER, "request_id": "req-0011"}),
    24: (LibraryJob.RunFinished, JOB_ID, 13, {"timestamp": at(6, 5, 0, 8), **EXECUTOR, "run_id": MANUAL_RUN,
         "status": "cancelled", "message": "Cancelled: the job was deleted", "started_at": at(6, 5, 0, 8),
         "finished_at": at(6, 5, 0, 8), "counts": {}}),
}  # fmt: skip
SCENARIO_FILES = ("v1.json", "v2.json")  # files holding exactly this scenario (a later one may hold another)


@pytest.fixture(scope="module")
def app() -> Iterator[LibraryJobs]:
    """The application as production builds it, on the in-memory store: its mapper is the one in use."""
    application = new_app(POPO)
    yield application
    application.close()


def decode(app: LibraryJobs, record: Record) -> Any:
    return app.mapper.to_domain_event(record.stored_event())


def all_records() -> list[tuple[FixtureFile, Record]]:
    return [(f, r) for f in FILES for r in f.records]


def fixture(name: str) -> FixtureFile:
    (found,) = (f for f in FILES if f.path.name == name)
    return found


def state_of(record: Record) -> dict[str, Any]:
    return dict(json.loads(record.state))


# --- every declared format has its fixtures ----------------------------------------------------------


def test_the_domain_declares_the_aggregates_and_events_we_know() -> None:
    assert set(aggregate_classes()) == {LibraryJob, Library, CatalogItem, Series, Book}
    assert len(stored_event_classes()) == 21
    assert LibraryJob.Event not in stored_event_classes()


def test_an_aggregate_without_a_topic_of_its_own_is_only_a_base_of_those_with_one() -> None:
    """Else its events would be stored under module paths, and no fixture would hold them."""
    for aggregate in aggregate_classes():
        if "TOPIC" not in aggregate.__dict__:
            subclasses = [c for c in aggregate_classes() if c is not aggregate and issubclass(c, aggregate)]
            assert subclasses, f"{aggregate.__qualname__} stores events but has no TOPIC"
            assert all("TOPIC" in c.__dict__ for c in subclasses)


def test_the_fixtures_hold_every_topic_the_domain_declares_and_no_other() -> None:
    in_fixtures = {topic for f in FILES for topic in f.formats}
    declared = {cls.TOPIC for cls in stored_event_classes()}  # type: ignore[attr-defined]
    assert in_fixtures == declared, "run `python -m tests.fixtures.events.generate` and commit the new file"


def test_every_version_of_every_topic_has_a_fixture() -> None:
    wanted = {
        (cls.TOPIC, version)  # type: ignore[attr-defined]
        for cls in stored_event_classes()
        for version in range(1, class_version(cls) + 1)
    }
    missing = wanted - covered(FILES)
    assert not missing, f"no fixture of {sorted(missing)}: run `python -m tests.fixtures.events.generate`"


@pytest.mark.parametrize("fixture_file", FILES, ids=lambda f: f.path.name)
def test_a_fixture_file_says_what_it_holds(fixture_file: FixtureFile) -> None:
    assert fixture_file.path.name == f"v{fixture_file.generation}.json"
    assert fixture_file.formats == formats_of(fixture_file.records)
    assert [r.position for r in fixture_file.records] == list(range(1, len(fixture_file.records) + 1))


def test_the_fixture_generations_are_consecutive() -> None:
    assert [f.generation for f in FILES] == list(range(1, len(FILES) + 1))


# --- every fixture loads ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture_file", "record"),
    all_records(),
    ids=[f"{f.path.stem}-{r.position}-{r.topic.removeprefix('libjobs:')}" for f, r in all_records()],
)
def test_every_stored_event_decodes_into_the_class_of_its_topic(
    app: LibraryJobs, fixture_file: FixtureFile, record: Record
) -> None:
    event = decode(app, record)
    assert type(event) is resolve_topic(record.topic)
    assert record.topic == type(event).TOPIC
    assert (event.originator_id, event.originator_version) == (
        record.originator_id,
        record.originator_version,
    )
    state = state_of(record)
    assert set(vars(event)) == (set(state) - {"class_version"}) | {"originator_id", "originator_version"}
    assert event.timestamp.utcoffset() is not None
    if isinstance(event, Aggregate.Created):  # the aggregate's topic is stored too, and stable
        assert issubclass(resolve_topic(event.originator_topic), Aggregate)


@pytest.mark.parametrize("name", SCENARIO_FILES)
def test_the_stored_events_decode_to_the_values_they_were_recorded_with(app: LibraryJobs, name: str) -> None:
    records = fixture(name).records
    assert [r.position for r in records] == list(SCENARIO)
    for record in records:
        cls, originator_id, version, attributes = SCENARIO[record.position]
        event = decode(app, record)
        assert type(event) is cls, record.position
        expected = {"originator_id": originator_id, "originator_version": version, **attributes}
        assert vars(event) == expected, record.position


def test_every_fixture_replays_into_the_aggregates_it_recorded(app: LibraryJobs) -> None:
    for fixture_file in FILES:
        events = [decode(app, r) for r in fixture_file.records]
        aggregates: dict[UUID, Any] = {}
        for event in events:
            aggregates[event.originator_id] = event.mutate(aggregates.get(event.originator_id))
        job = aggregates[JOB_ID]
        assert isinstance(job, LibraryJob)
        assert (job.version, job.job_version, job.deleted, job.enabled) == (13, 4, True, False)
        assert (job.definition.name, job.definition.config.max_concurrency) == ("Nightly ratings", 2)
        assert job.finished_runs == {str(SCHEDULED_RUN): "partial", str(MANUAL_RUN): "cancelled"}
        assert (job.current_run_id, job.last_fire, job.active_runs) == (None, at(6, 3, 0, 0), {})
        library = aggregates[library_aggregate_id(LIBRARY_ID)]
        assert (library.name, library.deleted) == ("Manga & Comics", True)
        series = aggregates[series_aggregate_id(SERIES_ID)]
        assert series.deleted
        assert series.state["metadata"]["rating"] == 8.7
        assert series.state["externalIds"][0]["lastSyncedAt"] == "2026-03-06T05:00:03Z"
        book = aggregates[BOOK_AGG]
        assert book.deleted
        assert book.state["externalIds"][0]["externalId"] == "mb-b-77"


# --- the upcast of FireSkipped v1 -> v2 -------------------------------------------------------------


def test_a_v1_missed_fire_named_the_queued_run_and_is_upcast_to_name_none(app: LibraryJobs) -> None:
    overlap, missed = (r for r in fixture("v1.json").records if r.topic == LibraryJob.FireSkipped.TOPIC)
    for record in (overlap, missed):
        assert "class_version" not in state_of(record)  # eventsourcing writes it only above 1
        assert state_of(record)["run_id_in_flight"] == {"_type_": "uuid_hex", "_data_": SCHEDULED_RUN.hex}

    assert decode(app, overlap).run_id_in_flight == SCHEDULED_RUN  # an overlap's cause is that run
    upcast = decode(app, missed)
    assert (upcast.reason, upcast.run_id_in_flight, upcast.missed_fires) == ("missed", None, 3)


def test_v2_fire_skipped_events_are_stored_as_such(app: LibraryJobs) -> None:
    overlap, missed = (r for r in fixture("v2.json").records if r.topic == LibraryJob.FireSkipped.TOPIC)
    assert state_of(overlap)["class_version"] == state_of(missed)["class_version"] == 2
    assert state_of(missed)["run_id_in_flight"] is None
    assert decode(app, overlap).run_id_in_flight == SCHEDULED_RUN


def test_the_current_code_writes_fire_skipped_v2_and_other_events_without_a_version(app: LibraryJobs) -> None:
    assert class_version(LibraryJob.FireSkipped) == 2
    records = generate(POPO)
    for record in records:
        version = state_of(record).get("class_version")
        if record.topic == LibraryJob.FireSkipped.TOPIC:
            assert version == 2
        else:
            assert version is None, record.topic  # version 1: eventsourcing leaves it out
    missed = next(r for r in records if r.topic == LibraryJob.FireSkipped.TOPIC and b'"missed"' in r.state)
    assert state_of(missed)["run_id_in_flight"] is None
    event = decode(app, missed)
    assert app.mapper.to_stored_event(event).state == missed.state  # decoding and encoding round-trip


def test_a_v2_fire_skipped_names_a_run_only_for_an_overlap() -> None:
    run = UUID(int=7)
    common: dict[str, Any] = {"originator_id": JOB_ID, "originator_version": 5, "timestamp": at(3, 3, 0, 1)}
    common |= {"actor": "scheduler", "request_id": None, "scheduled_for": at(3, 3, 0, 0), "missed_fires": 2}
    fire_skipped: Any = LibraryJob.FireSkipped
    assert fire_skipped(**common, reason="overlap", run_id_in_flight=run).run_id_in_flight == run
    assert fire_skipped(**common, reason="missed", run_id_in_flight=run).run_id_in_flight is None


# --- no format changes without a new class_version -------------------------------------------------


def test_the_current_code_stores_the_fields_of_the_newest_fixture_of_each_format() -> None:
    """A field added, removed or renamed without a new `class_version` (and its upcast) fails here: old
    stores would hold events the current classes cannot read, or read wrongly."""
    newest: dict[tuple[str, int], set[str]] = {}
    for fixture_file in FILES:
        for record in fixture_file.records:
            newest[(record.topic, record.class_version)] = set(state_of(record))
    written = generate(POPO)
    assert formats_of(written) == dict(sorted(current_formats().items()))
    for record in written:
        key = (record.topic, record.class_version)
        assert key in newest, f"no fixture of {key}: run `python -m tests.fixtures.events.generate`"
        assert set(state_of(record)) == newest[key], (
            f"{record.topic} v{record.class_version} changed its fields: give it `class_version = "
            f"{record.class_version + 1}` and `upcast_v{record.class_version}_v{record.class_version + 1}`"
        )
