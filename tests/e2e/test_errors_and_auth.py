"""Credentials, scopes, JWTs, body errors and request ids (SPEC §2.1) against a real process."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest

from tests.e2e.helpers import (
    API,
    JSON_TYPE,
    JWT_AUDIENCE,
    JWT_SECRET,
    READER,
    Key,
    assert_error,
    client,
    job_body,
    jobs_path,
    refresh_config,
)
from tests.support.processes import ServeProcess

pytestmark = pytest.mark.e2e


def token(scope: str = "jobs:read", secret: str = JWT_SECRET, **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": "e2e-user", "scope": scope, "aud": JWT_AUDIENCE, "iat": now, "exp": now + 300} | claims
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(server: ServeProcess, value: str) -> httpx.Client:
    return client(server.url + API, key=None, Authorization=f"Bearer {value}")


# --- 401 and 403 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({"X-API-Key": "lj_not_a_key"}, id="bad_key"),
        pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="basic_auth"),
        pytest.param({"Authorization": "Bearer not.a.jwt"}, id="garbage_jwt"),
    ],
)
def test_missing_or_bad_credentials_are_401_json(
    server: ServeProcess, library: str, headers: dict[str, str]
) -> None:
    with client(server.url + API, key=None, **headers) as c:
        for response in (c.get("/libraries"), c.get(jobs_path(library)), c.post(jobs_path(library), json={})):
            assert_error(response, 401, "Unauthorized")


def test_a_key_without_the_scope_is_403(reader: httpx.Client, writer: httpx.Client, library: str) -> None:
    assert reader.get(jobs_path(library)).status_code == 200
    error = assert_error(reader.post(jobs_path(library), json=job_body()), 403, "Forbidden")
    assert "jobs:write" in error["message"]
    assert_error(reader.put(f"/libraries/{library}", json={"name": "x"}), 403, "Forbidden")
    assert_error(writer.put(f"/libraries/{library}", json={"name": "x"}), 403, "Forbidden")
    assert writer.post(jobs_path(library), json=job_body()).status_code == 201


def test_scope_is_checked_before_the_body(reader: httpx.Client, library: str) -> None:
    response = reader.post(jobs_path(library), content=b"{not json", headers={"Content-Type": JSON_TYPE})
    assert_error(response, 403, "Forbidden")


# --- JWT --------------------------------------------------------------------------------------------------


def test_a_valid_jwt_grants_its_scopes(server: ServeProcess, library: str) -> None:
    with bearer(server, token("jobs:read")) as reader:
        assert reader.get(jobs_path(library)).status_code == 200
        assert_error(reader.post(jobs_path(library), json=job_body()), 403, "Forbidden")
    with bearer(server, token("jobs:read jobs:write")) as writer:
        created = writer.post(jobs_path(library), json=job_body())
        assert created.status_code == 201, created.text


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(token(exp=int(time.time()) - 60), id="expired"),
        pytest.param(token(nbf=int(time.time()) + 3600), id="not_yet_valid"),
        pytest.param(token(aud="someone-else"), id="wrong_audience"),
        pytest.param(
            jwt.encode({"scope": "admin", "exp": int(time.time()) + 300}, JWT_SECRET, algorithm="HS256"),
            id="no_audience",
        ),
        pytest.param(token(secret="another-secret-of-at-least-32-bytes!"), id="wrong_signature"),
        pytest.param(
            jwt.encode({"scope": "admin", "aud": JWT_AUDIENCE}, None, algorithm="none"), id="alg_none"
        ),
    ],
)
def test_an_invalid_jwt_is_401(server: ServeProcess, library: str, value: str) -> None:
    with bearer(server, value) as c:
        assert_error(c.get(jobs_path(library)), 401, "Unauthorized")


# --- body errors ------------------------------------------------------------------------------------------


def raw(body: Any) -> bytes:
    return json.dumps(body).encode()


BODY_ERRORS = [
    pytest.param(b'{"cronSchedule": "0 4 * * *",', "body", "malformed_json", id="malformed_json"),
    pytest.param(b"", "body", None, id="empty_body"),
    pytest.param(
        raw(job_body(config=refresh_config(maxConcurrency="four"))),
        "config.maxConcurrency",
        "wrong_type",
        id="wrong_type",
    ),
    pytest.param(
        raw(job_body(config=refresh_config(maxConcurrency=[4]))),
        "config.maxConcurrency",
        "wrong_type",
        id="wrong_type_list",
    ),
    pytest.param(raw(job_body(enabled="yes")), "enabled", "wrong_type", id="wrong_type_bool"),
    pytest.param(raw(job_body(cron=4)), "cronSchedule", "wrong_type", id="wrong_type_str"),
    pytest.param(raw(job_body(bogus=1)), "bogus", None, id="unknown_key"),
    pytest.param(
        raw(job_body(config=refresh_config(bogus=1))), "config.bogus", None, id="unknown_config_key"
    ),
    pytest.param(
        raw(job_body(config=refresh_config(scope="everything"))), "config.scope", None, id="unknown_enum"
    ),
    pytest.param(raw({"config": refresh_config()}), "cronSchedule", None, id="missing_field"),
    pytest.param(raw([job_body()]), None, None, id="array_body"),
]


@pytest.mark.parametrize(("content", "field", "code"), BODY_ERRORS)
def test_bad_bodies_are_400_json_with_details(
    api: httpx.Client, library: str, content: bytes, field: str | None, code: str | None
) -> None:
    response = api.post(jobs_path(library), content=content, headers={"Content-Type": JSON_TYPE})

    body = assert_error(response, 400, "BadRequest", field=field, code=code)
    assert "details" in body, body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(
            job_body(config=refresh_config(maxConcurrency="4")), "config.maxConcurrency", id="int_str"
        ),
        pytest.param(job_body(enabled="true"), "enabled", id="bool_str"),
        pytest.param(job_body(enabled=1), "enabled", id="bool_int"),
        pytest.param(
            job_body(config=refresh_config(existingSourceIdsOnly="false")),
            "config.existingSourceIdsOnly",
            id="bool_str_false",
        ),
    ],
)
def test_values_of_the_wrong_json_type_are_400_not_coerced(
    api: httpx.Client, library: str, body: dict[str, Any], field: str
) -> None:
    response = api.post(jobs_path(library), json=body)

    assert_error(response, 400, "BadRequest", field=field, code="wrong_type")


def test_a_body_that_is_not_json_is_415(api: httpx.Client, library: str) -> None:
    response = api.post(jobs_path(library), content=raw(job_body()), headers={"Content-Type": "text/plain"})

    assert_error(response, 415, "UnsupportedMediaType")


def test_a_body_over_64_kib_is_413(api: httpx.Client, library: str) -> None:
    content = raw(job_body(name="x" * 70 * 1024))

    assert_error(
        api.post(jobs_path(library), content=content, headers={"Content-Type": JSON_TYPE}),
        413,
        "PayloadTooLarge",
    )
    assert api.get(jobs_path(library)).json() == {"jobs": []}


def test_a_json_content_type_with_a_charset_is_accepted(api: httpx.Client, library: str) -> None:
    headers = {"Content-Type": "application/json; charset=utf-8"}
    assert api.post(jobs_path(library), content=raw(job_body()), headers=headers).status_code == 201


# --- routing errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        pytest.param("GET", "/nowhere", 404, "NotFound", id="unknown_route"),
        pytest.param("GET", f"{API}/nowhere", 404, "NotFound", id="unknown_api_route"),
        pytest.param("GET", f"{API}/libraries/not-a-uuid/jobs", 404, "NotFound", id="bad_uuid"),
        pytest.param("DELETE", f"{API}/libraries", 405, "MethodNotAllowed", id="wrong_method"),
        pytest.param("PUT", f"{API}/libraries/{uuid.uuid4()}/jobs", 405, "MethodNotAllowed", id="put_jobs"),
        pytest.param("POST", "/healthz", 405, "MethodNotAllowed", id="post_healthz"),
    ],
)
def test_routing_errors_are_json(
    server: ServeProcess, method: str, path: str, status: int, error: str
) -> None:
    with client(server.url) as c:
        assert_error(c.request(method, path), status, error)


# --- request ids ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "key"),
    [
        pytest.param("GET", f"{API}/libraries", READER, id="200"),
        pytest.param("GET", f"{API}/libraries", None, id="401"),
        pytest.param("POST", f"{API}/libraries/{uuid.uuid4()}/jobs", READER, id="403"),
        pytest.param("GET", f"{API}/libraries/{uuid.uuid4()}/jobs", READER, id="404_library"),
        pytest.param("GET", "/healthz", None, id="healthz"),
        pytest.param("GET", "/metrics", None, id="metrics"),
        pytest.param("GET", f"{API}/nowhere", READER, id="404_route"),
        pytest.param("DELETE", f"{API}/libraries", READER, id="405"),
    ],
)
def test_every_response_has_a_request_id_and_echoes_the_one_sent(
    server: ServeProcess, method: str, path: str, key: Key | None
) -> None:
    with client(server.url, key) as c:
        made = [c.request(method, path).headers.get("x-request-id") for _ in range(2)]
        sent = c.request(method, path, headers={"X-Request-Id": "e2e-request.42"})

    assert all(made), made
    assert made[0] != made[1]
    assert sent.headers["x-request-id"] == "e2e-request.42"


def test_a_validation_error_echoes_the_request_id(api: httpx.Client, library: str) -> None:
    response = api.post(jobs_path(library), json=job_body(cron="nope"), headers={"X-Request-Id": "rid-400"})

    assert_error(response, 400, "BadRequest", field="cronSchedule")
    assert response.headers["x-request-id"] == "rid-400"


# --- operational routes -----------------------------------------------------------------------------------


def test_health_readiness_and_metrics_need_no_credentials(anonymous: httpx.Client) -> None:
    health = anonymous.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"

    ready = anonymous.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ok"

    anonymous.get(f"{API}/libraries")  # a 401, counted like any other request
    metrics = anonymous.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "libjobs_http_requests_total" in metrics.text
    assert 'status="401"' in metrics.text
