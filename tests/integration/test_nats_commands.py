"""NATS commands (SPEC §5) on a real service: the same results, errors and idempotency as HTTP.

`CommandResponder` runs on a started `Service` (real SQLite store and read models); the HTTP app of the
same service answers the HTTP side of each comparison in process. The last tests go through a real
nats-server with `serve_commands`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import msgspec
import nats
import pytest

from contracts.nats import CommandError, CommandOk, Subjects, decode_reply
from service.bootstrap import Service
from service.entrypoints.http.auth import Authenticator, sha256_hex
from service.entrypoints.nats.commands import CommandResponder, NatsServices, serve_commands
from service.settings import ApiKeySpec
from tests.integration.harness import PROVIDER, eventually, make_settings, running, stored
from tests.support.nats import NatsServer

pytestmark = pytest.mark.integration

API_KEY = "lj_test_key"
CRON = "0 4 * * *"
SUBJECTS = Subjects()  # the service itself uses another prefix: these tests own `libjobs.cmd.>`
INTERNAL_ERROR = {"error": "InternalServerError", "message": "An internal error occurred"}


@pytest.fixture
async def service(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Service]:
    settings = make_settings(tmp_path, None, nats_urls=(nats_server.url,), nats_prefix="svc")
    async with running(settings) as svc:
        yield svc


@pytest.fixture
def responder(service: Service) -> CommandResponder:
    services = NatsServices(
        commands=service.commands,
        queries=service.models,
        wait_for=service.follower.wait_for,
        run_sync=service.run_sync,
        create_job=service.create_job,
        idempotency=service.idempotency,
        dry_run=service.refresher.dry_run,
    )
    return CommandResponder(services, SUBJECTS)


@pytest.fixture
async def http(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    """The same service over HTTP, in process (no lifespan: the service is already started)."""
    keys = [ApiKeySpec(id="http", sha256=sha256_hex(API_KEY), scopes=frozenset({"admin"}))]
    app = service.asgi(Authenticator(keys))
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # Litestar types ASGI more narrowly
    async with httpx.AsyncClient(
        transport=transport, base_url="http://libjobs/api/v1", headers={"X-API-Key": API_KEY}
    ) as client:
        yield client


async def send(responder: CommandResponder, name: str, payload: Any, **headers: str) -> bytes:
    """The reply bytes to one command; `payload` is JSON-encoded unless it is bytes already."""
    data = payload if isinstance(payload, bytes) else msgspec.json.encode(payload)
    return await responder.handle(f"libjobs.cmd.{name}", data, headers)


async def ok(responder: CommandResponder, name: str, payload: Any, **headers: str) -> Any:
    reply = decode_reply(await send(responder, name, payload, **headers))
    assert isinstance(reply, CommandOk), reply
    return reply.result


async def failed(responder: CommandResponder, name: str, payload: Any, **headers: str) -> dict[str, Any]:
    """The error reply as plain JSON: {"status", "error", "message"[, "details"]}."""
    reply = decode_reply(await send(responder, name, payload, **headers))
    assert isinstance(reply, CommandError), reply
    return {"status": reply.status, **msgspec.to_builtins(reply.error)}


def config(**fields: Any) -> dict[str, Any]:
    return {"type": "metadata_refresh", "provider": PROVIDER, **fields}


def job_body(**fields: Any) -> dict[str, Any]:
    return {"cronSchedule": CRON, "config": config(), **fields}


async def new_library(responder: CommandResponder) -> str:
    library_id = str(uuid4())
    await ok(responder, "catalog.library.upsert", {"libraryId": library_id, "name": "Manga"})
    return library_id


async def new_job(responder: CommandResponder, library_id: str, **fields: Any) -> str:
    created = await ok(responder, "job.create", {**job_body(**fields), "libraryId": library_id})
    return str(created["id"])


def job_count(service: Service, library_id: str) -> int:
    return len(msgspec.json.decode(service.models.jobs_json(UUID(library_id)))["jobs"])


# --- results equal HTTP's -------------------------------------------------------------------------------


async def test_job_create_update_delete_reply_what_http_serves(
    responder: CommandResponder, http: httpx.AsyncClient, service: Service
) -> None:
    library_id = await new_library(responder)
    headers = {"Libjobs-Actor": "library-server", "Libjobs-Request-Id": "req-42"}

    created = await send(
        responder, "job.create", {**job_body(name="Nightly"), "libraryId": library_id}, **headers
    )
    job_id = msgspec.json.decode(created)["result"]["id"]
    job_path = f"/libraries/{library_id}/jobs/{job_id}"
    assert created == b'{"ok":true,"result":' + (await http.get(job_path)).content + b"}"

    patch = {"libraryId": library_id, "jobId": job_id, "ifMatch": 1, "enabled": True, "timezone": None}
    updated = await send(responder, "job.update", patch, **headers)
    assert updated == b'{"ok":true,"result":' + (await http.get(job_path)).content + b"}"
    assert msgspec.json.decode(updated)["result"]["version"] == 2

    delete = {"libraryId": library_id, "jobId": job_id, "ifMatch": 2}
    assert await send(responder, "job.delete", delete, **headers) == b'{"ok":true,"result":null}'
    assert (await http.get(job_path)).status_code == 404

    job_events = [e for _, e in stored(service) if str(e.originator_id) == job_id]
    assert [(e.actor, e.request_id) for e in job_events] == [("nats:library-server", "req-42")] * 3


async def test_an_actor_and_request_id_are_made_up_when_not_given(
    responder: CommandResponder, service: Service
) -> None:
    library_id = await new_library(responder)
    await ok(responder, "catalog.library.upsert", {"libraryId": library_id, "name": "Renamed"})

    *_, (_, event) = stored(service)
    assert event.actor == "nats:nats"
    assert event.request_id
    await new_job(responder, library_id)
    *_, (_, other) = stored(service)
    assert other.request_id != event.request_id


async def test_catalog_commands_store_what_http_stores_and_reply_what_it_serves(
    responder: CommandResponder, http: httpx.AsyncClient, service: Service
) -> None:
    library_id, series_id, book_id = str(uuid4()), str(uuid4()), str(uuid4())
    library = {"name": "  Manga  "}
    series = {"title": " One Piece ", "titleSort": "One Piece", "metadata": {"year": 1997}, "locks": ["year"]}
    book = {
        "title": "Volume 1",
        "seriesId": series_id,
        "externalIds": [{"source": "isbn", "externalId": "1"}],
    }

    replies = [
        await send(responder, "catalog.library.upsert", {**library, "libraryId": library_id}),
        await send(
            responder, "catalog.series.upsert", {**series, "libraryId": library_id, "seriesId": series_id}
        ),
        await send(responder, "catalog.book.upsert", {**book, "libraryId": library_id, "bookId": book_id}),
    ]

    paths = [
        f"/libraries/{library_id}",
        f"/libraries/{library_id}/series/{series_id}",
        f"/libraries/{library_id}/books/{book_id}",
    ]
    served = [(await http.get(path)).content for path in paths]
    assert replies == [b'{"ok":true,"result":' + body + b"}" for body in served]
    # The same bodies over HTTP change nothing: the application got exactly what HTTP gives it.
    position = service.models.position()
    for path, body, dto in zip(paths, (library, series, book), served, strict=True):
        response = await http.put(path, json=body)
        assert (response.status_code, response.content) == (200, dto)
    assert service.models.position() == position

    for name, ids in [
        ("catalog.book.delete", {"bookId": book_id}),
        ("catalog.series.delete", {"seriesId": series_id}),
        ("catalog.library.delete", {}),
    ]:
        assert await send(responder, name, {"libraryId": library_id, **ids}) == b'{"ok":true,"result":null}'
    assert [(await http.get(path)).status_code for path in paths] == [404, 404, 404]


# --- errors equal HTTP's --------------------------------------------------------------------------------


def _create(body: Any) -> tuple[str, Any, str, str]:
    return ("job.create", body, "POST", "/libraries/{library}/jobs")


def _patch(body: Any) -> tuple[str, Any, str, str]:
    return ("job.update", body, "PATCH", "/libraries/{library}/jobs/{job}")


SAME_AS_HTTP = [
    pytest.param(*_create(b'{"cronSchedule": "0 4 * * *",'), id="malformed_json"),
    pytest.param(*_create(b""), id="empty"),
    pytest.param(*_create(b"[]"), id="array"),
    pytest.param(*_create(job_body(config=config(maxConcurrency="four"))), id="wrong_type"),
    pytest.param(*_create(job_body(config=config(maxConcurrency="4"))), id="strict_int"),
    pytest.param(*_create(job_body(enabled=1)), id="strict_bool"),
    pytest.param(*_create(job_body(bogus=1)), id="unknown_key"),
    pytest.param(*_create(job_body(config=config(bogus=1))), id="unknown_config_key"),
    pytest.param(*_create(job_body(config=config(scope="everything"))), id="unknown_enum"),
    pytest.param(*_create(job_body(config=config(type="backup"))), id="unknown_type"),
    pytest.param(*_create({"config": config()}), id="missing_field"),
    pytest.param(*_create(job_body(config=config(fieldGroups=["ratings", 3]))), id="list_item"),
    pytest.param(*_create(job_body(cronSchedule="0 25 * * *")), id="invalid_cron"),
    pytest.param(*_create(job_body(timezone="PST")), id="invalid_timezone"),
    pytest.param(*_create(job_body(config=config(provider="plugin:nope"))), id="provider_not_installed"),
    pytest.param(*_create(job_body(config=config(maxConcurrency=17))), id="out_of_range"),
    pytest.param(*_patch({"config": config(type="backup")}), id="patch_type_mismatch"),
    pytest.param(*_patch({"name": "  "}), id="patch_empty_name"),
    pytest.param(*_patch({"enabled": "yes"}), id="patch_wrong_type"),
    pytest.param(*_patch({"cronSchedule": "0 4 * *"}), id="patch_invalid_cron"),
    pytest.param("catalog.library.upsert", {"name": " "}, "PUT", "/libraries/{library}", id="library_empty"),
    pytest.param("catalog.library.upsert", {"name": 5}, "PUT", "/libraries/{library}", id="library_type"),
    pytest.param(
        "catalog.series.upsert",
        {"title": "x" * 201},
        "PUT",
        "/libraries/{library}/series/{series}",
        id="series_too_long",
    ),
    pytest.param(
        "catalog.series.upsert",
        {"title": "x", "locks": "year"},
        "PUT",
        "/libraries/{library}/series/{series}",
        id="series_wrong_type",
    ),
    pytest.param(
        "catalog.book.upsert", {"title": "x"}, "PUT", "/libraries/{library}/books/{book}", id="book_no_series"
    ),
    pytest.param(
        "catalog.book.upsert",
        {"title": "x", "seriesId": "not-a-uuid"},
        "PUT",
        "/libraries/{library}/books/{book}",
        id="book_bad_series_id",
    ),
]


@pytest.mark.parametrize(("name", "body", "method", "path"), SAME_AS_HTTP)
async def test_a_bad_command_gets_the_error_http_gives(
    responder: CommandResponder, http: httpx.AsyncClient, name: str, body: Any, method: str, path: str
) -> None:
    library_id = await new_library(responder)
    job_id, item_id = await new_job(responder, library_id), str(uuid4())
    ids = {"library": library_id, "job": job_id, "series": item_id, "book": item_id}
    path_ids = {f"{key}Id": value for key, value in ids.items() if f"{{{key}}}" in path}  # HTTP's path ids
    payload = body if isinstance(body, bytes) else msgspec.json.encode({**body, **path_ids})
    content = body if isinstance(body, bytes) else msgspec.json.encode(body)

    response = await http.request(
        method, path.format(**ids), content=content, headers={"Content-Type": "application/json"}
    )
    error = await failed(responder, name, payload)

    assert response.status_code == 400, response.text
    assert error == {"status": response.status_code, **response.json()}


# --- the errors of NATS itself, exactly -----------------------------------------------------------------


async def test_a_catalogue_of_bad_messages_gets_exact_error_replies(
    responder: CommandResponder, service: Service
) -> None:
    library_id = await new_library(responder)
    job_id = await new_job(responder, library_id)
    job = {"libraryId": library_id, "jobId": job_id}

    assert await failed(responder, "job.explode", job) == {
        "status": 404,
        "error": "NotFound",
        "message": "Unknown command subject 'libjobs.cmd.job.explode'",
        "details": {"field": "subject", "code": "unknown_command"},
    }
    foreign = decode_reply(await responder.handle("other.cmd.job.create", b"{}", None))
    assert isinstance(foreign, CommandError)
    assert (foreign.status, foreign.error.message) == (404, "Unknown command subject 'other.cmd.job.create'")
    assert await failed(
        responder, "job.create", {**job_body(name="x" * 70_000), "libraryId": library_id}
    ) == {
        "status": 413,
        "error": "PayloadTooLarge",
        "message": "The payload is larger than 65536 bytes",
    }
    assert await failed(responder, "job.create", b"not json") == {
        "status": 400,
        "error": "BadRequest",
        # HTTP's words, repetition included
        "message": "Malformed JSON body: JSON is malformed: JSON is malformed: invalid character (byte 4)",
        "details": {"field": "body", "code": "malformed_json"},
    }
    assert await failed(responder, "job.delete", [job]) == {
        "status": 400,
        "error": "BadRequest",
        "message": "Invalid request: body: Expected `object`, got `array`",
        "details": {"field": "body", "code": "wrong_type"},
    }
    assert await failed(responder, "job.delete", {**job, "ifMatch": "1"}) == {
        "status": 400,
        "error": "BadRequest",
        "message": "Invalid request: ifMatch: Expected `int | null`, got `str`",
        "details": {"field": "ifMatch", "code": "wrong_type"},
    }
    assert await failed(responder, "job.delete", {**job, "force": True}) == {
        "status": 400,
        "error": "BadRequest",
        "message": "Invalid request: force: Object contains unknown field `force`",
        "details": {"field": "force", "code": "unknown_field"},
    }
    assert await failed(responder, "job.delete", {"libraryId": library_id}) == {
        "status": 400,
        "error": "BadRequest",
        "message": "Invalid request: jobId: Object missing required field `jobId`",
        "details": {"field": "jobId", "code": "required"},
    }
    assert await failed(responder, "job.delete", {**job, "jobId": "42"}) == {
        "status": 400,
        "error": "BadRequest",
        "message": "Invalid request: jobId: Invalid UUID",
        "details": {"field": "jobId", "code": "invalid"},
    }
    assert await failed(responder, "job.update", {**job, "ifMatch": 7, "name": "Late"}) == {
        "status": 412,
        "error": "PreconditionFailed",
        "message": "The job is at version 1, not 7",
    }
    assert await failed(responder, "job.update", {**job, "config": config(type="backup")}) == {
        "status": 400,
        "error": "BadRequest",
        "message": "Invalid request: config.type: config.type must equal the job's type (metadata_refresh)",
        "details": {"field": "config.type", "code": "type_mismatch"},
    }
    assert await failed(responder, "job.update", {**job, "jobId": str(uuid4()), "name": "x"}) == {
        "status": 404,
        "error": "NotFound",
        "message": "Job not found",
    }
    assert await failed(responder, "job.create", {**job_body(), "libraryId": str(uuid4())}) == {
        "status": 404,
        "error": "NotFound",
        "message": "Library not found",
    }
    assert await failed(responder, "job.delete", job, **{"Libjobs-Actor": "x" * 129}) == {
        "status": 400,
        "error": "BadRequest",
        "message": "Libjobs-Actor must be 1-128 printable characters",
        "details": {"field": "Libjobs-Actor", "code": "invalid_header"},
    }
    for key in ("", "k" * 129):
        assert await failed(responder, "job.delete", job, **{"Idempotency-Key": key}) == {
            "status": 400,
            "error": "BadRequest",
            "message": "Idempotency-Key must be 1-128 characters",
            "details": {"field": "Idempotency-Key", "code": "invalid_header"},
        }
    assert job_count(service, library_id) == 1  # none of these changed anything


async def test_a_dry_run_answers_what_http_answers(
    responder: CommandResponder, http: httpx.AsyncClient
) -> None:
    library_id = await new_library(responder)
    job_id = await new_job(responder, library_id)
    body = {"configOverride": config(fieldGroups=["status"]), "sampleSize": 50}
    over_nats = await ok(responder, "job.dry_run", {**body, "libraryId": library_id, "jobId": job_id})
    response = await http.post(f"/libraries/{library_id}/jobs/{job_id}/dry-run", json=body)
    assert response.status_code == 200
    assert over_nats == response.json()
    # the test plugin's command is `false`: the provider cannot be asked, a plan failure, not an error
    assert over_nats["planFailure"].startswith("plugin_unavailable: ")
    assert (over_nats["totalEligible"], over_nats["sample"]) == (0, [])
    unknown = {"libraryId": library_id, "jobId": str(uuid4())}
    assert (await failed(responder, "job.dry_run", unknown))["status"] == 404
    negative = await failed(responder, "job.dry_run", {**unknown, "sampleSize": -1})
    assert negative["details"] == {"field": "sampleSize", "code": "out_of_range"}
    assert (await failed(responder, "job.dry_run", {**unknown, "bogus": 1}))["status"] == 400


# --- runs -------------------------------------------------------------------------------------------------


def run_record(job_id: str, run_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "jobId": job_id,
        "runId": run_id,
        "status": "success",
        "message": "Refreshed 1 of 1 series (1 succeeded, 0 failed, 0 skipped)",
        "startedAt": "2026-03-01T04:00:00Z",
        "finishedAt": "2026-03-01T04:01:00Z",
        "counts": {"planned": 1, "done": 1, "succeeded": 1},
        **fields,
    }


async def test_run_now_then_run_record_end_the_run_as_http_shows(
    responder: CommandResponder, http: httpx.AsyncClient, service: Service
) -> None:
    library_id = await new_library(responder)
    job_id = await new_job(responder, library_id)  # disabled: run-now works all the same
    job = {"libraryId": library_id, "jobId": job_id}
    job_path = f"/libraries/{library_id}/jobs/{job_id}"

    task = await ok(responder, "job.run_now", job, **{"Libjobs-Actor": "library-server"})
    run_id = task["taskId"]
    assert list(task) == ["taskId"]
    assert (await http.get(job_path)).json()["currentRunId"] == run_id  # read-your-writes
    assert await failed(responder, "job.run_now", job) == {
        "status": 409,
        "error": "Conflict",
        "message": "A run of this job is already in flight",
    }
    http_refusal = await http.post(f"{job_path}/run-now")
    assert (http_refusal.status_code, http_refusal.json()["message"]) == (
        409,
        "A run of this job is already in flight",
    )

    recorded = await ok(responder, "run.record", run_record(job_id, run_id))
    assert recorded == {"jobId": job_id, "runId": run_id, "status": "success"}
    again = await ok(responder, "run.record", run_record(job_id, run_id, status="failure"))
    assert again == recorded  # the first outcome stands
    dto = (await http.get(job_path)).json()
    assert (dto["currentRunId"], dto["lastRunAt"], dto["lastRunStatus"], dto["version"]) == (
        None,
        "2026-03-01T04:01:00Z",
        "success",
        1,
    )
    assert dto["lastRunMessage"] == "Refreshed 1 of 1 series (1 succeeded, 0 failed, 0 skipped)"
    finished = [e for _, e in stored(service) if type(e).__name__ == "RunFinished"]
    assert len(finished) == 1
    assert finished[0].actor == "nats:nats"  # the default caller
    assert (await http.post(f"{job_path}/run-now")).status_code == 200


async def test_run_commands_refuse_unknown_jobs_and_bad_outcomes(responder: CommandResponder) -> None:
    library_id = await new_library(responder)
    job_id = await new_job(responder, library_id)
    not_found = {"status": 404, "error": "NotFound", "message": "Job not found"}
    assert await failed(responder, "job.run_now", {"libraryId": str(uuid4()), "jobId": job_id}) == not_found
    assert await failed(responder, "run.record", run_record(str(uuid4()), str(uuid4()))) == not_found
    backwards = run_record(job_id, str(uuid4()), finishedAt="2026-03-01T03:59:59Z")
    assert await failed(responder, "run.record", backwards) == {
        "status": 400,
        "error": "BadRequest",
        "message": "finishedAt must not be before startedAt",
        "details": {"field": "finishedAt", "code": "before_start"},
    }
    naive = await failed(
        responder, "run.record", run_record(job_id, str(uuid4()), finishedAt="2026-03-01T04:01:00")
    )
    assert naive["details"] == {"field": "finishedAt", "code": "invalid"}
    unknown_status = await failed(responder, "run.record", run_record(job_id, str(uuid4()), status="done"))
    assert unknown_status["details"] == {"field": "status", "code": "invalid_enum"}


async def test_an_unexpected_failure_is_a_500_reply_and_is_logged_with_the_subject(
    responder: CommandResponder, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    library_id = await new_library(responder)
    with sqlite3.connect(service.settings.data_dir / "state.sqlite3") as db:
        db.execute("DROP TABLE idempotency")  # the idempotency store fails from now on
    payload = {**job_body(), "libraryId": library_id}

    with caplog.at_level(logging.ERROR, logger="libjobs.nats"):
        error = await failed(responder, "job.create", payload, **{"Idempotency-Key": "k"})

    assert error == {"status": 500, **INTERNAL_ERROR}
    (record,) = caplog.records
    assert vars(record)["subject"] == "libjobs.cmd.job.create"
    assert vars(record)["request_id"]
    assert record.exc_info is not None
    assert "cronSchedule" not in caplog.text
    await new_job(responder, library_id)  # and the next command works


# --- idempotency ----------------------------------------------------------------------------------------


async def test_a_retry_with_the_same_key_gets_the_first_reply_and_creates_one_job(
    responder: CommandResponder, service: Service
) -> None:
    library_id = await new_library(responder)
    payload = {**job_body(name="once"), "libraryId": library_id}
    key = {"Idempotency-Key": "create-once"}

    first = await send(responder, "job.create", payload, **key)
    retries = [await send(responder, "job.create", payload, **key) for _ in range(3)]
    retries.append(await send(responder, "job.create", payload, **{"idempotency-key": "create-once"}))
    raced = await asyncio.gather(*(send(responder, "job.create", payload, **key) for _ in range(8)))

    assert msgspec.json.decode(first)["ok"] is True
    assert set(retries) | set(raced) == {first}
    assert job_count(service, library_id) == 1


async def test_concurrent_first_tries_with_one_key_create_one_job(
    responder: CommandResponder, service: Service
) -> None:
    library_id = await new_library(responder)
    payload = {**job_body(), "libraryId": library_id}

    replies = await asyncio.gather(
        *(send(responder, "job.create", payload, **{"Idempotency-Key": "race"}) for _ in range(8))
    )

    assert len(set(replies)) == 1
    assert job_count(service, library_id) == 1


async def test_the_same_key_with_another_payload_or_command_is_409(
    responder: CommandResponder, service: Service
) -> None:
    library_id = await new_library(responder)
    key = {"Idempotency-Key": "k-1"}
    first = await ok(responder, "job.create", {**job_body(name="first"), "libraryId": library_id}, **key)
    conflict = {
        "status": 409,
        "error": "Conflict",
        "message": "Idempotency-Key was already used with a different request",
    }

    assert await failed(
        responder, "job.create", {**job_body(name="second"), "libraryId": library_id}, **key
    ) == (conflict)
    assert await failed(responder, "job.delete", {"libraryId": library_id, "jobId": first["id"]}, **key) == (
        conflict
    )
    assert job_count(service, library_id) == 1


async def test_keys_are_scoped_by_actor_and_a_refusal_is_replayed_too(
    responder: CommandResponder, service: Service
) -> None:
    library_id = await new_library(responder)
    payload = {**job_body(), "libraryId": library_id}
    for actor in ("a", "b"):
        await ok(responder, "job.create", payload, **{"Idempotency-Key": "same", "Libjobs-Actor": actor})
    assert job_count(service, library_id) == 2

    bad = {**job_body(cronSchedule="0 25 * * *"), "libraryId": library_id}
    first = await send(responder, "job.create", bad, **{"Idempotency-Key": "bad"})
    assert msgspec.json.decode(first)["error"]["details"]["code"] == "invalid_cron"
    assert await send(responder, "job.create", bad, **{"Idempotency-Key": "bad"}) == first


# --- through a real nats-server -------------------------------------------------------------------------


async def test_serve_commands_answers_requests_and_survives_garbage(
    responder: CommandResponder, service: Service, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    server_side = await nats.connect(nats_server.url)
    client = await nats.connect(nats_server.url)
    try:
        commands = await serve_commands(server_side, responder, max_in_flight=2)
        create = SUBJECTS.command("job.create")
        library = await client.request(
            SUBJECTS.command("catalog.library.upsert"),
            msgspec.json.encode({"libraryId": (library_id := str(uuid4())), "name": "Manga"}),
            timeout=5,
        )
        assert isinstance(decode_reply(library.data), CommandOk)

        garbage = [b"", b"[", b"null", b"\xff\xfe", b"{}" * 40_000, b'{"libraryId": 1}'] * 8
        garbage += [b"{}", b"{}"]
        subjects = [create] * 48 + ["libjobs.cmd.nope", "libjobs.cmd.job.create.extra"]
        replies = await asyncio.gather(
            *(client.request(s, g, timeout=5) for s, g in zip(subjects, garbage, strict=True))
        )
        statuses = [decode_reply(r.data) for r in replies]
        assert all(isinstance(r, CommandError) for r in statuses)
        assert {r.status for r in statuses if isinstance(r, CommandError)} == {400, 404, 413}
        assert replies[0].headers is None  # the request's headers are not sent back

        with caplog.at_level(logging.WARNING, logger="libjobs.nats"):
            await client.publish(create, msgspec.json.encode({**job_body(), "libraryId": library_id}))
            await client.flush()
            good = {**job_body(name="after the garbage"), "libraryId": library_id}
            created = await asyncio.gather(
                *(client.request(create, msgspec.json.encode(good), timeout=5) for _ in range(10))
            )
        assert all(isinstance(decode_reply(r.data), CommandOk) for r in created)
        assert job_count(service, library_id) == 10  # the message nobody could hear was not run
        assert "command without a reply subject dropped" in caplog.text

        # Five commands on their way when the subscriber drains: each still gets its reply.
        inbox = client.new_inbox()
        answers = await client.subscribe(inbox)
        delivered = commands.subscription.delivered
        for _ in range(5):
            await client.publish(create, msgspec.json.encode(good), reply=inbox)
        await eventually(lambda: commands.subscription.delivered == delivered + 5)
        await commands.drain()
        assert not commands.tasks
        answered = [decode_reply((await answers.next_msg(timeout=5)).data) for _ in range(5)]
        assert all(isinstance(reply, CommandOk) for reply in answered)
        with pytest.raises(nats.errors.NoRespondersError):
            await client.request(create, msgspec.json.encode(good), timeout=1)
    finally:
        await client.close()
        await server_side.close()
