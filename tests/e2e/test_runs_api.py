"""Run-now and the schedule preview against a real process (SPEC §2.2, §2.6, §3.2)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import API, READER, WRITER, assert_error, client, create_job, jobs_path
from tests.e2e.test_openapi import REFERENCE, Schemas, valid
from tests.support.processes import ServeProcess

pytestmark = pytest.mark.e2e

IN_FLIGHT = "A run of this job is already in flight"
NEW_YORK = "America/New_York"


def run_now(api: httpx.Client, library_id: str, job_id: str, **headers: str) -> httpx.Response:
    return api.post(f"{jobs_path(library_id, job_id)}/run-now", headers=headers)


def schedule(api: httpx.Client, library_id: str, job_id: str, **params: Any) -> httpx.Response:
    return api.get(f"{jobs_path(library_id, job_id)}/schedule", params=params)


def previewed(api: httpx.Client, library_id: str, job_id: str, **params: Any) -> dict[str, Any]:
    response = schedule(api, library_id, job_id, **params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


# --- run now ----------------------------------------------------------------------------------------------


def test_run_now_queues_a_manual_run_of_a_disabled_job_and_refuses_a_second(
    api: httpx.Client, library: str
) -> None:
    job = create_job(api, library)  # disabled
    other = create_job(api, library, name="Other")

    response = run_now(api, library, job["id"])

    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["taskId"]
    valid(Schemas(json.loads(REFERENCE.read_text()), "urn:codex:openapi").component("RunNowResponse"), body)
    current = api.get(jobs_path(library, job["id"])).json()  # read-your-writes
    assert current["currentRunId"] == body["taskId"]
    assert (current["version"], current["updatedAt"], current["nextRunAt"]) == (1, job["updatedAt"], None)

    body = assert_error(run_now(api, library, job["id"]), 409, "Conflict")
    assert body["message"] == IN_FLIGHT
    # runs of other jobs never interfere
    assert run_now(api, library, other["id"]).status_code == 200


def test_run_now_with_an_idempotency_key_queues_one_run(api: httpx.Client, library: str) -> None:
    job = create_job(api, library)
    first = run_now(api, library, job["id"], **{"Idempotency-Key": "run-once"})
    retry = run_now(api, library, job["id"], **{"Idempotency-Key": "run-once"})

    assert (first.status_code, retry.status_code) == (200, 200)
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"


def test_run_now_of_an_unknown_job_is_404_and_needs_the_run_scope(
    api: httpx.Client, library: str, server: ServeProcess
) -> None:
    job = create_job(api, library)
    assert_error(run_now(api, library, str(uuid.uuid4())), 404, "NotFound")
    assert_error(run_now(api, str(uuid.uuid4()), job["id"]), 404, "NotFound")  # another library
    for key in (READER, WRITER):
        with client(server.url + API, key) as lacking:
            body = assert_error(run_now(lacking, library, job["id"]), 403, "Forbidden")
            assert "jobs:run" in body["message"]
    assert api.get(jobs_path(library, job["id"])).json()["currentRunId"] is None


# --- the schedule preview ---------------------------------------------------------------------------------


def test_a_fixed_time_that_happens_twice_fires_once_at_its_first_occurrence(
    reader: httpx.Client, api: httpx.Client, library: str
) -> None:
    job = create_job(api, library, cron="30 1 * * *", timezone=NEW_YORK)  # disabled: it still previews

    preview = previewed(reader, library, job["id"], count=3, **{"from": "2026-10-31T12:00:00Z"})

    assert preview == {
        "timezone": NEW_YORK,
        "fires": ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z", "2026-11-03T06:30:00Z"],
        "localFires": ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00", "2026-11-03T01:30:00-05:00"],
    }


def test_a_time_in_the_spring_forward_gap_fires_once_right_after_it(api: httpx.Client, library: str) -> None:
    job = create_job(api, library, cron="30 2 * * *", timezone=NEW_YORK, enabled=True)

    preview = previewed(api, library, job["id"], count=2, **{"from": "2026-03-07T12:00:00+01:00"})

    assert preview["fires"] == ["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"]
    assert preview["localFires"] == ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]


def test_the_preview_defaults_to_five_fires_from_now_in_the_server_zone(
    api: httpx.Client, library: str
) -> None:
    job = create_job(api, library, cron="0 4 * * *", enabled=True)

    preview = previewed(api, library, job["id"])

    assert preview["timezone"] == "UTC"
    assert len(preview["fires"]) == 5
    assert preview["fires"][0] == job["nextRunAt"]
    assert preview["localFires"] == preview["fires"]
    assert all(fire.endswith("T04:00:00Z") for fire in preview["fires"])


def test_fires_are_strictly_after_from(api: httpx.Client, library: str) -> None:
    job = create_job(api, library, cron="0 4 * * *")
    preview = previewed(api, library, job["id"], count=1, **{"from": "2026-12-01T04:00:00Z"})
    assert preview["fires"] == ["2026-12-02T04:00:00Z"]


@pytest.mark.parametrize(
    ("params", "field", "code"),
    [
        ({"count": 0}, "count", "out_of_range"),
        ({"count": 51}, "count", "out_of_range"),
        ({"count": "many"}, "count", "wrong_type"),
        ({"from": "2026-10-31T12:00:00"}, "from", "naive_datetime"),
        ({"from": "yesterday"}, "from", "invalid_datetime"),
    ],
)
def test_bad_preview_parameters_are_400_naming_the_parameter(
    api: httpx.Client, library: str, params: dict[str, Any], field: str, code: str
) -> None:
    job = create_job(api, library)
    assert_error(schedule(api, library, job["id"], **params), 400, "BadRequest", field=field, code=code)


def test_the_preview_of_an_unknown_job_is_404_and_needs_credentials(
    api: httpx.Client, anonymous: httpx.Client, library: str
) -> None:
    job = create_job(api, library)
    assert_error(schedule(api, library, str(uuid.uuid4())), 404, "NotFound")
    assert_error(schedule(api, str(uuid.uuid4()), job["id"]), 404, "NotFound")
    assert_error(anonymous.get(f"{API}{jobs_path(library, job['id'])}/schedule"), 401, "Unauthorized")
