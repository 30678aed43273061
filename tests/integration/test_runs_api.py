"""`GET …/jobs/{jobId}/runs`, `GET …/runs/{runId}` and the live `run.changed` message (SPEC §2.2, §2.6) on a
real service over SQLite, served by uvicorn on a real port and read as a client would."""

from __future__ import annotations

import asyncio
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

from contracts.live import LiveEvent, RunChanged
from contracts.runs import RunDto
from service.bootstrap import Service
from service.settings import ApiKeySpec
from tests.integration.harness import PROVIDER, ctx, make_settings, served_over_http
from tests.integration.test_sse import Stream, subscribed
from tests.support.spec import RUN_KEYS

pytestmark = pytest.mark.integration

API = "/api/v1"
READER_KEY = "lj_runs_reader_0123456789"
WRITER_KEY = "lj_runs_writer_0123456789"
CATALOG_KEY = "lj_runs_catalog_0123456789"  # no jobs:read
KEYS = (
    ApiKeySpec("reader", hashlib.sha256(READER_KEY.encode()).hexdigest(), frozenset({"jobs:read"})),
    ApiKeySpec("writer", hashlib.sha256(WRITER_KEY.encode()).hexdigest(), frozenset({"admin"})),
    ApiKeySpec("catalog", hashlib.sha256(CATALOG_KEY.encode()).hexdigest(), frozenset({"catalog:write"})),
)
WAIT_S = 10


@dataclass
class Served:
    url: str
    service: Service

    def client(self, key: str | None = READER_KEY, *, base: str = API) -> httpx.AsyncClient:
        headers = {} if key is None else {"X-API-Key": key}
        return httpx.AsyncClient(base_url=self.url + base, headers=headers, timeout=WAIT_S)

    async def record(self, job_id: str, run_id: str, status: str = "success", minute: int = 0) -> None:
        """Records a run's outcome as the executor (or NATS `run.record`) does, and waits until it is read."""
        started = datetime(2026, 3, 1, 10, minute, tzinfo=UTC)
        svc = self.service
        saved, _ = await svc.run_sync(
            svc.commands.record_run,
            uuid.UUID(job_id),
            uuid.UUID(run_id),
            status,
            f"{status} message",
            started,
            started + timedelta(seconds=30),
            {"planned": 3, "done": 3, "succeeded": 3},
            ctx(),
        )
        await svc.follower.wait_for(saved.position)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with served_over_http(make_settings(tmp_path, None, api_keys=KEYS)) as (url, service, _live):
        yield Served(url, service)


async def new_library(writer: httpx.AsyncClient) -> str:
    library_id = str(uuid.uuid4())
    response = await writer.put(f"/libraries/{library_id}", json={"name": "Manga"})
    assert response.status_code == 201, response.text
    return library_id


async def new_job(writer: httpx.AsyncClient, library_id: str, name: str = "Nightly") -> str:
    body = {
        "name": name,
        "cronSchedule": "0 4 * * *",
        "config": {"type": "metadata_refresh", "provider": PROVIDER},
    }
    response = await writer.post(f"/libraries/{library_id}/jobs", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def run_now(writer: httpx.AsyncClient, library_id: str, job_id: str) -> str:
    response = await writer.post(f"/libraries/{library_id}/jobs/{job_id}/run-now")
    assert response.status_code == 200, response.text
    return str(response.json()["taskId"])


def runs_path(library_id: str, job_id: str, run_id: str | None = None) -> str:
    path = f"/libraries/{library_id}/jobs/{job_id}/runs"
    return path if run_id is None else f"{path}/{run_id}"


def error(response: httpx.Response, status: int, message: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    if message is not None:
        assert body["message"] == message, body
    return body


# --- the routes -------------------------------------------------------------------------------------------


async def test_a_run_now_is_listed_queued_and_can_be_read_alone(served: Served) -> None:
    async with served.client(WRITER_KEY) as writer, served.client() as reader:
        library_id = await new_library(writer)
        job_id = await new_job(writer, library_id)
        run_id = await run_now(writer, library_id, job_id)

        listed = await reader.get(runs_path(library_id, job_id))
        single = await reader.get(runs_path(library_id, job_id, run_id))

    assert listed.status_code == 200, listed.text
    assert listed.headers["content-type"] == "application/json"
    body = listed.json()
    assert list(body) == ["runs", "nextCursor"]
    assert body["nextCursor"] is None
    [run] = body["runs"]
    assert list(run) == list(RUN_KEYS)
    assert {k: run[k] for k in ("id", "jobId", "libraryId", "trigger", "scheduledFor", "status")} == {
        "id": run_id,
        "jobId": job_id,
        "libraryId": library_id,
        "trigger": "manual",
        "scheduledFor": None,
        "status": "queued",
    }
    assert (run["startedAt"], run["finishedAt"], run["message"], run["attempt"]) == (None, None, None, 0)
    assert run["requestedAt"].endswith("Z")
    assert single.status_code == 200, single.text
    assert single.json() == run
    msgspec.json.decode(single.content, type=RunDto)


async def test_runs_are_paged_newest_first(served: Served) -> None:
    async with served.client(WRITER_KEY) as writer, served.client() as reader:
        library_id = await new_library(writer)
        job_id = await new_job(writer, library_id)
        ids = []
        for minute in range(3):
            run_id = await run_now(writer, library_id, job_id)
            await served.record(job_id, run_id, minute=minute)
            ids.append(run_id)
        ids.append(await run_now(writer, library_id, job_id))  # queued

        first = (await reader.get(runs_path(library_id, job_id), params={"limit": 3})).json()
        second = (
            await reader.get(
                runs_path(library_id, job_id), params={"limit": 3, "cursor": first["nextCursor"]}
            )
        ).json()
        finished = (await reader.get(runs_path(library_id, job_id, ids[0]))).json()

    assert [r["id"] for r in first["runs"]] == ids[::-1][:3]
    assert first["nextCursor"] is not None
    assert ([r["id"] for r in second["runs"]], second["nextCursor"]) == ([ids[0]], None)
    assert [r["status"] for r in first["runs"]] == ["queued", "success", "success"]
    assert (finished["status"], finished["message"], finished["attempt"]) == ("success", "success message", 1)
    assert finished["progress"] == {"planned": 3, "done": 3, "succeeded": 3, "failed": 0, "skipped": 0}


async def test_a_job_or_run_that_is_not_there_is_404(served: Served) -> None:
    async with served.client(WRITER_KEY) as writer, served.client() as reader:
        library_id, other_library = await new_library(writer), await new_library(writer)
        job_id, other_job = await new_job(writer, library_id), await new_job(writer, library_id, "Other")
        run_id = await run_now(writer, library_id, job_id)
        unknown = str(uuid.uuid4())

        # the job is not that library's: 404 for its list and its runs alike
        error(await reader.get(runs_path(other_library, job_id)), 404, "Job not found")
        error(await reader.get(runs_path(other_library, job_id, run_id)), 404, "Job not found")
        error(await reader.get(runs_path(library_id, unknown)), 404, "Job not found")
        error(await reader.get(runs_path(library_id, unknown, run_id)), 404, "Job not found")
        # the job is there, the run is not one of its runs
        error(await reader.get(runs_path(library_id, job_id, unknown)), 404, "Run not found")
        error(await reader.get(runs_path(library_id, other_job, run_id)), 404, "Run not found")
        assert (await reader.get(runs_path(library_id, other_job))).json() == {"runs": [], "nextCursor": None}
        # a deleted job's runs are gone with it
        assert (await writer.delete(f"/libraries/{library_id}/jobs/{job_id}")).status_code == 204
        error(await reader.get(runs_path(library_id, job_id)), 404, "Job not found")
        body = error(await reader.get(runs_path(library_id, job_id, run_id)), 404, "Job not found")
    assert body["error"] == "NotFound"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "!!!"}, "cursor"),
    ],
)
async def test_bad_paging_parameters_are_a_json_400(
    served: Served, params: dict[str, Any], field: str
) -> None:
    async with served.client(WRITER_KEY) as writer, served.client() as reader:
        library_id = await new_library(writer)
        job_id = await new_job(writer, library_id)
        await run_now(writer, library_id, job_id)

        body = error(await reader.get(runs_path(library_id, job_id), params=params), 400)
        limits = [
            (await reader.get(runs_path(library_id, job_id), params={"limit": n})).status_code
            for n in (1, 500)
        ]

    assert body["error"] == "BadRequest"
    assert body["details"]["field"] == field
    assert limits == [200, 200]


@pytest.mark.parametrize(("key", "status"), [(None, 401), (CATALOG_KEY, 403)])
async def test_the_routes_need_the_jobs_read_scope(served: Served, key: str | None, status: int) -> None:
    async with served.client(WRITER_KEY) as writer, served.client(key) as client:
        library_id = await new_library(writer)
        job_id = await new_job(writer, library_id)
        run_id = await run_now(writer, library_id, job_id)

        for path in (runs_path(library_id, job_id), runs_path(library_id, job_id, run_id)):
            body = error(await client.get(path), status)
            assert body["error"] == ("Unauthorized" if status == 401 else "Forbidden")


# --- run.changed ------------------------------------------------------------------------------------------


async def next_run_change(stream: Stream) -> tuple[dict[str, str], RunChanged]:
    """The next message that is not a keep-alive (keep-alives come every 0.2 s), within `WAIT_S`."""

    async def change() -> dict[str, str]:
        while "comment" in (message := await stream.next()):
            assert message == {"comment": "keep-alive"}
        return message

    message = await asyncio.wait_for(change(), WAIT_S)
    decoded = msgspec.json.decode(message["data"], type=LiveEvent)
    assert isinstance(decoded, RunChanged), decoded
    return message, decoded


async def test_a_subscriber_hears_of_a_run_as_it_is_requested_and_finished(served: Served) -> None:
    async with served.client(WRITER_KEY) as writer, served.client() as reader:
        library_id = await new_library(writer)
        other_library = await new_library(writer)
        job_id = await new_job(writer, library_id)
        elsewhere = await new_job(writer, other_library)
        sse = served.client(base="")  # `subscribed` names the whole path
        async with sse, subscribed(sse, types="run.changed", libraryId=library_id) as stream:
            await run_now(writer, other_library, elsewhere)  # another library's run: filtered out
            run_id = await run_now(writer, library_id, job_id)

            message, change = await next_run_change(stream)
            assert message["event"] == "run.changed"
            assert int(message["id"]) == change.position
            assert (str(change.library_id), str(change.job_id), str(change.run_id)) == (
                library_id,
                job_id,
                run_id,
            )
            assert change.run is not None
            got = await reader.get(runs_path(library_id, job_id, run_id))
            assert msgspec.to_builtins(change.run) == got.json()  # what a GET answers
            assert (change.run.status, change.run.trigger) == ("queued", "manual")
            requested_at = change.position

            await served.record(job_id, run_id, "partial")
            message, change = await next_run_change(stream)
            assert (str(change.run_id), change.position > requested_at) == (run_id, True)
            assert change.run is not None
            assert (change.run.status, change.run.message) == ("partial", "partial message")

            assert (await writer.delete(f"/libraries/{library_id}/jobs/{job_id}")).status_code == 204
            message, change = await next_run_change(stream)
            assert (str(change.run_id), change.run) == (run_id, None)
            assert '"run":null' in message["data"]
