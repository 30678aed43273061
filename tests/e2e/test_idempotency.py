"""`Idempotency-Key` on POST (SPEC §2.1): one effect per key, the first response replayed, across restarts."""

from __future__ import annotations

import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import API, Spawner, assert_error, client, job_body, jobs_path, list_jobs, put_library

pytestmark = pytest.mark.e2e


def post(api: httpx.Client, library: str, body: dict[str, Any], key: str) -> httpx.Response:
    return api.post(jobs_path(library), json=body, headers={"Idempotency-Key": key})


def same_response(first: httpx.Response, retry: httpx.Response) -> None:
    assert retry.status_code == first.status_code
    assert retry.content == first.content
    for header in ("location", "etag"):
        assert retry.headers.get(header) == first.headers.get(header), header


def test_a_retry_with_the_same_key_and_body_returns_the_first_response(
    api: httpx.Client, library: str
) -> None:
    key = f"create-{uuid.uuid4()}"
    first = post(api, library, job_body(name="once"), key)
    assert first.status_code == 201, first.text

    for _ in range(3):
        same_response(first, post(api, library, job_body(name="once"), key))

    assert [j["id"] for j in list_jobs(api, library)] == [first.json()["id"]]


def test_the_same_key_with_another_body_is_409(api: httpx.Client, library: str) -> None:
    key = f"create-{uuid.uuid4()}"
    first = post(api, library, job_body(name="first"), key)
    assert first.status_code == 201, first.text

    assert_error(post(api, library, job_body(name="second"), key), 409, "Conflict")
    assert_error(post(api, put_library(api), job_body(name="first"), key), 409, "Conflict")
    assert [j["name"] for j in list_jobs(api, library)] == ["first"]


def test_a_failed_request_is_replayed_too(api: httpx.Client, library: str) -> None:
    key = f"invalid-{uuid.uuid4()}"
    first = post(api, library, job_body(cron="0 25 * * *"), key)
    assert_error(first, 400, "BadRequest", field="cronSchedule", code="invalid_cron")

    same_response(first, post(api, library, job_body(cron="0 25 * * *"), key))


def test_concurrent_retries_create_one_job(api: httpx.Client, library: str) -> None:
    key = f"race-{uuid.uuid4()}"
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: post(api, library, job_body(name="raced"), key), range(8)))

    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1
    assert len(list_jobs(api, library)) == 1


def test_different_keys_create_different_jobs(api: httpx.Client, library: str) -> None:
    ids = {post(api, library, job_body(), f"k-{uuid.uuid4()}").json()["id"] for _ in range(2)}

    assert len(ids) == 2
    assert len(list_jobs(api, library)) == 2


@pytest.mark.parametrize("key", ["", "k" * 129])
def test_a_key_that_is_empty_or_too_long_is_400(api: httpx.Client, library: str, key: str) -> None:
    assert_error(post(api, library, job_body(), key), 400, "BadRequest", field="Idempotency-Key")
    assert list_jobs(api, library) == []


def test_a_key_of_128_characters_is_accepted(api: httpx.Client, library: str) -> None:
    assert post(api, library, job_body(), "k" * 128).status_code == 201


def test_the_record_survives_a_restart(spawn: Spawner, tmp_path: Path, config_file: Path) -> None:
    data_dir = tmp_path / "data"
    body, key = job_body(name="survivor"), "restart-key"

    first_process = spawn(data_dir, config=config_file)
    with client(first_process.url + API) as api:
        library = put_library(api)
        first = post(api, library, body, key)
        assert first.status_code == 201, first.text
    assert first_process.stop(signal.SIGTERM) == 0

    second_process = spawn(data_dir, config=config_file)
    with client(second_process.url + API) as api:
        same_response(first, post(api, library, body, key))
        assert_error(post(api, library, job_body(name="other"), key), 409, "Conflict")
        assert [j["id"] for j in list_jobs(api, library)] == [first.json()["id"]]
