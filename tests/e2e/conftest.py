"""Fixtures of the end-to-end tests: real `libjobs serve` processes with a config file, driven over HTTP.

`server` is one process for the whole session (starting one costs about a second); tests that use it
keep to libraries of their own (`library`), so they never see each other's jobs. Tests that restart a
process or need another configuration start their own with `spawn`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import (
    API,
    JWT_ENV,
    PLUGIN_DATA,
    READER,
    WRITER,
    Spawner,
    client,
    put_library,
    standard_plugins,
    write_config,
)
from tests.support.processes import ServeProcess


@pytest.fixture(scope="session")
def plugin_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plugin") / "fixture-data.json"
    path.write_text(json.dumps(PLUGIN_DATA))
    return path


@pytest.fixture(scope="session")
def plugins(plugin_data: Path) -> dict[str, dict[str, Any]]:
    return standard_plugins(plugin_data)


@pytest.fixture(scope="session")
def config_file(tmp_path_factory: pytest.TempPathFactory, plugins: dict[str, dict[str, Any]]) -> Path:
    return write_config(tmp_path_factory.mktemp("config") / "libjobs.toml", plugins)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    """Processes of one test; stopped (SIGTERM) when it ends."""
    spawner = Spawner(tmp_path)
    yield spawner
    spawner.stop_all()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, config_file: Path) -> Iterator[ServeProcess]:
    """The shared process: the standard config file, and JWTs (HS256, audience) accepted."""
    spawner = Spawner(tmp_path_factory.mktemp("server"))
    yield spawner(config=config_file, env=JWT_ENV)
    spawner.stop_all()


@pytest.fixture(scope="session")
def api(server: ServeProcess) -> Iterator[httpx.Client]:
    """An admin client of the shared server's `/api/v1`."""
    with client(server.url + API) as c:
        yield c


@pytest.fixture(scope="session")
def reader(server: ServeProcess) -> Iterator[httpx.Client]:
    """A client of `/api/v1` whose key has only `jobs:read`."""
    with client(server.url + API, READER) as c:
        yield c


@pytest.fixture(scope="session")
def writer(server: ServeProcess) -> Iterator[httpx.Client]:
    """A client of `/api/v1` whose key has `jobs:read` and `jobs:write` (no `catalog:write`)."""
    with client(server.url + API, WRITER) as c:
        yield c


@pytest.fixture(scope="session")
def anonymous(server: ServeProcess) -> Iterator[httpx.Client]:
    """A client of the shared server's root, without credentials."""
    with client(server.url, key=None) as c:
        yield c


@pytest.fixture
def library(api: httpx.Client) -> str:
    """A new library of the shared server's catalog, for this test only."""
    return put_library(api)
