"""The in-memory read models (jobs: SPEC §2.3; catalog: §6), fed with events recorded by the aggregates."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
import pytest
from eventsourcing.domain import Aggregate

from contracts.catalog import (
    BookDto,
    LibraryDto,
    ListBooksResponse,
    ListLibrariesResponse,
    ListSeriesResponse,
    SeriesDto,
    UpsertBookRequest,
    UpsertSeriesRequest,
)
from contracts.jobs import LibraryJobDto, ListLibraryJobsResponse
from projections.catalog import BadCursor
from projections.readmodels import ReadModels
from service.domain.catalog import Book, Library, Series
from service.domain.jobs import (
    ConfigDraft,
    CreateDraft,
    LibraryJob,
    ProviderInfo,
    ValidationPolicy,
    validate_create,
)
from tests.support.spec import CONFIG_KEYS, DTO_KEYS

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)  # 11:00 in Paris (CET, UTC+1)
LIB_A = UUID("aaaaaaaa-0000-4000-8000-000000000001")
LIB_B = UUID("bbbbbbbb-0000-4000-8000-000000000002")
PROVIDERS = {"mangabaka": ProviderInfo(enabled=True, capabilities=frozenset({"series"}))}
STAMP: dict[str, Any] = {"actor": "test", "request_id": None}


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class EventLog:
    """The event store, reduced to what the read models see: events numbered 1..n in save order."""

    def __init__(self, models: ReadModels) -> None:
        self.models = models
        self.batches: list[list[tuple[int, Any]]] = []
        self.position = 0

    def save(self, *aggregates: Aggregate) -> list[tuple[int, Any]]:
        batch = []
        for aggregate in aggregates:
            for event in aggregate.collect_events():
                self.position += 1
                batch.append((self.position, event))
        self.batches.append(batch)
        self.models.apply(batch)
        return batch

    @property
    def everything(self) -> list[tuple[int, Any]]:
        return [item for batch in self.batches for item in batch]


@pytest.fixture
def models() -> ReadModels:
    return ReadModels()


@pytest.fixture
def log(models: ReadModels) -> EventLog:
    return EventLog(models)


# --- jobs ------------------------------------------------------------------------------------------


def new_job(
    log: EventLog,
    *,
    library: UUID = LIB_A,
    at: datetime = T0,
    enabled: bool = False,
    name: str = "Nightly",
    cron: str = "0 4 * * *",
    timezone: str | None = "Europe/Paris",
) -> LibraryJob:
    draft = CreateDraft(
        cron_schedule=cron, config=ConfigDraft(provider="plugin:mangabaka"), name=name, timezone=timezone
    )
    definition, _ = validate_create(draft, ValidationPolicy(), PROVIDERS.get)
    job = LibraryJob.create(
        job_id=UUID(int=log.position + 1),
        library_id=library,
        definition=definition,
        enabled=enabled,
        at=at,
        **STAMP,
    )
    log.save(job)
    return job


def edit(
    log: EventLog, job: LibraryJob, *, at: datetime, enabled: bool | None = None, **definition: Any
) -> bool:
    """One PATCH: changes the definition fields given and/or `enabled`, and saves what it recorded."""
    new_enabled = job.enabled if enabled is None else enabled
    changed = job.change(replace(job.definition, **definition), new_enabled, at=at, **STAMP)
    log.save(job)
    return changed


def job_bytes(models: ReadModels, job: LibraryJob) -> bytes:
    found = models.job_json(job.library_id, job.id)
    assert found is not None
    raw, version = found
    assert version == job.job_version  # the ETag
    return raw


def job_dto(models: ReadModels, job: LibraryJob) -> LibraryJobDto:
    return msgspec.json.decode(job_bytes(models, job), type=LibraryJobDto)


def listed(models: ReadModels, library: UUID = LIB_A) -> list[LibraryJobDto]:
    return msgspec.json.decode(models.jobs_json(library), type=ListLibraryJobsResponse).jobs


def test_dto_has_every_key_and_nulls_are_not_omitted(models: ReadModels, log: EventLog) -> None:
    job = new_job(log, timezone=None)
    body = json.loads(job_bytes(models, job))
    assert tuple(body) == DTO_KEYS
    assert tuple(body["config"]) == CONFIG_KEYS
    assert body == {
        "id": str(job.id),
        "libraryId": str(LIB_A),
        "name": "Nightly",
        "enabled": False,
        "cronSchedule": "0 4 * * *",
        "timezone": None,
        "config": {
            "type": "metadata_refresh",
            "provider": "plugin:mangabaka",
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
        "createdAt": "2026-03-01T10:00:00Z",
        "updatedAt": "2026-03-01T10:00:00Z",
        "version": 1,
        "nextRunAt": None,
        "currentRunId": None,
    }
    assert job_dto(models, job).id == job.id  # and it is a valid LibraryJobDto


def test_version_follows_user_changes(models: ReadModels, log: EventLog) -> None:
    job = new_job(log)
    assert job_dto(models, job).version == 1
    edit(log, job, at=minutes(1), name="Weekly", enabled=True)  # one PATCH, two events
    assert job_dto(models, job).version == 2
    edit(log, job, at=minutes(2), enabled=False)
    assert job_dto(models, job).version == 3


def test_created_at_is_constant_and_updated_at_moves_with_each_change(
    models: ReadModels, log: EventLog
) -> None:
    job = new_job(log)
    edit(log, job, at=minutes(5), name="Renamed")
    assert (job_dto(models, job).created_at, job_dto(models, job).updated_at) == (T0, minutes(5))
    edit(log, job, at=minutes(9), enabled=True)
    assert (job_dto(models, job).created_at, job_dto(models, job).updated_at) == (T0, minutes(9))


def test_updated_at_stays_when_nothing_changes(models: ReadModels, log: EventLog) -> None:
    job = new_job(log)
    before = job_bytes(models, job)
    assert edit(log, job, at=minutes(5), name="Nightly") is False  # same definition: no event
    library = Library.register(LIB_A, "Manga", at=minutes(6), **STAMP)  # other events go by
    log.save(library)
    assert job_bytes(models, job) == before
    assert job_dto(models, job).updated_at == T0


def test_next_run_is_null_while_disabled(models: ReadModels, log: EventLog) -> None:
    job = new_job(log, enabled=False)
    assert job_dto(models, job).next_run_at is None
    edit(log, job, at=minutes(1), enabled=True)
    edit(log, job, at=minutes(2), enabled=False)
    assert job_dto(models, job).next_run_at is None


def test_next_run_when_created_enabled(models: ReadModels, log: EventLog) -> None:
    job = new_job(log, enabled=True)  # 04:00 in Paris is 03:00 UTC in winter
    assert json.loads(job_bytes(models, job))["nextRunAt"] == "2026-03-02T03:00:00Z"
    assert job_dto(models, job).next_run_at == datetime(2026, 3, 2, 3, 0, tzinfo=UTC)


def test_next_run_is_strictly_after_the_change(models: ReadModels, log: EventLog) -> None:
    job = new_job(log)
    fire = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    edit(log, job, at=fire, enabled=True)  # enabled exactly at a fire instant
    assert job_dto(models, job).next_run_at == datetime(2026, 3, 3, 3, 0, tzinfo=UTC)


def test_next_run_follows_definition_changes(models: ReadModels, log: EventLog) -> None:
    job = new_job(log, enabled=True)
    edit(log, job, at=minutes(1), cron_schedule="30 12 * * *")
    assert job_dto(models, job).next_run_at == datetime(2026, 3, 1, 11, 30, tzinfo=UTC)
    edit(log, job, at=minutes(2), timezone="America/New_York")  # 12:30 EST = 17:30 UTC
    assert job_dto(models, job).next_run_at == datetime(2026, 3, 1, 17, 30, tzinfo=UTC)


def test_next_run_across_daylight_saving_time(models: ReadModels, log: EventLog) -> None:
    job = new_job(log)
    edit(log, job, at=datetime(2026, 3, 28, 12, 0, tzinfo=UTC), enabled=True)  # Paris goes to CEST on 29th
    assert job_dto(models, job).next_run_at == datetime(2026, 3, 29, 2, 0, tzinfo=UTC)


def test_next_run_uses_the_default_timezone_when_the_job_has_none() -> None:
    models = ReadModels(default_timezone="Asia/Tokyo")
    job = new_job(EventLog(models), enabled=True, timezone=None)  # T0 is 19:00 in Tokyo
    assert job_dto(models, job).next_run_at == datetime(2026, 3, 1, 19, 0, tzinfo=UTC)


def test_jobs_sharing_a_schedule_each_get_the_fire_after_their_own_change(
    models: ReadModels, log: EventLog
) -> None:
    # the projection remembers the last next fire per (cron, zone): it must only reuse it when it holds
    day = timedelta(days=1)
    first_fire = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # 04:00 in Paris
    moments = [T0, minutes(5), first_fire - timedelta(seconds=1), first_fire, T0 - day, first_fire + day]
    jobs = [new_job(log, enabled=True, at=moment) for moment in moments]
    assert [job_dto(models, job).next_run_at for job in jobs] == [
        first_fire,
        first_fire,
        first_fire,
        first_fire + day,
        first_fire - day,
        first_fire + 2 * day,
    ]


def test_list_is_ordered_by_creation_and_refreshed_after_a_change(models: ReadModels, log: EventLog) -> None:
    first = new_job(log, name="Zeta", at=minutes(0))
    second = new_job(log, name="Alpha", at=minutes(1))
    third = new_job(log, name="Mu", at=minutes(2))
    before = models.jobs_json(LIB_A)
    assert [j.id for j in listed(models)] == [first.id, second.id, third.id]

    edit(log, first, at=minutes(3), name="Omega")

    after = models.jobs_json(LIB_A)
    assert after != before
    assert [(j.id, j.name) for j in listed(models)] == [
        (first.id, "Omega"),
        (second.id, "Alpha"),
        (third.id, "Mu"),
    ]
    assert after == b'{"jobs":[' + b",".join(job_bytes(models, j) for j in (first, second, third)) + b"]}"


def test_empty_library_lists_no_jobs(models: ReadModels) -> None:
    assert models.jobs_json(LIB_A) == b'{"jobs":[]}'


def test_deleted_jobs_are_gone(models: ReadModels, log: EventLog) -> None:
    kept, doomed = new_job(log), new_job(log, at=minutes(1))
    models.jobs_json(LIB_A)  # cache the list
    doomed.delete(at=minutes(2), **STAMP)
    log.save(doomed)
    assert models.job_json(LIB_A, doomed.id) is None
    assert [j.id for j in listed(models)] == [kept.id]
    assert models.library_contents(LIB_A).job_ids == (kept.id,)


def test_a_job_is_only_visible_in_its_own_library(models: ReadModels, log: EventLog) -> None:
    a_job = new_job(log, library=LIB_A)
    b_job = new_job(log, library=LIB_B)
    assert models.job_json(LIB_B, a_job.id) is None
    assert models.job_json(LIB_A, b_job.id) is None
    assert [j.id for j in listed(models, LIB_A)] == [a_job.id]
    assert [j.id for j in listed(models, LIB_B)] == [b_job.id]


def test_applying_the_same_events_twice_changes_nothing(models: ReadModels, log: EventLog) -> None:
    job = new_job(log)
    edit(log, job, at=minutes(1), name="Weekly", enabled=True)
    position, raw, listing = models.position(), job_bytes(models, job), models.jobs_json(LIB_A)
    assert position == 3

    assert models.apply(log.everything) == position
    assert models.apply(log.batches[-1]) == position
    assert (models.position(), job_bytes(models, job), models.jobs_json(LIB_A)) == (position, raw, listing)


def test_an_event_at_an_old_position_is_skipped(models: ReadModels, log: EventLog) -> None:
    job = new_job(log)
    job.change(replace(job.definition, name="Late"), job.enabled, at=minutes(1), **STAMP)
    (event,) = job.collect_events()

    def seen() -> tuple[str, int]:
        found = models.job_json(LIB_A, job.id)
        assert found is not None
        return msgspec.json.decode(found[0], type=LibraryJobDto).name, found[1]

    models.apply([(1, event)])
    assert (seen(), models.position()) == (("Nightly", 1), 1)
    models.apply([(2, event)])
    assert (seen(), models.position()) == (("Late", 2), 2)


# --- jobs: equal values are shared between rows (memory: 100,000 jobs) ---------------------------------


def test_jobs_with_equal_definitions_share_one_after_a_replay_and_after_a_restore(
    models: ReadModels, log: EventLog
) -> None:
    jobs = [new_job(log, enabled=True), new_job(log, enabled=True), new_job(log, library=LIB_B, enabled=True)]
    jobs.append(new_job(log, name="Other", enabled=True))  # differs by its name only
    jobs.append(new_job(log, at=minutes(1), enabled=True))
    live = [job_bytes(models, job) for job in jobs]

    restored = ReadModels()
    restored.restore(*models.dump())
    for view in (models, restored):
        a, b, c, other, later = (view.jobs.rows[job.id] for job in jobs)
        assert a.definition is b.definition is c.definition is later.definition
        assert other.definition is not a.definition
        assert other.definition.config is a.definition.config
        assert a.library_id is b.library_id is other.library_id
        assert a.updated_at is a.created_at
        assert a.next_run_at is not None
        assert a.next_run_at is b.next_run_at is later.next_run_at
    assert [job_bytes(restored, job) for job in jobs] == live
    assert restored.jobs_json(LIB_A) == models.jobs_json(LIB_A)


def test_editing_a_job_that_shares_its_definition_changes_that_job_only(
    models: ReadModels, log: EventLog
) -> None:
    first, second = new_job(log), new_job(log)
    untouched = job_bytes(models, second)

    edit(log, first, at=minutes(1), name="Weekly", cron_schedule="0 5 * * 1", timezone=None)
    assert (job_dto(models, first).name, job_dto(models, first).cron_schedule) == ("Weekly", "0 5 * * 1")
    assert job_dto(models, first).timezone is None
    assert job_bytes(models, second) == untouched

    edit(log, first, at=minutes(2), name="Nightly", cron_schedule="0 4 * * *", timezone="Europe/Paris")
    assert models.jobs.rows[first.id].definition is models.jobs.rows[second.id].definition
    assert job_bytes(models, second) == untouched


def test_restored_rows_encode_as_replayed_ones_after_a_later_change(
    models: ReadModels, log: EventLog
) -> None:
    jobs = [new_job(log, enabled=True) for _ in range(3)]
    restored = ReadModels()
    restored.restore(*models.dump())

    edit(log, jobs[1], at=minutes(5), enabled=False)
    edit(log, jobs[2], at=minutes(6), name="Renamed")
    restored.apply(log.batches[-2] + log.batches[-1])
    assert [job_bytes(restored, job) for job in jobs] == [job_bytes(models, job) for job in jobs]
    assert restored.jobs_json(LIB_A) == models.jobs_json(LIB_A)


def test_definitions_that_no_job_has_any_more_are_forgotten(models: ReadModels, log: EventLog) -> None:
    job, other = new_job(log), new_job(log, name="Other")
    for n in range(3_000):
        edit(log, job, at=minutes(1 + n), name=f"Name {n}")
    assert len(models.jobs._definitions) <= 1_024  # not one per name this job ever had
    assert job_dto(models, job).name == "Name 2999"
    assert job_dto(models, other).name == "Other"
    again = new_job(log, name="Other")
    assert models.jobs.rows[again.id].definition is models.jobs.rows[other.id].definition


# --- catalog: libraries ------------------------------------------------------------------------------


def register(log: EventLog, library_id: UUID = LIB_A, name: str = "Manga", at: datetime = T0) -> Library:
    library = Library.register(library_id, name, at=at, **STAMP)
    log.save(library)
    return library


def library_dto(models: ReadModels, library_id: UUID) -> LibraryDto:
    raw = models.library_json(library_id)
    assert raw is not None
    return msgspec.json.decode(raw, type=LibraryDto)


def library_names(models: ReadModels) -> list[str]:
    return [
        lib.name for lib in msgspec.json.decode(models.libraries_json(), type=ListLibrariesResponse).libraries
    ]


def test_library_register_and_rename(models: ReadModels, log: EventLog) -> None:
    library = register(log)
    assert models.library_exists(LIB_A)
    assert library_dto(models, LIB_A) == LibraryDto(id=LIB_A, name="Manga", created_at=T0, updated_at=T0)

    assert library.upsert("Manga", at=minutes(1), **STAMP) is False  # same name: nothing recorded
    assert library.upsert("Comics", at=minutes(2), **STAMP) is True
    log.save(library)
    assert library_dto(models, LIB_A) == LibraryDto(
        id=LIB_A, name="Comics", created_at=T0, updated_at=minutes(2)
    )
    assert library_names(models) == ["Comics"]


def test_libraries_are_listed_by_creation(models: ReadModels, log: EventLog) -> None:
    register(log, LIB_B, "Second", at=minutes(1))
    first = register(log, LIB_A, "First", at=minutes(0))  # saved later, created earlier
    assert library_names(models) == ["First", "Second"]
    first.upsert("First, renamed", at=minutes(2), **STAMP)
    log.save(first)
    assert library_names(models) == ["First, renamed", "Second"]


def test_library_delete_and_register_again(models: ReadModels, log: EventLog) -> None:
    library = register(log)
    library.delete(at=minutes(1), **STAMP)
    log.save(library)
    assert not models.library_exists(LIB_A)
    assert models.library_json(LIB_A) is None
    assert models.libraries_json() == b'{"libraries":[]}'

    assert library.upsert("Manga", at=minutes(2), **STAMP) is True  # same name, but it was deleted
    log.save(library)
    assert library_dto(models, LIB_A) == LibraryDto(
        id=LIB_A, name="Manga", created_at=minutes(2), updated_at=minutes(2)
    )


# --- catalog: series and books -------------------------------------------------------------------------


def series_state(title: str, title_sort: str | None = None, **more: Any) -> dict[str, Any]:
    """The wire body as the HTTP layer stores it."""
    return msgspec.to_builtins(UpsertSeriesRequest(title=title, title_sort=title_sort, **more))


def add_series(
    log: EventLog, series_id: UUID, title: str, title_sort: str | None = None, library: UUID = LIB_A
) -> Series:
    series = Series.new(series_id, library, series_state(title, title_sort), at=T0, **STAMP)
    log.save(series)
    return series


def series_page(
    models: ReadModels, limit: int, cursor: str | None = None, library: UUID = LIB_A
) -> ListSeriesResponse:
    return msgspec.json.decode(models.series_page_json(library, cursor, limit), type=ListSeriesResponse)


def all_pages(models: ReadModels, limit: int, library: UUID = LIB_A) -> list[list[str]]:
    """Titles page by page, following `nextCursor` until it is null."""
    pages, cursor = [], None
    while True:
        page = series_page(models, limit, cursor, library)
        pages.append([s.title for s in page.series])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


def sid(n: int) -> UUID:
    return UUID(f"00000000-0000-4000-8000-{n:012d}")


# (id, title, titleSort), inserted in this order; the expected order is by titleSort (or title), case
# folded, then id: the two "apple"s tie, and the lower id wins although it was inserted second.
SEVEN = [
    (sid(5), "banana", None),
    (sid(9), "Apple", None),
    (sid(3), "cherry", None),
    (sid(4), "The Avocado", "Avocado"),
    (sid(2), "apple", None),
    (sid(8), "Zebra", None),
    (sid(7), "DATE", "date"),
]
SORTED_TITLES = ["apple", "Apple", "The Avocado", "banana", "cherry", "DATE", "Zebra"]


@pytest.fixture
def seven(log: EventLog) -> dict[str, Series]:
    register(log)
    return {title: add_series(log, series_id, title, title_sort) for series_id, title, title_sort in SEVEN}


@pytest.mark.usefixtures("seven")
@pytest.mark.parametrize(("limit", "sizes"), [(3, [3, 3, 1]), (1, [1] * 7), (6, [6, 1]), (7, [7]), (50, [7])])
def test_series_pages_in_title_sort_order(models: ReadModels, limit: int, sizes: list[int]) -> None:
    pages = all_pages(models, limit)
    assert [len(p) for p in pages] == sizes
    assert [title for page in pages for title in page] == SORTED_TITLES


@pytest.mark.usefixtures("seven")
def test_next_cursor_is_null_on_the_last_page(models: ReadModels) -> None:
    first = series_page(models, 4)
    assert first.next_cursor is not None
    assert series_page(models, 4, first.next_cursor).next_cursor is None


def test_series_dto(models: ReadModels, log: EventLog) -> None:
    register(log)
    state = series_state(
        "One Piece",
        metadata={"status": "ongoing"},
        locks=["status"],
        external_ids=[{"source": "plugin:mangabaka", "externalId": "42"}],
    )
    log.save(Series.new(sid(1), LIB_A, state, at=minutes(3), **STAMP))
    raw = models.series_json(LIB_A, sid(1))
    assert raw is not None
    dto = msgspec.json.decode(raw, type=SeriesDto)
    assert (dto.id, dto.library_id, dto.title, dto.title_sort) == (sid(1), LIB_A, "One Piece", "One Piece")
    assert (dto.metadata, dto.locks, dto.updated_at) == ({"status": "ongoing"}, ["status"], minutes(3))
    assert dto.external_ids[0].external_id == "42"
    assert series_page(models, 10).series == [dto]
    assert models.series_json(LIB_B, sid(1)) is None


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.usefixtures("seven")
@pytest.mark.parametrize(
    "cursor",
    ["nope", "!!!", "a", "é", b64(b'{"title": "x"}'), b64(b'["only one"]'), b64(b"[1, 2]"), b64(b"\xff\xfe")],
)
def test_a_bad_cursor_is_refused(models: ReadModels, cursor: str) -> None:
    with pytest.raises(BadCursor):
        models.series_page_json(LIB_A, cursor, 3)


def test_series_moved_or_deleted_disappear_from_pages(
    models: ReadModels, log: EventLog, seven: dict[str, Series]
) -> None:
    register(log, LIB_B, "Other")
    moved, deleted = seven["cherry"], seven["banana"]
    moved.upsert(LIB_B, series_state("cherry"), at=minutes(1), **STAMP)
    deleted.delete(at=minutes(1), **STAMP)
    log.save(moved, deleted)

    remaining = [t for t in SORTED_TITLES if t not in {"cherry", "banana"}]
    assert [title for page in all_pages(models, 2) for title in page] == remaining
    assert all_pages(models, 2, LIB_B) == [["cherry"]]
    assert models.series_json(LIB_A, moved.item_id) is None
    assert models.series_json(LIB_B, moved.item_id) is not None
    assert models.series_json(LIB_A, deleted.item_id) is None


def test_a_retitled_series_moves_in_the_order(
    models: ReadModels, log: EventLog, seven: dict[str, Series]
) -> None:
    zebra = seven["Zebra"]
    zebra.upsert(LIB_A, series_state("Aardvark"), at=minutes(1), **STAMP)
    log.save(zebra)
    assert all_pages(models, 3)[0] == ["Aardvark", "apple", "Apple"]


def test_a_cursor_still_works_after_its_series_is_deleted(
    models: ReadModels, log: EventLog, seven: dict[str, Series]
) -> None:
    first = series_page(models, 3)
    last_seen = seven[first.series[-1].title]
    last_seen.delete(at=minutes(1), **STAMP)
    log.save(last_seen)
    assert [s.title for s in series_page(models, 3, first.next_cursor).series] == SORTED_TITLES[3:6]


def test_books_are_paged_apart_from_series(models: ReadModels, log: EventLog) -> None:
    register(log)
    series = add_series(log, sid(1), "One Piece")
    for n, title in ((11, "Volume 2"), (12, "volume 1")):
        state = msgspec.to_builtins(UpsertBookRequest(series_id=series.item_id, title=title))
        log.save(Book.new(sid(n), LIB_A, state, at=T0, **STAMP))

    books = msgspec.json.decode(models.books_page_json(LIB_A, None, 10), type=ListBooksResponse)
    assert [(b.title, b.series_id) for b in books.books] == [("volume 1", sid(1)), ("Volume 2", sid(1))]
    assert books.next_cursor is None
    raw = models.book_json(LIB_A, sid(11))
    assert raw is not None
    assert msgspec.json.decode(raw, type=BookDto).title == "Volume 2"
    assert [s.title for s in series_page(models, 10).series] == ["One Piece"]


def test_library_contents(models: ReadModels, log: EventLog, seven: dict[str, Series]) -> None:
    first, second = new_job(log, at=minutes(1)), new_job(log, at=minutes(2))
    new_job(log, library=LIB_B)
    state = msgspec.to_builtins(UpsertBookRequest(series_id=sid(5), title="Volume 1"))
    log.save(Book.new(sid(20), LIB_A, state, at=T0, **STAMP))

    contents = models.library_contents(LIB_A)
    assert contents.job_ids == (first.id, second.id)
    by_title = {title: series.item_id for title, series in seven.items()}
    assert contents.series_ids == tuple(by_title[t] for t in SORTED_TITLES)
    assert contents.book_ids == (sid(20),)
    assert models.library_contents(UUID(int=0)) == type(contents)(job_ids=(), series_ids=(), book_ids=())
