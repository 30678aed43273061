"""The served OpenAPI document (SPEC §2), and our responses against the reference server's schemas.

The reference document is the library server's own description of the library-jobs routes (the spec's
`reference/codex-library-jobs.openapi.json`, copied to `tests/fixtures/`): every response of ours with a
counterpart there must validate against its schema. Schemas are checked with `jsonschema` (draft 2020-12,
formats included), `$ref`s resolved inside the document they come from.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.e2e.helpers import (
    API,
    READER,
    client,
    create_job,
    job_body,
    jobs_path,
    put_library,
    refresh_config,
)
from tests.support.processes import ServeProcess

pytestmark = pytest.mark.e2e

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "codex-library-jobs.openapi.json"
JOBS = f"{API}/libraries/{{library_id}}/jobs"
JOB = f"{JOBS}/{{job_id}}"
FIELD_GROUPS = f"{API}/library-jobs/metadata-refresh/field-groups"
OPERATIONS = {  # operationId -> (method, path), SPEC §2 and the reference document
    "list_jobs": ("get", JOBS),
    "create_job": ("post", JOBS),
    "get_job": ("get", JOB),
    "patch_job": ("patch", JOB),
    "delete_job": ("delete", JOB),
    "run_job_now": ("post", f"{JOB}/run-now"),
    "list_field_groups": ("get", FIELD_GROUPS),
}
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


class Schemas:
    """Validates instances against schemas of one OpenAPI document, by JSON pointer into it."""

    def __init__(self, document: dict[str, Any], uri: str) -> None:
        self.document = document
        self.uri = uri
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(uri, resource)

    def validator(self, *pointer: str) -> Draft202012Validator:
        escaped = "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in pointer)
        ref = f"{self.uri}#{quote(escaped, safe='/~')}"
        return Draft202012Validator(
            {"$ref": ref}, registry=self.registry, format_checker=Draft202012Validator.FORMAT_CHECKER
        )

    def component(self, name: str) -> Draft202012Validator:
        return self.validator("components", "schemas", name)

    def response(self, method: str, path: str, status: int) -> Draft202012Validator:
        return self.validator(
            "paths", path, method, "responses", str(status), "content", "application/json", "schema"
        )


def valid(validator: Draft202012Validator, instance: Any) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]
    assert not errors, f"{instance!r} does not validate:\n" + "\n".join(errors)


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method, path, operation


@pytest.fixture(scope="module")
def ours(anonymous: httpx.Client) -> dict[str, Any]:
    response = anonymous.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def our_schemas(ours: dict[str, Any]) -> Schemas:
    return Schemas(ours, "urn:libjobs:openapi")


@pytest.fixture(scope="module")
def reference() -> Schemas:
    return Schemas(json.loads(REFERENCE.read_text()), "urn:codex:openapi")


@pytest.fixture(scope="module")
def samples(api: httpx.Client) -> dict[str, httpx.Response]:
    """One real response of each kind, taken once from the shared server."""
    library = put_library(api, "OpenAPI samples")
    created = api.post(
        jobs_path(library),
        json=job_body(enabled=True, timezone="Europe/Paris", config=refresh_config(extraFields=["summary"])),
    )
    job_id = created.json()["id"]
    create_job(api, library, config=refresh_config(scope="series_and_books", bookFieldGroups=["cover"]))
    return {
        "create": created,
        "get": api.get(jobs_path(library, job_id)),
        "patch": api.patch(jobs_path(library, job_id), json={"timezone": None, "enabled": False}),
        "list": api.get(jobs_path(library)),
        "field_groups": api.get("/library-jobs/metadata-refresh/field-groups"),
        "400": api.post(jobs_path(library), json=job_body(cron="0 25 * * *")),
        "400_body": api.post(jobs_path(library), content=b"{", headers={"Content-Type": "application/json"}),
        "404": api.get(jobs_path(library, str(uuid.uuid4()))),
        "412": api.patch(jobs_path(library, job_id), json={"name": "x"}, headers={"If-Match": '"1"'}),
        "415": api.post(jobs_path(library), content=b"x", headers={"Content-Type": "text/plain"}),
    }


# --- the document -----------------------------------------------------------------------------------------


def test_the_document_is_openapi_3_1_and_needs_no_credentials(
    server: ServeProcess, ours: dict[str, Any]
) -> None:
    assert ours["openapi"].startswith("3.1.")
    with client(server.url, key=None) as anonymous:
        assert anonymous.get("/schema").status_code == 200


def test_the_job_operations_have_the_reference_operation_ids(
    ours: dict[str, Any], reference: Schemas
) -> None:
    for operation_id, (method, path) in OPERATIONS.items():
        assert ours["paths"][path][method]["operationId"] == operation_id
        assert reference.document["paths"][path][method]["operationId"] == operation_id


def test_operation_ids_are_unique(ours: dict[str, Any]) -> None:
    ids = [operation.get("operationId") for _, _, operation in operations(ours)]

    assert all(ids), ids
    assert len(ids) == len(set(ids))


def test_every_api_operation_documents_401_and_403_as_error_responses(
    ours: dict[str, Any], our_schemas: Schemas
) -> None:
    api_operations = [(m, p, o) for m, p, o in operations(ours) if p.startswith(API + "/")]
    assert len(api_operations) >= len(OPERATIONS)
    for method, path, operation in api_operations:
        for status in ("401", "403"):
            assert status in operation["responses"], f"{method.upper()} {path} does not document {status}"
        sample = {"error": "Unauthorized", "message": "Missing credentials"}
        valid(our_schemas.response(method, path, 401), sample)
        assert operation.get("security", ours.get("security")), f"{method.upper()} {path} has no security"


# --- our responses against the reference's schemas --------------------------------------------------------


@pytest.mark.parametrize("kind", ["create", "get", "patch"])
def test_a_job_validates_as_the_reference_library_job_dto(
    samples: dict[str, httpx.Response], reference: Schemas, kind: str
) -> None:
    assert samples[kind].status_code in (200, 201), samples[kind].text
    valid(reference.component("LibraryJobDto"), samples[kind].json())


def test_the_job_list_validates_as_the_reference_list_response(
    samples: dict[str, httpx.Response], reference: Schemas
) -> None:
    listed = samples["list"].json()
    assert len(listed["jobs"]) == 2
    valid(reference.component("ListLibraryJobsResponse"), listed)
    valid(reference.response("get", JOBS, 200), listed)


def test_the_field_groups_validate_as_the_reference_catalog(
    samples: dict[str, httpx.Response], reference: Schemas
) -> None:
    groups = samples["field_groups"].json()
    assert [g["id"] for g in groups][:3] == ["identifiers", "descriptive", "status"]
    valid(reference.response("get", FIELD_GROUPS, 200), groups)


@pytest.mark.parametrize("kind", ["400", "400_body", "404", "412", "415"])
def test_errors_validate_as_the_reference_error_response(
    samples: dict[str, httpx.Response], reference: Schemas, kind: str
) -> None:
    assert samples[kind].status_code == int(kind[:3]), samples[kind].text
    valid(reference.component("ErrorResponse"), samples[kind].json())


def test_a_401_and_a_403_validate_as_the_reference_error_response(
    server: ServeProcess, reference: Schemas
) -> None:
    library = str(uuid.uuid4())
    with client(server.url + API, key=None) as anonymous, client(server.url + API, READER) as reader:
        for response in (anonymous.get(jobs_path(library)), reader.post(jobs_path(library), json=job_body())):
            assert response.status_code in (401, 403)
            valid(reference.component("ErrorResponse"), response.json())


# --- our responses against our own document ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "method", "path", "status"),
    [
        ("create", "post", JOBS, 201),
        ("get", "get", JOB, 200),
        ("patch", "patch", JOB, 200),
        ("list", "get", JOBS, 200),
        ("field_groups", "get", FIELD_GROUPS, 200),
        ("400", "post", JOBS, 400),
        ("404", "get", JOB, 404),
        ("412", "patch", JOB, 412),
        ("415", "post", JOBS, 415),
    ],
)
def test_responses_validate_against_our_own_document(
    samples: dict[str, httpx.Response], our_schemas: Schemas, kind: str, method: str, path: str, status: int
) -> None:
    assert samples[kind].status_code == status
    valid(our_schemas.response(method, path, status), samples[kind].json())
