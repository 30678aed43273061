"""The audit routes (SPEC §8) on a real service over SQLite and PostgreSQL, served by uvicorn and read as a
client would: `GET /audit/events` (pages, cursors, filters), a job's `history` and its `versions/{n}`."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from projections.envelopes import envelope
from service.adapters.nats.relay import Origins
from service.adapters.store import StoreReader
from service.bootstrap import Service
from service.settings import ApiKeySpec
from tests.integration.harness import PROVIDER, ctx, make_settings, served_over_http, stored

pytestmark = pytest.mark.integration

API = "/api/v1"
AUDITOR_KEY = "lj_audit_auditor_0123456789"
ADMIN_KEY = "lj_audit_admin_0123456789"
READER_KEY = "lj_audit_reader_0123456789"  # jobs:read only: no audit:read
KEYS = (
    ApiKeySpec("auditor", hashlib.sha256(AUDITOR_KEY.encode()).hexdigest(), frozenset({"audit:read"})),
    ApiKeySpec("admin", hashlib.sha256(ADMIN_KEY.encode()).hexdigest(), frozenset({"admin"})),
    ApiKeySpec("reader", hashlib.sha256(READER_KEY.encode()).hexdigest(), frozenset({"jobs:read"})),
)
WAIT_S = 10


@dataclass
class Served:
    url: str
    service: Service

    def client(self, key: str | None = AUDITOR_KEY) -> httpx.AsyncClient:
        headers = {} if key is None else {"X-API-Key": key}
        return httpx.AsyncClient(base_url=self.url + API, headers=headers, timeout=WAIT_S)

    def relayed(self) -> list[dict[str, Any]]:
        """Every stored event as the relay publishes it (its envelope, decoded)."""
        reader = StoreReader(self.service.commands)
        origins = Origins(reader.first_event)
        return [
            msgspec.json.decode(msgspec.json.encode(envelope(position, event, origins.of(event))))
            for position, event in stored(self.service)
        ]

    async def record_run(self, job_id: str) -> None:
        """Records a finished run as the executor does (not a user change: no new version)."""
        started = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
        svc = self.service
        saved, _ = await svc.run_sync(
            svc.commands.record_run,
            uuid.UUID(job_id),
            uuid.uuid4(),
            "success",
            "Refreshed 3 of 3 series",
            started,
            started + timedelta(seconds=30),
            {"planned": 3, "done": 3, "succeeded": 3},
            ctx(),
        )
        await svc.follower.wait_for(saved.position)


@pytest.fixture
async def served(tmp_path: Path, database_url: str | None) -> AsyncIterator[Served]:
    settings = make_settings(tmp_path, database_url, api_keys=KEYS)
    async with served_over_http(settings) as (url, service, _live):
        yield Served(url, service)


@pytest.fixture
async def admin(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with served.client(ADMIN_KEY) as c:
        yield c


@pytest.fixture
async def auditor(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with served.client() as c:
        yield c


async def new_library(admin: httpx.AsyncClient, name: str = "Manga") -> str:
    library_id = str(uuid.uuid4())
    response = await admin.put(f"/libraries/{library_id}", json={"name": name})
    assert response.status_code == 201, response.text
    return library_id


async def new_job(admin: httpx.AsyncClient, library_id: str, name: str = "Nightly") -> httpx.Response:
    body = {
        "name": name,
        "cronSchedule": "0 4 * * *",
        "config": {"type": "metadata_refresh", "provider": PROVIDER},
    }
    response = await admin.post(f"/libraries/{library_id}/jobs", json=body)
    assert response.status_code == 201, response.text
    return response


async def patch(admin: httpx.AsyncClient, library_id: str, job_id: str, **body: Any) -> httpx.Response:
    response = await admin.patch(f"/libraries/{library_id}/jobs/{job_id}", json=body)
    assert response.status_code == 200, response.text
    return response


async def put_series(admin: httpx.AsyncClient, library_id: str, title: str) -> str:
    series_id = str(uuid.uuid4())
    response = await admin.put(f"/libraries/{library_id}/series/{series_id}", json={"title": title})
    assert response.status_code == 201, response.text
    return series_id


async def all_pages(auditor: httpx.AsyncClient, **query: Any) -> tuple[list[dict[str, Any]], list[int]]:
    """Follows `nextCursor` to the end: every event and each page's size."""
    events: list[dict[str, Any]] = []
    sizes: list[int] = []
    params = dict(query)
    for _ in range(10_000):
        response = await auditor.get("/audit/events", params=params)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert set(body) == {"events", "nextCursor"}
        events += body["events"]
        sizes.append(len(body["events"]))
        if body["nextCursor"] is None:
            return events, sizes
        params = {k: v for k, v in query.items() if k != "after"} | {"cursor": body["nextCursor"]}
    raise AssertionError("nextCursor never became null")


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


async def a_small_world(admin: httpx.AsyncClient) -> dict[str, str]:
    """Two libraries, each with jobs and a series, written interleaved."""
    manga, comics = await new_library(admin, "Manga"), await new_library(admin, "Comics")
    one = (await new_job(admin, manga, "one")).json()["id"]
    other = (await new_job(admin, comics, "other")).json()["id"]
    series = await put_series(admin, manga, "Berserk")
    await patch(admin, manga, one, name="one, renamed")
    await patch(admin, comics, other, enabled=True)
    await put_series(admin, comics, "Saga")
    two = (await new_job(admin, manga, "two")).json()["id"]
    response = await admin.delete(f"/libraries/{manga}/jobs/{one}")
    assert response.status_code == 204, response.text
    return {"manga": manga, "comics": comics, "one": one, "two": two, "other": other, "series": series}


# --- GET /audit/events --------------------------------------------------------------------------------------


async def test_pages_hold_every_stored_event_in_global_order_as_the_relay_publishes_it(
    served: Served, admin: httpx.AsyncClient, auditor: httpx.AsyncClient
) -> None:
    await a_small_world(admin)
    expected = served.relayed()
    assert len(expected) == 10

    events, sizes = await all_pages(auditor, limit=3)

    assert events == expected
    assert all(size == 3 for size in sizes[:-1])
    positions = [e["position"] for e in events]
    assert positions == sorted(positions)
    first = events[0]
    assert set(first) == {
        "type", "eventId", "jobId", "libraryId", "version", "position", "occurredAt", "actor", "data",
        "aggregateId", "aggregateType",
    }  # fmt: skip
    assert first["type"] == "LibraryRegistered"
    assert first["actor"] == "key:admin"


async def test_after_starts_after_a_position_and_the_default_page_is_50(
    served: Served, admin: httpx.AsyncClient, auditor: httpx.AsyncClient
) -> None:
    await a_small_world(admin)
    expected = served.relayed()
    middle = expected[4]["position"]

    after = await auditor.get("/audit/events", params={"after": middle, "limit": 500})
    everything = await auditor.get("/audit/events")

    assert after.json() == {"events": expected[5:], "nextCursor": None}
    assert everything.json() == {"events": expected, "nextCursor": None}  # fewer than 50 events
    end = await auditor.get("/audit/events", params={"after": expected[-1]["position"] + 100})
    assert end.json() == {"events": [], "nextCursor": None}


async def test_a_cursor_stays_valid_while_events_are_added(
    served: Served, admin: httpx.AsyncClient, auditor: httpx.AsyncClient
) -> None:
    world = await a_small_world(admin)
    before = served.relayed()
    first = (await auditor.get("/audit/events", params={"limit": len(before)})).json()
    assert first["events"] == before
    assert first["nextCursor"] is None  # the end of the store: continue with `after` the last position

    await patch(admin, world["manga"], world["two"], name="two, renamed")
    later = await auditor.get("/audit/events", params={"after": before[-1]["position"]})

    assert [e["type"] for e in later.json()["events"]] == ["JobUpdated"]


async def test_the_job_filter_gives_exactly_that_jobs_events(
    served: Served, admin: httpx.AsyncClient, auditor: httpx.AsyncClient
) -> None:
    world = await a_small_world(admin)
    expected = [e for e in served.relayed() if e["jobId"] == world["one"]]

    events, _ = await all_pages(auditor, jobId=world["one"], limit=2)

    assert events == expected
    assert [e["type"] for e in events] == ["JobCreated", "JobUpdated", "JobDeleted"]
    unknown, _ = await all_pages(auditor, jobId=str(uuid.uuid4()))
    assert unknown == []
    # a job of another library: no event passes both filters
    mismatch, _ = await all_pages(auditor, jobId=world["one"], libraryId=world["comics"])
    assert mismatch == []
    matching, _ = await all_pages(auditor, jobId=world["one"], libraryId=world["manga"], type="JobUpdated")
    assert [e["type"] for e in matching] == ["JobUpdated"]


async def test_the_library_filter_gives_its_library_jobs_series_events(
    served: Served, admin: httpx.AsyncClient, auditor: httpx.AsyncClient
) -> None:
    world = await a_small_world(admin)
    expected = [e for e in served.relayed() if e["libraryId"] == world["manga"]]

    events, _ = await all_pages(auditor, libraryId=world["manga"], limit=2)

    assert events == expected
    assert {e["aggregateType"] for e in events} == {"library", "job", "series"}
    assert {e["aggregateId"] for e in events} == {world["manga"], world["one"], world["two"], world["series"]}


async def test_the_type_filter_takes_one_type_or_a_comma_separated_list(
    served: Served, admin: httpx.AsyncClient, auditor: httpx.AsyncClient
) -> None:
    world = await a_small_world(admin)
    relayed = served.relayed()

    created, _ = await all_pages(auditor, type="JobCreated")
    lifecycle, _ = await all_pages(auditor, type="JobCreated, JobDeleted", limit=1)
    manga_series, _ = await all_pages(auditor, type="SeriesUpserted", libraryId=world["manga"])

    assert created == [e for e in relayed if e["type"] == "JobCreated"]
    assert len(created) == 3
    assert lifecycle == [e for e in relayed if e["type"] in ("JobCreated", "JobDeleted")]
    assert [e["aggregateId"] for e in manga_series] == [world["series"]]


async def test_a_page_scans_a_bounded_stretch_of_the_store_and_says_where_to_go_on(
    served: Served, admin: httpx.AsyncClient, auditor: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("service.adapters.audit.SCAN_BOUND", 4)
    world = await a_small_world(admin)
    relayed = served.relayed()

    events, sizes = await all_pages(auditor, type="JobDeleted")
    by_library, library_sizes = await all_pages(auditor, libraryId=world["comics"], limit=500)

    assert events == [e for e in relayed if e["type"] == "JobDeleted"]
    assert 0 in sizes  # a page that found nothing still continued
    assert by_library == [e for e in relayed if e["libraryId"] == world["comics"]]
    assert len(library_sizes) >= len(relayed) // 4
    first = (await auditor.get("/audit/events", params={"type": "JobDeleted"})).json()
    assert first["events"] == []
    assert first["nextCursor"] is not None


@pytest.mark.parametrize(
    ("query", "field", "code"),
    [
        ({"type": "JobExploded"}, "type", "invalid_value"),
        ({"type": "JobCreated,Nope"}, "type", "invalid_value"),
        ({"cursor": "not-a-cursor"}, "cursor", "invalid_cursor"),
        ({"cursor": "YWZ0ZXI6LTE"}, "cursor", "invalid_cursor"),  # after:-1
        ({"after": "1", "cursor": "YWZ0ZXI6MQ"}, "cursor", "mutually_exclusive"),
        ({"after": "-1"}, "after", None),
        ({"after": "x"}, "after", None),
        ({"limit": "0"}, "limit", None),
        ({"limit": "501"}, "limit", None),
        ({"jobId": "not-a-uuid"}, "jobId", None),
        ({"libraryId": "42"}, "libraryId", "invalid_value"),
    ],
)
async def test_bad_queries_are_400_naming_the_parameter(
    auditor: httpx.AsyncClient, query: dict[str, str], field: str, code: str | None
) -> None:
    body = error(await auditor.get("/audit/events", params=query), 400)

    assert body["error"] == "BadRequest"
    assert body["details"]["field"] == field
    if code is not None:
        assert body["details"]["code"] == code


async def test_the_audit_routes_need_credentials_and_the_audit_scope(
    served: Served, admin: httpx.AsyncClient
) -> None:
    library = await new_library(admin)
    job = (await new_job(admin, library)).json()["id"]
    paths = [
        "/audit/events",
        f"/libraries/{library}/jobs/{job}/history",
        f"/libraries/{library}/jobs/{job}/versions/1",
    ]
    async with served.client(None) as anonymous, served.client(READER_KEY) as reader:
        for path in paths:
            assert error(await anonymous.get(path), 401)["error"] == "Unauthorized"
            assert error(await reader.get(path), 403)["error"] == "Forbidden"
            assert (await admin.get(path)).status_code == 200


# --- history ------------------------------------------------------------------------------------------------


async def test_a_jobs_history_is_its_events_oldest_first_also_after_its_deletion(
    served: Served, admin: httpx.AsyncClient, auditor: httpx.AsyncClient
) -> None:
    library = await new_library(admin)
    job = (await new_job(admin, library)).json()["id"]
    await patch(admin, library, job, name="renamed", enabled=True)
    await served.record_run(job)
    path = f"/libraries/{library}/jobs/{job}/history"

    live = await auditor.get(path)
    response = await admin.delete(f"/libraries/{library}/jobs/{job}")
    assert response.status_code == 204
    deleted = await auditor.get(path)

    assert live.status_code == 200, live.text
    assert [e["type"] for e in live.json()["events"]] == [
        "JobCreated",
        "JobUpdated",
        "JobEnabled",
        "RunFinished",
    ]
    assert deleted.status_code == 200, deleted.text
    history = deleted.json()["events"]
    assert set(deleted.json()) == {"events"}
    assert history[:-1] == live.json()["events"]
    assert history[-1]["type"] == "JobDeleted"
    assert history == [e for e in served.relayed() if e["jobId"] == job]
    assert [e["version"] for e in history] == list(range(1, len(history) + 1))


async def test_history_is_404_for_an_unknown_job_and_for_another_librarys(
    admin: httpx.AsyncClient, auditor: httpx.AsyncClient
) -> None:
    library, other = await new_library(admin), await new_library(admin, "Other")
    job = (await new_job(admin, library)).json()["id"]

    unknown = await auditor.get(f"/libraries/{library}/jobs/{uuid.uuid4()}/history")
    elsewhere = await auditor.get(f"/libraries/{other}/jobs/{job}/history")
    # a catalog aggregate's id is never a job's
    library_as_job = await auditor.get(f"/libraries/{library}/jobs/{library}/history")

    for response in (unknown, elsewhere, library_as_job):
        assert error(response, 404)["message"] == "Job not found"


# --- versions -----------------------------------------------------------------------------------------------


async def test_each_version_is_byte_identical_to_what_the_read_model_served_after_that_change(
    served: Served, admin: httpx.AsyncClient, auditor: httpx.AsyncClient
) -> None:
    library = await new_library(admin)
    created = await new_job(admin, library)
    job = created.json()["id"]
    job_uuid, library_uuid = uuid.UUID(job), uuid.UUID(library)

    def served_now() -> bytes:
        found = served.service.models.job_json(library_uuid, job_uuid)
        assert found is not None
        return found[0]

    seen = {1: served_now()}
    assert created.content == seen[1]
    await patch(admin, library, job, name="second")
    seen[2] = served_now()
    await served.record_run(job)  # a run changes `lastRun*`, not the version
    after_run = served_now()
    patched = await patch(admin, library, job, name="third", enabled=True)  # Updated + Enabled, one version
    seen[3] = served_now()
    assert patched.content == seen[3]
    await patch(admin, library, job, cronSchedule="30 5 * * *", timezone="Europe/Paris")
    seen[4] = served_now()
    assert after_run != seen[2]
    assert len(set(seen.values())) == 4

    for version, body in seen.items():
        response = await auditor.get(f"/libraries/{library}/jobs/{job}/versions/{version}")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.content == body, version
        assert response.json()["version"] == version
    assert (await auditor.get(f"/libraries/{library}/jobs/{job}/versions/3")).json()[
        "lastRunStatus"
    ] == "success"
    assert (await auditor.get(f"/libraries/{library}/jobs/{job}/versions/2")).json()["lastRunStatus"] is None

    for missing in (0, 5, 99):
        body = error(await auditor.get(f"/libraries/{library}/jobs/{job}/versions/{missing}"), 404)
        assert body["message"] == f"Job version {missing} not found"

    response = await admin.delete(f"/libraries/{library}/jobs/{job}")
    assert response.status_code == 204
    after_delete = await auditor.get(f"/libraries/{library}/jobs/{job}/versions/2")
    assert after_delete.content == seen[2]  # a deleted job's versions stay readable
    error(await auditor.get(f"/libraries/{library}/jobs/{job}/versions/5"), 404)  # the deletion's version


async def test_versions_are_404_for_an_unknown_job_and_for_another_librarys(
    admin: httpx.AsyncClient, auditor: httpx.AsyncClient
) -> None:
    library, other = await new_library(admin), await new_library(admin, "Other")
    job = (await new_job(admin, library)).json()["id"]

    for path in (
        f"/libraries/{library}/jobs/{uuid.uuid4()}/versions/1",
        f"/libraries/{other}/jobs/{job}/versions/1",
    ):
        assert error(await auditor.get(path), 404)["message"] == "Job not found"
    error(await auditor.get(f"/libraries/{library}/jobs/{job}/versions/x"), 404)  # not a version number
