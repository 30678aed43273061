"""Fixtures of the store-backed integration tests: settings on both stores and running services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.bootstrap import Service
from service.settings import Settings
from tests.integration.harness import StepClock, make_settings, running


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    """Settings on embedded SQLite and on PostgreSQL (a fresh schema): each test using it runs twice."""
    return make_settings(tmp_path, database_url)


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Service]:
    """A started service whose clock starts at `T0` and ticks one second per reading."""
    async with running(settings, clock=StepClock()) as svc:
        yield svc


@pytest.fixture
async def pair(settings: Settings) -> AsyncIterator[tuple[Service, Service]]:
    """Two services on one store, as two processes of a deployment would be."""
    async with running(settings) as first, running(settings) as second:
        yield first, second
