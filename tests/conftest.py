"""Fixtures shared by every tier: stores (SQLite and PostgreSQL), settings, real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import fresh_schema

pytest_plugins = ["tests.support.nats"]  # the `nats_server` fixture: a real nats-server -js per test


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A database URL with a schema of its own (fails instead of skipping when CI requires PostgreSQL)."""
    with fresh_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """Each test using this runs twice: on embedded SQLite (None) and on PostgreSQL (a fresh schema)."""
    if request.param == "sqlite":
        yield None
    else:
        with fresh_schema() as url:
            yield url
