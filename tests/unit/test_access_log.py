"""The access log: one JSON line per request, buffered briefly, never lost at shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from service.adapters.logs import AccessLog

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def info_enabled() -> Iterator[None]:
    logger = logging.getLogger("libjobs.http")
    level = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(level)


async def test_lines_are_written_within_the_flush_interval(capfd: pytest.CaptureFixture[str]) -> None:
    log = AccessLog(json_lines=True, flush_after_s=0.05)
    log("GET", "/healthz", "/healthz", 200, 0.0012, "rid-1")
    log("POST", "/api/v1/x", "/api/v1/x", 201, 0.01, "rid-2")
    assert capfd.readouterr().err == ""  # buffered
    await asyncio.sleep(0.2)
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    assert [(e["msg"], e["request_id"], e["status"]) for e in lines] == [
        ("GET /healthz 200 1.2ms", "rid-1", 200),
        ("POST /api/v1/x 201 10.0ms", "rid-2", 201),
    ]
    assert {"ts", "level", "logger", "route", "duration_ms"} <= lines[0].keys()
    stamp = datetime.fromisoformat(lines[0]["ts"])  # RFC 3339 in UTC, to the millisecond
    assert lines[0]["ts"].endswith("+00:00")
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 1


async def test_flush_writes_what_is_buffered(capfd: pytest.CaptureFixture[str]) -> None:
    log = AccessLog(json_lines=False, flush_after_s=60)
    log("GET", "/readyz", "/readyz", 503, 0.002, "rid-3")
    log.flush()
    assert capfd.readouterr().err.endswith("INFO libjobs.http: GET /readyz 503 2.0ms\n")


async def test_nothing_is_written_when_the_logger_is_quiet(capfd: pytest.CaptureFixture[str]) -> None:
    logging.getLogger("libjobs.http").setLevel(logging.WARNING)
    log = AccessLog(json_lines=True)
    log("GET", "/healthz", "/healthz", 200, 0.001, "rid-4")
    log.flush()
    assert capfd.readouterr().err == ""
