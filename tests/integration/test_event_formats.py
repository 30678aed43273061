"""Old stores keep loading (SPEC §8): every fixture stream of `tests/fixtures/events/`, put into a real
SQLite file and a real PostgreSQL schema byte for byte, is read back through the application (its
repository and the store reader the projections use), old formats upcast; new events are stored in the
current format on both stores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest

from service.adapters.store import StoreReader, store_env
from service.application import LibraryJobs
from service.domain.catalog import (
    Book,
    Library,
    Series,
    book_aggregate_id,
    library_aggregate_id,
    series_aggregate_id,
)
from service.domain.jobs import LibraryJob
from tests.fixtures.events.generate import (
    BOOK_ID,
    JOB_ID,
    LIBRARY_ID,
    MANUAL_RUN_ID,
    SCHEDULED_RUN_ID,
    SERIES_ID,
    FixtureFile,
    Record,
    current_formats,
    fixture_files,
    formats_of,
    new_app,
    record_scenario,
)
from tests.unit.test_event_formats import SCENARIO, SCENARIO_FILES

pytestmark = pytest.mark.integration

FILES = fixture_files()


@pytest.fixture
def app(tmp_path: Path, database_url: str | None) -> Iterator[LibraryJobs]:
    env = store_env(data_dir=tmp_path / "data", database_url=database_url, pool_size=2, lock_timeout_s=5)
    application = new_app(env)
    yield application
    application.close()


@pytest.mark.parametrize("fixture_file", FILES, ids=lambda f: f.path.name)
def test_a_stored_fixture_stream_loads_through_the_application(
    app: LibraryJobs, fixture_file: FixtureFile
) -> None:
    records = fixture_file.records
    app.recorder.insert_events([r.stored_event() for r in records])

    # the store keeps the bytes as they were written
    stored = app.recorder.select_notifications(start=1, limit=1000)
    assert [(n.id, n.topic, bytes(n.state)) for n in stored] == [
        (r.position, r.topic, r.state) for r in records
    ]

    # read in global order, as projections, the relay and the audit routes read it
    read = StoreReader(app).read(0, 1000)
    assert [position for position, _ in read] == [r.position for r in records]
    assert [type(event).TOPIC for _, event in read] == [r.topic for r in records]
    if fixture_file.path.name in SCENARIO_FILES:
        assert [vars(event) for _, event in read] == [
            {"originator_id": originator_id, "originator_version": version, **attributes}
            for _, originator_id, version, attributes in SCENARIO.values()
        ]

    # and aggregate by aggregate, as commands load them
    job: LibraryJob = app.repository.get(JOB_ID)
    assert isinstance(job, LibraryJob)
    assert (job.version, job.job_version, job.deleted, job.enabled) == (13, 4, True, False)
    assert job.finished_runs == {str(SCHEDULED_RUN_ID): "partial", str(MANUAL_RUN_ID): "cancelled"}
    assert job.last_fire == datetime(2026, 3, 6, 3, 0, tzinfo=UTC)
    series: Series = app.repository.get(series_aggregate_id(SERIES_ID))
    assert isinstance(series, Series)
    assert (series.deleted, series.state["metadata"]["rating"]) == (True, 8.7)
    book: Book = app.repository.get(book_aggregate_id(BOOK_ID))
    assert isinstance(book, Book)
    assert book.deleted

    # an old stream goes on: the library server describes the library again
    library: Library = app.repository.get(library_aggregate_id(LIBRARY_ID))
    assert isinstance(library, Library)
    assert (library.name, library.deleted) == ("Manga & Comics", True)
    library.upsert("Manga", at=datetime(2026, 4, 1, tzinfo=UTC), actor="key:library-server", request_id="r")
    app.save(library)
    assert app.repository.get(library.id).name == "Manga"
    (position, renamed), *_ = StoreReader(app).read(len(records))
    assert (position, renamed.originator_version, type(renamed)) == (len(records) + 1, 4, Library.Renamed)


def test_new_events_are_stored_in_the_current_format(app: LibraryJobs) -> None:
    """On both stores: FireSkipped with `class_version` 2 in its state, version 1 events without one."""
    record_scenario(app)
    stored = app.recorder.select_notifications(start=1, limit=1000)
    assert formats_of(
        Record(n.id, n.topic, UUID(str(n.originator_id)), n.originator_version, bytes(n.state))
        for n in stored
    ) == dict(sorted(current_formats().items()))
    skipped = [json.loads(bytes(n.state)) for n in stored if n.topic == LibraryJob.FireSkipped.TOPIC]
    assert [(s["reason"], s["class_version"], s["run_id_in_flight"] is None) for s in skipped] == [
        ("overlap", 2, False),
        ("missed", 2, True),
    ]
    assert all(
        b'"class_version"' not in bytes(n.state) for n in stored if n.topic != LibraryJob.FireSkipped.TOPIC
    )
    read = [event for _, event in StoreReader(app).read(0, 1000)]
    assert [e.run_id_in_flight for e in read if isinstance(e, LibraryJob.FireSkipped)] == [
        SCHEDULED_RUN_ID,
        None,
    ]
