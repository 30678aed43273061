"""Commands → stored events → read-model bytes, on real SQLite files and real PostgreSQL.

Also: a restart serves the same bytes, a library's deletion is one atomic save, and catalog commands that
change nothing store nothing.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from contracts.catalog import ExternalIdDto
from projections.readmodels import ReadModels
from service.application import Saved
from service.bootstrap import Service
from service.domain.catalog import Book, Library, Series, library_aggregate_id, series_aggregate_id
from service.domain.errors import Conflict, NotFound, ValidationFailed
from service.domain.jobs import LibraryJob, PatchDraft
from service.settings import PluginSpec, Settings
from tests.integration.harness import (
    PLUGIN,
    PROVIDER,
    StepClock,
    book_state,
    ctx,
    job_draft,
    make_settings,
    new_job,
    new_library,
    rename,
    running,
    series_state,
    stored,
    stored_topics,
    write,
)
from tests.support.postgres import fresh_schema

pytestmark = pytest.mark.integration


def utc(event: Any) -> str:
    """An event's timestamp as the DTOs write it."""
    return str(event.timestamp.isoformat()).replace("+00:00", "Z")


def compact(value: Any) -> bytes:
    """The bytes msgspec writes for plain JSON values: no spaces, UTF-8, keys in the given order."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def snapshot(
    models: ReadModels, library_ids: list[UUID], job_ids: list[UUID], series_ids: list[UUID]
) -> dict[str, Any]:
    """Every DTO the read models serve about these ids, as bytes."""
    shot: dict[str, Any] = {"position": models.position(), "libraries": models.libraries_json()}
    for library_id in library_ids:
        shot[f"library {library_id}"] = models.library_json(library_id)
        shot[f"jobs {library_id}"] = models.jobs_json(library_id)
        shot[f"series {library_id}"] = models.series_page_json(library_id, None, 500)
        shot[f"books {library_id}"] = models.books_page_json(library_id, None, 500)
        for job_id in job_ids:
            shot[f"job {library_id} {job_id}"] = models.job_json(library_id, job_id)
        for item_id in series_ids:
            shot[f"series {library_id} {item_id}"] = models.series_json(library_id, item_id)
            shot[f"book {library_id} {item_id}"] = models.book_json(library_id, item_id)
    return shot


async def test_commands_are_stored_as_events_with_their_actor_and_request_id(service: Service) -> None:
    library_id, series_id, book_id = uuid4(), uuid4(), uuid4()
    commands = service.commands
    saved = [
        await write(service, commands.upsert_library, library_id, "Manga", ctx("req-1")),
        created := await write(service, commands.create_job, library_id, job_draft(), ctx("req-2")),
        await write(
            service,
            commands.update_job,
            library_id,
            created.id,
            PatchDraft(name="Renamed", enabled=True),
            ctx("req-3", actor="jwt:alice"),
        ),
        await write(
            service, commands.upsert_series, library_id, series_id, series_state("Akira"), ctx("req-4")
        ),
        await write(
            service, commands.upsert_book, library_id, book_id, book_state(series_id, "Akira 1"), ctx("req-5")
        ),
        await write(service, commands.delete_job, library_id, created.id, ctx("req-6")),
    ]

    events = stored(service)
    assert [type(e) for _, e in events] == [
        Library.Registered,
        LibraryJob.Created,
        LibraryJob.Updated,  # one PATCH that renames and enables: two events of one user change
        LibraryJob.Enabled,
        Series.Upserted,
        Book.Upserted,
        LibraryJob.Deleted,
    ]
    assert stored_topics(service) == [
        "libjobs:Library.Registered",
        "libjobs:LibraryJob.Created",
        "libjobs:LibraryJob.Updated",
        "libjobs:LibraryJob.Enabled",
        "libjobs:Series.Upserted",
        "libjobs:Book.Upserted",
        "libjobs:LibraryJob.Deleted",
    ]
    assert [p for p, _ in events] == list(range(1, 8))  # a fresh store: global positions from 1, no gaps
    assert [(e.actor, e.request_id) for _, e in events] == [
        ("key:test", "req-1"),
        ("key:test", "req-2"),
        ("jwt:alice", "req-3"),
        ("jwt:alice", "req-3"),
        ("key:test", "req-4"),
        ("key:test", "req-5"),
        ("key:test", "req-6"),
    ]
    # Each command reports the position of its last event (what read-your-writes waits for).
    assert [s.position for s in saved] == [1, 2, 4, 5, 6, 7]
    assert [s.created for s in saved] == [True, True, False, True, True, False]

    job_events: list[Any] = [e for _, e in events if isinstance(e, LibraryJob.Event)]
    assert {e.originator_id for e in job_events} == {created.id}
    assert [e.job_version for e in job_events] == [1, 2, 2, 3]
    assert job_events[1].definition["name"] == "Renamed"
    assert events[0][1].originator_id == library_aggregate_id(library_id)
    assert events[4][1].originator_id == series_aggregate_id(series_id)


async def test_the_read_models_serve_the_dto_bytes_of_the_stored_events(service: Service) -> None:
    library_id = await new_library(service, "Bandes dessinées")
    job_id = await new_job(service, library_id, name="Nightly — ratings")
    await write(service, rename, service, library_id, job_id, "Nightly")
    await write(service, service.commands.update_job, library_id, job_id, PatchDraft(enabled=True), ctx())
    series_id, book_id = uuid4(), uuid4()
    series = series_state(
        "Akira",
        title_sort="akira",
        metadata={"year": 1982, "genres": ["Science fiction"]},
        locks=["summary"],
        external_ids=[ExternalIdDto(source=PROVIDER, external_id="mb-1")],
    )
    await write(service, service.commands.upsert_series, library_id, series_id, series, ctx())
    await write(
        service, service.commands.upsert_book, library_id, book_id, book_state(series_id, "Vol. 1"), ctx()
    )
    registered, created, _, enabled, series_upserted, book_upserted = (e for _, e in stored(service))

    job = {
        "id": str(job_id),
        "libraryId": str(library_id),
        "name": "Nightly",
        "enabled": True,
        "cronSchedule": "0 4 * * *",
        "timezone": "Europe/Paris",
        "config": {
            "type": "metadata_refresh",
            "provider": PROVIDER,
            "scope": "series_only",
            "fieldGroups": ["ratings", "status", "counts"],
            "extraFields": [],
            "bookFieldGroups": [],
            "bookExtraFields": [],
            "existingSourceIdsOnly": True,
            "skipRecentlySyncedWithinS": 3600,
            "maxConcurrency": 4,
        },
        "lastRunAt": None,
        "lastRunStatus": None,
        "lastRunMessage": None,
        "createdAt": utc(created),
        "updatedAt": utc(enabled),
        "version": 3,
        "nextRunAt": "2026-03-02T03:00:00Z",  # 04:00 in Paris (CET) after the clock's 2026-03-01
        "currentRunId": None,
    }
    assert service.models.job_json(library_id, job_id) == (compact(job), 3)
    assert service.models.jobs_json(library_id) == b'{"jobs":[' + compact(job) + b"]}"
    assert service.models.job_json(uuid4(), job_id) is None  # another library's job is not found

    library = {
        "id": str(library_id),
        "name": "Bandes dessinées",
        "createdAt": utc(registered),
        "updatedAt": utc(registered),
    }
    assert service.models.library_json(library_id) == compact(library)
    assert service.models.libraries_json() == b'{"libraries":[' + compact(library) + b"]}"

    assert service.models.series_json(library_id, series_id) == compact(
        {
            "id": str(series_id),
            "libraryId": str(library_id),
            "title": "Akira",
            "titleSort": "akira",
            "metadata": {"year": 1982, "genres": ["Science fiction"]},
            "locks": ["summary"],
            "externalIds": [
                {"source": PROVIDER, "externalId": "mb-1", "externalUrl": None, "lastSyncedAt": None}
            ],
            "updatedAt": utc(series_upserted),
        }
    )
    assert service.models.book_json(library_id, book_id) == compact(
        {
            "id": str(book_id),
            "libraryId": str(library_id),
            "seriesId": str(series_id),
            "title": "Vol. 1",
            "titleSort": "Vol. 1",
            "metadata": {},
            "locks": [],
            "externalIds": [],
            "updatedAt": utc(book_upserted),
        }
    )


async def test_creates_made_together_are_stored_in_one_transaction_and_each_hears_its_own_error(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    library_id = await new_library(service)
    transactions: list[int] = []  # events per save of the application
    on_saved = service.commands.on_saved

    def count(saved: list[tuple[int, Any]]) -> None:
        transactions.append(len(saved))
        on_saved(saved)

    monkeypatch.setattr(service.commands, "on_saved", count)
    requests = [(library_id, job_draft(f"Job {i}")) for i in range(20)]
    requests.insert(5, (library_id, job_draft("Bad", cron_schedule="61 * * * *")))
    requests.insert(12, (uuid4(), job_draft("Elsewhere")))
    outcomes = await asyncio.gather(
        *(service.create_job(library, draft, ctx()) for library, draft in requests),
        return_exceptions=True,
    )

    assert isinstance(outcomes[5], ValidationFailed)
    assert outcomes[5].details["field"] == "cronSchedule"
    assert isinstance(outcomes[12], NotFound)
    saved = [o for o in outcomes if isinstance(o, Saved)]
    assert len({s.id for s in saved}) == len(saved) == 20
    assert transactions == [20]  # one trip to the store for the 22 requests
    for index, result in enumerate(saved):
        await service.follower.wait_for(result.position)
        found = service.models.job_json(library_id, result.id)
        assert found is not None
        assert json.loads(found[0])["name"] == f"Job {index}"


async def test_a_create_that_fails_unexpectedly_fails_alone(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = PluginSpec(name="other", command=("false",), capabilities=("series", "book"))
    async with running(replace(settings, plugins=(*settings.plugins, other))) as service:
        library_id = await new_library(service)
        lookup = service.commands.providers

        def flaky(name: str) -> Any:  # a provider lookup that breaks for one of the two plugins
            if name == PLUGIN:
                raise RuntimeError("plugin directory failed")
            return lookup(name)

        monkeypatch.setattr(service.commands, "providers", flaky)
        fine = job_draft("Fine")
        fine = replace(fine, config=replace(fine.config, provider="plugin:other"))
        outcomes = await asyncio.gather(
            service.create_job(library_id, fine, ctx()),
            service.create_job(library_id, job_draft("Broken"), ctx()),
            return_exceptions=True,
        )
    assert isinstance(outcomes[0], Saved)
    assert isinstance(outcomes[1], RuntimeError)


async def test_a_restarted_service_serves_the_same_bytes(settings: Settings) -> None:
    series_ids = [uuid4(), uuid4()]
    async with running(settings, clock=StepClock()) as first:
        libraries = [await new_library(first, "Manga"), await new_library(first, "Comics")]
        kept = await new_job(first, libraries[0], name="Kept")
        gone = await new_job(first, libraries[0], name="Gone")
        other = await new_job(first, libraries[1], enabled=True)
        await write(first, first.commands.update_job, libraries[0], kept, PatchDraft(enabled=True), ctx())
        await write(first, first.commands.delete_job, libraries[0], gone, ctx())
        for n, series_id in enumerate(series_ids):
            await write(
                first, first.commands.upsert_series, libraries[0], series_id, series_state(f"S{n}"), ctx()
            )
        await write(  # a book may have the id of a series: they never collide
            first,
            first.commands.upsert_book,
            libraries[0],
            series_ids[1],
            book_state(series_ids[0], "B"),
            ctx(),
        )
        before = snapshot(first.models, libraries, [kept, gone, other], series_ids)
        events_before = stored(first)

    async with running(settings) as second:
        assert snapshot(second.models, libraries, [kept, gone, other], series_ids) == before
        assert stored(second) == events_before
        # A replay of the whole store into empty read models gives the very same bytes.
        replayed = ReadModels(default_timezone=settings.default_timezone)
        replayed.apply(events_before)
        assert snapshot(replayed, libraries, [kept, gone, other], series_ids) == before
        # Writing goes on from where it was: versions continue, nothing is re-created.
        saved = await write(second, rename, second, libraries[0], kept, "Kept again")
        assert saved.position == before["position"] + 1
        assert second.models.job_json(libraries[0], kept)[1] == 3  # type: ignore[index]


@pytest.mark.postgres
async def test_deployments_in_other_schemas_each_persist_their_read_models(tmp_path: Path) -> None:
    # Advisory locks are database-wide: with one key for every schema, only one of two deployments that
    # share a database persisted its read models; the other replayed its whole store at every start.
    with fresh_schema() as first_url, fresh_schema() as second_url:
        async with (
            running(make_settings(tmp_path / "first", first_url)) as first,
            running(make_settings(tmp_path / "second", second_url)) as second,
        ):
            for svc in (first, second):
                await new_job(svc, await new_library(svc))
                await svc.persist_views()
            for svc in (first, second):
                position, _ = await svc.run_sync(svc.views.load)
                assert position == svc.reader.max_position()


async def test_deleting_a_library_deletes_its_contents_in_one_atomic_save(service: Service) -> None:
    doomed, spared = await new_library(service, "Doomed"), await new_library(service, "Spared")
    jobs = [await new_job(service, doomed, name=f"J{n}") for n in range(2)]
    already_deleted = await new_job(service, doomed, name="Already deleted")
    await write(service, service.commands.delete_job, doomed, already_deleted, ctx())
    series = [uuid4(), uuid4()]
    for n, series_id in enumerate(series):
        await write(service, service.commands.upsert_series, doomed, series_id, series_state(f"S{n}"), ctx())
    book = uuid4()
    await write(service, service.commands.upsert_book, doomed, book, book_state(series[0], "B"), ctx())
    spared_job = await new_job(service, spared)
    spared_series = uuid4()
    await write(service, service.commands.upsert_series, spared, spared_series, series_state("Kept"), ctx())
    spared_bytes = snapshot(service.models, [spared], [spared_job], [spared_series])
    spared_bytes.pop("position"), spared_bytes.pop("libraries")
    last_before = service.reader.max_position()

    saved = await write(service, service.commands.delete_library, doomed, ctx("req-delete"))

    deletion = stored(service, after=last_before)
    positions = [p for p, _ in deletion]
    assert positions == list(range(last_before + 1, last_before + 7))  # consecutive: one transaction
    assert saved.position == positions[-1]
    kinds = sorted(type(e).__qualname__ for _, e in deletion)
    assert kinds == sorted(
        ["LibraryJob.Deleted"] * 2 + ["Series.Deleted"] * 2 + ["Book.Deleted", "Library.Deleted"]
    )
    assert {e.originator_id for _, e in deletion if isinstance(e, LibraryJob.Deleted)} == set(jobs)
    assert {e.request_id for _, e in deletion} == {"req-delete"}

    assert service.models.library_json(doomed) is None
    assert service.models.jobs_json(doomed) == b'{"jobs":[]}'
    assert service.models.series_page_json(doomed, None, 50) == b'{"series":[],"nextCursor":null}'
    assert service.models.books_page_json(doomed, None, 50) == b'{"books":[],"nextCursor":null}'
    after = snapshot(service.models, [spared], [spared_job], [spared_series])
    assert {k: v for k, v in after.items() if k not in ("position", "libraries")} == spared_bytes
    with pytest.raises(NotFound):
        await service.run_sync(service.commands.create_job, doomed, job_draft(), ctx())
    # Registering the library again starts it empty: nothing of the old contents comes back.
    await write(service, service.commands.upsert_library, doomed, "Doomed", ctx())
    assert service.models.jobs_json(doomed) == b'{"jobs":[]}'
    assert service.models.series_json(doomed, series[0]) is None


async def test_commands_that_change_nothing_store_nothing(service: Service) -> None:
    library_id, series_id, book_id = await new_library(service, "Manga"), uuid4(), uuid4()
    job_id = await new_job(service, library_id, name="Nightly")
    state = series_state("Akira", metadata={"year": 1982})
    await write(service, service.commands.upsert_series, library_id, series_id, state, ctx())
    await write(service, service.commands.upsert_book, library_id, book_id, book_state(series_id, "1"), ctx())
    position = service.reader.max_position()

    commands = service.commands
    unchanged = [
        commands.upsert_library(library_id, "Manga", ctx()),
        commands.upsert_series(library_id, series_id, series_state("Akira", metadata={"year": 1982}), ctx()),
        commands.upsert_book(library_id, book_id, book_state(series_id, "1"), ctx()),
        commands.update_job(library_id, job_id, PatchDraft(name=" Nightly ", enabled=False), ctx()),
    ]
    assert [s.position for s in unchanged] == [None] * 4
    assert not any(s.created for s in unchanged)
    assert service.reader.max_position() == position

    changed = commands.upsert_series(
        library_id, series_id, series_state("Akira", metadata={"year": 1983}), ctx()
    )
    assert changed.position == position + 1
    assert [type(e) for _, e in stored(service, after=position)] == [Series.Changed]


async def test_an_item_of_another_library_conflicts(service: Service) -> None:
    first, second = await new_library(service, "First"), await new_library(service, "Second")
    series_id, book_id = uuid4(), uuid4()
    await write(service, service.commands.upsert_series, first, series_id, series_state("Akira"), ctx())
    await write(service, service.commands.upsert_book, first, book_id, book_state(series_id, "1"), ctx())
    position = service.reader.max_position()

    with pytest.raises(Conflict):
        service.commands.upsert_series(second, series_id, series_state("Akira"), ctx())
    with pytest.raises(Conflict):
        service.commands.upsert_book(second, book_id, book_state(series_id, "1"), ctx())
    with pytest.raises(NotFound):  # nor can the other library delete it
        service.commands.delete_series(second, series_id, ctx())
    assert service.reader.max_position() == position
    assert service.models.series_json(first, series_id) is not None
    assert service.models.series_json(second, series_id) is None

    # Once deleted from its library, the id is free for another one.
    await write(service, service.commands.delete_series, first, series_id, ctx())
    moved = await write(
        service, service.commands.upsert_series, second, series_id, series_state("Akira"), ctx()
    )
    assert moved.created
    assert service.models.series_json(second, series_id) is not None
    assert service.models.series_json(first, series_id) is None
