"""Small helpers of the end-to-end tests: API keys, config files, request bodies and error checks."""

from __future__ import annotations

import hashlib
import json
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.support.processes import ServeProcess

T = TypeVar("T")

API = "/api/v1"
JSON_TYPE = "application/json"

# SPEC §2.1: the only names `error` may take.
ERROR_NAMES = frozenset(
    {
        "BadRequest",
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "MethodNotAllowed",
        "Conflict",
        "PreconditionFailed",
        "PayloadTooLarge",
        "UnsupportedMediaType",
        "UnprocessableEntity",
        "TooManyRequests",
        "InternalServerError",
        "ServiceUnavailable",
    }
)


@dataclass(frozen=True)
class Key:
    """An API key of the config file: `[[api_keys]]` with the key's SHA-256 and its scopes."""

    id: str
    value: str
    scopes: tuple[str, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.value.encode()).hexdigest()


ADMIN = Key("e2e-admin", "lj_e2e_admin_0123456789", ("admin",))
READER = Key("e2e-reader", "lj_e2e_reader_0123456789", ("jobs:read",))
WRITER = Key("e2e-writer", "lj_e2e_writer_0123456789", ("jobs:read", "jobs:write"))
KEYS = (ADMIN, READER, WRITER)


def _toml(value: Any) -> str:
    """A TOML value: strings, numbers, booleans and arrays are written as JSON; tables inline."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def config_toml(plugins: Mapping[str, Mapping[str, Any]], keys: Sequence[Key] = KEYS) -> str:
    """A config file (SPEC §9) with these `[[api_keys]]` and `[plugins.<name>]` tables."""
    lines: list[str] = []
    for key in keys:
        lines += [
            "[[api_keys]]",
            f"id = {_toml(key.id)}",
            f"sha256 = {_toml(key.sha256)}",
            f"scopes = {_toml(list(key.scopes))}",
            "",
        ]
    for name, table in plugins.items():
        lines.append(f"[plugins.{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)


def write_config(path: Path, plugins: Mapping[str, Mapping[str, Any]], keys: Sequence[Key] = KEYS) -> Path:
    path.write_text(config_toml(plugins, keys))
    return path


def client(base_url: str, key: Key | str | None = ADMIN, **headers: str) -> httpx.Client:
    """An HTTP client of `/api/v1` (or of `base_url` as given when it is a server root)."""
    if key is not None:
        headers["X-API-Key"] = key.value if isinstance(key, Key) else key
    return httpx.Client(base_url=base_url, headers=headers, timeout=10)


# --- processes and their configuration ---------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
JWT_SECRET = "e2e-jwt-shared-secret-0123456789abcdef"  # HS256 needs at least 32 bytes
JWT_AUDIENCE = "libjobs-e2e"
JWT_ENV = {"LIBJOBS_JWT_SECRET": JWT_SECRET, "LIBJOBS_JWT_AUDIENCE": JWT_AUDIENCE}

PLUGIN_DATA: dict[str, Any] = {
    "series": {"s-1": {"title": "One Piece", "metadata": {"year": 1997, "rating": 9.1}}},
    "books": {"b-1": {"title": "Romance Dawn", "metadata": {"number": 1}}},
}


def fixture_plugin(data_file: Path) -> dict[str, Any]:
    """`[plugins.fixture]`: the reference plugin, which declares series and book metadata."""
    return {
        "command": [sys.executable, "-m", "service.adapters.plugins.fixture", "--data", str(data_file)],
        "env": {"PYTHONPATH": str(REPO)},
    }


def standard_plugins(data_file: Path) -> dict[str, dict[str, Any]]:
    """The plugins of the shared server: the fixture, a series-only plugin and a disabled one."""
    never_started = [sys.executable, "-c", "raise SystemExit(1)"]  # static capabilities: never asked
    return {
        "fixture": fixture_plugin(data_file),
        "seriesonly": {"command": never_started, "capabilities": ["series"]},
        "disabled": {"command": never_started, "enabled": False},
    }


class Spawner:
    """Starts `libjobs serve` processes under one directory and stops them all at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[ServeProcess] = []

    def __call__(
        self,
        data_dir: Path | None = None,
        *,
        config: Path | None = None,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> ServeProcess:
        flags = ("--config", str(config)) if config is not None else ()
        process = ServeProcess(
            data_dir or self.root / f"data-{len(self.started)}", env=dict(env or {}), args=(*flags, *args)
        )
        self.started.append(process)
        return process.start()

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()


# --- request bodies ---------------------------------------------------------------------------------------


def refresh_config(provider: str = "plugin:fixture", **fields: Any) -> dict[str, Any]:
    return {"type": "metadata_refresh", "provider": provider, **fields}


def job_body(
    cron: str = "0 4 * * *", config: Mapping[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """A `CreateLibraryJobRequest`; `fields` are its other keys (name, enabled, timezone)."""
    return {"cronSchedule": cron, "config": dict(config or refresh_config()), **fields}


# --- paths and common calls -------------------------------------------------------------------------------


def jobs_path(library_id: str, job_id: str | None = None) -> str:
    base = f"/libraries/{library_id}/jobs"
    return base if job_id is None else f"{base}/{job_id}"


def put_library(api: httpx.Client, name: str = "Comics", library_id: str | None = None) -> str:
    library_id = library_id or str(uuid.uuid4())
    response = api.put(f"/libraries/{library_id}", json={"name": name})
    assert response.status_code == 201, response.text
    return library_id


def create_job(api: httpx.Client, library_id: str, **fields: Any) -> dict[str, Any]:
    response = api.post(jobs_path(library_id), json=job_body(**fields))
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def list_jobs(api: httpx.Client, library_id: str) -> list[dict[str, Any]]:
    response = api.get(jobs_path(library_id))
    assert response.status_code == 200, response.text
    return response.json()["jobs"]  # type: ignore[no-any-return]


# --- checks -----------------------------------------------------------------------------------------------


def assert_error(
    response: httpx.Response,
    status: int,
    error: str,
    *,
    field: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """The response is the `ErrorResponse` of SPEC §2.1, with this status, name and (when given) details."""
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].split(";")[0] == JSON_TYPE, response.headers
    body = response.json()
    assert_error_shape(body)
    assert body["error"] == error, body
    if field is not None or code is not None:
        assert "details" in body, body
        if field is not None:
            assert body["details"]["field"] == field, body
        if code is not None:
            assert body["details"]["code"] == code, body
    return body  # type: ignore[no-any-return]


def assert_error_shape(body: Any) -> None:
    assert isinstance(body, dict), body
    assert set(body) <= {"error", "message", "details"}, body
    assert body["error"] in ERROR_NAMES, body
    assert isinstance(body["message"], str), body
    assert body["message"], body
    if "details" in body:
        assert isinstance(body["details"], dict), body


def assert_utc(timestamp: str | None) -> None:
    """RFC 3339 in UTC with a `Z` suffix (SPEC §2)."""
    assert timestamp is not None
    assert timestamp.endswith("Z"), timestamp
    datetime.fromisoformat(timestamp)


def poll(check: Callable[[], T | None], timeout_s: float, interval_s: float = 0.005) -> T | None:
    """Calls `check` until it returns something other than None, or the time is up (then returns None)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(interval_s)
