"""`GET /api/v1/events` (SPEC §2.2) served by uvicorn on a real port, over a SQLite store, read as a client
would read a Server-Sent Events stream."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from contracts.jobs import LibraryJobDto
from contracts.live import JobChanged, LiveEvent
from service.adapters.live import LiveEvents
from service.settings import ApiKeySpec
from tests.integration.harness import PROVIDER, make_settings, served_over_http

pytestmark = pytest.mark.integration

EVENTS = "/api/v1/events"
READER_KEY = "lj_sse_reader_0123456789"
WRITER_KEY = "lj_sse_writer_0123456789"
CATALOG_KEY = "lj_sse_catalog_0123456789"  # no jobs:read
KEYS = (
    ApiKeySpec("reader", hashlib.sha256(READER_KEY.encode()).hexdigest(), frozenset({"jobs:read"})),
    ApiKeySpec("writer", hashlib.sha256(WRITER_KEY.encode()).hexdigest(), frozenset({"admin"})),
    ApiKeySpec("catalog", hashlib.sha256(CATALOG_KEY.encode()).hexdigest(), frozenset({"catalog:write"})),
)
WAIT_S = 10


@dataclass
class Served:
    url: str
    live: LiveEvents

    def client(self, key: str | None = READER_KEY) -> httpx.AsyncClient:
        headers = {} if key is None else {"X-API-Key": key}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=WAIT_S)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with served_over_http(make_settings(tmp_path, None, api_keys=KEYS)) as (url, _service, live):
        yield Served(url, live)


class Stream:
    """The messages of one open `text/event-stream` response: fields by name, a comment as `comment`."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self) -> dict[str, str]:
        return await asyncio.wait_for(self._next(), WAIT_S)

    async def _next(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        async for line in self._lines:
            if not line:
                if fields:
                    return fields
                continue
            name, _, value = line.partition(":")
            fields[name or "comment"] = value.removeprefix(" ")
        raise StopAsyncIteration

    async def change(self) -> tuple[dict[str, str], JobChanged]:
        """The next message that is not a keep-alive, decoded."""
        while "comment" in (message := await self.next()):
            assert message == {"comment": "keep-alive"}
        decoded = msgspec.json.decode(message["data"], type=LiveEvent)
        assert isinstance(decoded, JobChanged)
        return message, decoded


@contextlib.asynccontextmanager
async def subscribed(client: httpx.AsyncClient, **params: str) -> AsyncIterator[Stream]:
    async with client.stream("GET", EVENTS, params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        stream = Stream(response)
        assert await stream.next() == {"comment": "subscribed"}  # from here on, every change is sent
        yield stream


async def new_library(writer: httpx.AsyncClient) -> str:
    library_id = str(uuid.uuid4())
    response = await writer.put(f"/api/v1/libraries/{library_id}", json={"name": "Manga"})
    assert response.status_code == 201, response.text
    return library_id


async def new_job(writer: httpx.AsyncClient, library_id: str, **fields: Any) -> dict[str, Any]:
    body = {
        "cronSchedule": "0 4 * * *",
        "config": {"type": "metadata_refresh", "provider": PROVIDER},
        **fields,
    }
    response = await writer.post(f"/api/v1/libraries/{library_id}/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_a_subscriber_hears_of_a_create_a_patch_and_a_delete(served: Served) -> None:
    async with served.client(WRITER_KEY) as writer, served.client() as reader, subscribed(reader) as stream:
        library_id = await new_library(writer)
        created = await new_job(writer, library_id, name="Nightly")
        job_path = f"/api/v1/libraries/{library_id}/jobs/{created['id']}"

        message, change = await stream.change()
        assert message["event"] == "job.changed"
        assert int(message["id"]) == change.position
        assert (change.library_id, change.job_id, change.deleted) == (
            uuid.UUID(library_id),
            uuid.UUID(created["id"]),
            False,
        )
        assert change.job == msgspec.json.decode(msgspec.json.encode(created), type=LibraryJobDto)

        patched = await writer.patch(job_path, json={"name": "Weekly", "enabled": True})  # two events
        assert patched.status_code == 200, patched.text
        message, change = await stream.change()  # one message, with both
        assert change.job is not None
        assert msgspec.to_builtins(change.job) == patched.json()
        assert (change.job.name, change.job.enabled, change.job.version) == ("Weekly", True, 2)
        patch_position = change.position

        deleted = await writer.delete(job_path)
        assert deleted.status_code == 204, deleted.text
        message, change = await stream.change()
        assert (change.job_id, change.deleted, change.job) == (uuid.UUID(created["id"]), True, None)
        assert change.position > patch_position
        assert '"job":null' in message["data"]


async def test_a_library_filter_sends_only_that_librarys_jobs(served: Served) -> None:
    async with served.client(WRITER_KEY) as writer, served.client() as reader:
        mine, other = await new_library(writer), await new_library(writer)
        async with subscribed(reader, libraryId=mine) as stream:
            await new_job(writer, other, name="Other")
            ours = await new_job(writer, mine, name="Mine")

            _, change = await stream.change()

    assert (str(change.library_id), str(change.job_id)) == (mine, ours["id"])


async def test_a_type_filter_and_keep_alives(served: Served) -> None:
    async with served.client(WRITER_KEY) as writer, served.client() as reader:
        library_id = await new_library(writer)
        async with subscribed(reader, types="run.changed") as stream:
            await new_job(writer, library_id)

            assert await stream.next() == {"comment": "keep-alive"}  # and no job.changed before it


async def test_closing_the_feed_ends_open_streams(served: Served) -> None:
    async with served.client() as reader, subscribed(reader) as stream:
        served.live.close()

        with pytest.raises(StopAsyncIteration):
            await stream.next()


async def test_a_disconnected_client_is_unsubscribed(served: Served) -> None:
    async with served.client() as reader, subscribed(reader):
        assert served.live.subscribers == 1
    for _ in range(WAIT_S * 100):
        if served.live.subscribers == 0:
            break
        await asyncio.sleep(0.01)

    assert served.live.subscribers == 0


@pytest.mark.parametrize(
    ("key", "status", "error"), [(None, 401, "Unauthorized"), (CATALOG_KEY, 403, "Forbidden")]
)
async def test_credentials_and_scope_are_checked_before_the_stream(
    served: Served, key: str | None, status: int, error: str
) -> None:
    async with served.client(key) as client:
        response = await client.get(EVENTS)

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == error


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"libraryId": "not-a-uuid"}, "libraryId"),
        ({"types": "job.changed,job.created"}, "types"),
        ({"types": ""}, "types"),
    ],
)
async def test_a_bad_query_is_a_json_400(served: Served, params: dict[str, str], field: str) -> None:
    async with served.client() as client:
        response = await client.get(EVENTS, params=params)

    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == "BadRequest"
    assert body["details"]["field"] == field
