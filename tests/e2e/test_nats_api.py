"""`libjobs serve` with its embedded NATS (SPEC §5, §9): commands over request/reply, events on the stream,
`libjobs nats setup` and `libjobs asyncapi`, and nothing left running after SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import nats
import pytest

from contracts.nats import EVENTS_STREAM, EventEnvelope
from service.adapters.nats.embedded import running_url
from tests.e2e.helpers import API, Spawner, client, put_library, refresh_config
from tests.support.nats import NatsServer
from tests.support.processes import ServeProcess, libjobs_command

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


async def request(url: str, command: str, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    nc = await nats.connect(url)
    try:
        reply = await nc.request(
            f"libjobs.cmd.{command}", json.dumps(body).encode(), timeout=10, headers=headers
        )
        decoded: dict[str, Any] = json.loads(reply.data)
        return decoded
    finally:
        await nc.close()


async def stream_types(url: str, subject: str) -> list[str]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for _ in range(100):  # the relay publishes within milliseconds; allow a slow machine 5 s
            state = (await js.stream_info(EVENTS_STREAM, subjects_filter=subject)).state
            if state.subjects and state.subjects.get(subject, 0) >= 3:
                break
            await asyncio.sleep(0.05)
        found = []
        for seq in range(state.first_seq, state.last_seq + 1):
            message = await js.get_msg(EVENTS_STREAM, seq)
            if message.subject == subject:
                assert message.data is not None
                found.append(msgspec.json.decode(message.data, type=EventEnvelope).type)
        return found
    finally:
        await nc.close()


def until(get: Callable[[], T], done: Callable[[T], bool], timeout_s: float = 10) -> T:
    deadline = time.monotonic() + timeout_s
    while not done(found := get()):
        assert time.monotonic() < deadline, f"still {found!r}"
        time.sleep(0.05)
    return found


def embedded_pids(data_dir: Path) -> list[int]:
    """nats-server processes running on this data dir's store."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                cmdline
                and cmdline[0].endswith(b"nats-server")
                and str(data_dir).encode() in b" ".join(cmdline)
            ):
                status = (entry / "status").read_text()
                if "State:\tZ" not in status:
                    found.append(int(entry.name))
    return found


def test_embedded_mode_end_to_end(spawn: Spawner, config_file: Path) -> None:
    server: ServeProcess = spawn(config=config_file)
    url = running_url(server.data_dir)
    assert url is not None
    assert url.startswith("nats://127.0.0.1:")
    assert url != "nats://127.0.0.1:4222"
    library = "3f2c7b9e-5d41-4c1a-9b0e-6a8d2f4e1c01"

    upserted = asyncio.run(request(url, "catalog.library.upsert", {"libraryId": library, "name": "Comics"}))
    assert upserted["ok"] is True
    created = asyncio.run(
        request(
            url,
            "job.create",
            {"libraryId": library, "cronSchedule": "0 4 * * *", "config": refresh_config()},
            **{"Libjobs-Actor": "e2e-client"},
        )
    )
    assert created["ok"] is True, created
    job = created["result"]
    with client(server.url + API) as api:  # HTTP serves what NATS created, byte for byte the same DTO
        assert api.get(f"/libraries/{library}/jobs/{job['id']}").json() == job
    bad = asyncio.run(request(url, "job.create", {"libraryId": library, "cronSchedule": 5}))
    assert (bad["ok"], bad["status"], bad["error"]["error"]) == (False, 400, "BadRequest")

    updated = asyncio.run(
        request(
            url, "job.update", {"libraryId": library, "jobId": job["id"], "name": "Nightly", "ifMatch": 1}
        )
    )
    assert (updated["ok"], updated["result"]["name"], updated["result"]["version"]) == (True, "Nightly", 2)
    stale = asyncio.run(request(url, "job.delete", {"libraryId": library, "jobId": job["id"], "ifMatch": 1}))
    assert (stale["ok"], stale["status"]) == (False, 412)
    subject = f"libjobs.evt.job.{library}.{job['id']}"
    deleted = asyncio.run(request(url, "job.delete", {"libraryId": library, "jobId": job["id"]}))
    assert deleted == {"ok": True, "result": None}
    assert asyncio.run(stream_types(url, subject)) == ["JobCreated", "JobUpdated", "JobDeleted"]

    assert embedded_pids(server.data_dir)
    assert server.stop() == 0
    assert embedded_pids(server.data_dir) == []
    assert running_url(server.data_dir) is None


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*libjobs_command(), *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )


def test_nats_setup_creates_the_streams_idempotently(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBJOBS_")}
    first = run_cli("nats", "setup", "--data-dir", str(tmp_path), env=env)
    assert first.returncode == 0, first.stderr
    assert "created stream LIBJOBS_EVENTS" in first.stdout
    assert "created stream LIBJOBS_RUNS" in first.stdout
    again = run_cli("nats", "setup", "--data-dir", str(tmp_path), env=env)
    assert again.returncode == 0, again.stderr
    assert "stream LIBJOBS_EVENTS is up to date" in again.stdout
    assert embedded_pids(tmp_path) == []  # the server it started for the occasion is gone


def test_nats_setup_says_clearly_when_nats_cannot_be_reached(tmp_path: Path) -> None:
    env = {**os.environ, "LIBJOBS_NATS_URL": "nats://127.0.0.1:1"}
    result = run_cli("nats", "setup", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]  # after the log lines of each attempt
    assert last_line.startswith("libjobs: error: cannot reach NATS at nats://127.0.0.1:1: ")


def test_the_committed_asyncapi_document_is_what_the_cli_prints() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBJOBS_")}
    result = run_cli("asyncapi", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO / "docs" / "asyncapi.yaml").read_text()


def test_readiness_and_metrics_follow_an_external_nats(
    spawn: Spawner, config_file: Path, tmp_path: Path
) -> None:
    with NatsServer(tmp_path / "nats") as nats_server:
        server = spawn(config=config_file, env={"LIBJOBS_NATS_URL": nats_server.url})
        anonymous = httpx.Client(base_url=server.url, timeout=5)
        ready = anonymous.get("/readyz").json()
        assert (ready["status"], ready["checks"]["nats"]) == ("ok", "ok")
        with client(server.url + API) as api:
            put_library(api)  # one event for the relay
        published = "libjobs_relay_published_total 1.0"
        metrics = until(lambda: anonymous.get("/metrics").text, lambda text: published in text)
        assert "libjobs_nats_connected 1.0" in metrics

        nats_server.stop()
        down = until(lambda: anonymous.get("/readyz"), lambda r: r.status_code == 503)
        assert down.json()["checks"]["nats"].startswith("unavailable")
        assert "libjobs_nats_connected 0.0" in anonymous.get("/metrics").text
        nats_server.start()
        until(lambda: anonymous.get("/readyz"), lambda r: r.status_code == 200, timeout_s=15)
