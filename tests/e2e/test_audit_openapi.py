"""The audit routes in the served OpenAPI document (SPEC §2, §8): documented with every response, and their
real responses validate against it."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import API, create_job, jobs_path
from tests.e2e.test_openapi import Schemas, valid

pytestmark = pytest.mark.e2e

EVENTS = f"{API}/audit/events"
JOB = f"{API}/libraries/{{library_id}}/jobs/{{job_id}}"
HISTORY = f"{JOB}/history"
VERSION = f"{JOB}/versions/{{version}}"
DOCUMENTED = {  # path -> operationId, statuses every one of which is documented
    EVENTS: ("list_audit_events", {"200", "400", "401", "403"}),
    HISTORY: ("get_job_history", {"200", "401", "403", "404"}),
    VERSION: ("get_job_version", {"200", "401", "403", "404"}),
}


@pytest.fixture(scope="module")
def document(anonymous: httpx.Client) -> Schemas:
    response = anonymous.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    return Schemas(response.json(), "urn:libjobs:openapi")


@pytest.mark.parametrize("path", list(DOCUMENTED))
def test_each_audit_route_is_documented_with_its_responses(document: Schemas, path: str) -> None:
    operation_id, statuses = DOCUMENTED[path]
    operation = document.document["paths"][path]["get"]

    assert operation["operationId"] == operation_id
    assert statuses <= set(operation["responses"])
    for status in operation["responses"]:
        assert "application/json" in operation["responses"][status]["content"]


def test_the_audit_query_parameters_are_documented(document: Schemas) -> None:
    parameters = document.document["paths"][EVENTS]["get"]["parameters"]

    assert {p["name"] for p in parameters} == {"limit", "cursor", "after", "jobId", "libraryId", "type"}


def test_real_audit_responses_validate_against_the_document(
    document: Schemas, api: httpx.Client, library: str
) -> None:
    job = create_job(api, library)["id"]
    api.patch(jobs_path(library, job), json={"name": "renamed"}).raise_for_status()
    responses: list[tuple[str, int, httpx.Response]] = [
        (EVENTS, 200, api.get("/audit/events", params={"libraryId": library, "limit": 2})),
        (EVENTS, 200, api.get("/audit/events", params={"jobId": job})),
        (EVENTS, 400, api.get("/audit/events", params={"type": "Nope"})),
        (HISTORY, 200, api.get(jobs_path(library, job) + "/history")),
        (HISTORY, 404, api.get(jobs_path(library, str(uuid.uuid4())) + "/history")),
        (VERSION, 200, api.get(jobs_path(library, job) + "/versions/2")),
        (VERSION, 404, api.get(jobs_path(library, job) + "/versions/3")),
    ]
    for path, status, response in responses:
        assert response.status_code == status, response.text
        body: Any = response.json()
        valid(document.response("get", path, status), body)
    assert responses[0][2].json()["nextCursor"] is not None
    assert responses[5][2].json()["name"] == "renamed"
