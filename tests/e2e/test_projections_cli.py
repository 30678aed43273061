"""`libjobs projections list | status | rebuild` as an operator runs it (SPEC §8, §9), next to a running
`libjobs serve`, on SQLite and on PostgreSQL, with the same `--data-dir`, `--config` and environment."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import nats
import pytest

from contracts.catalog import UpsertSeriesRequest
from service.adapters.store import StoreReader, store_env
from service.application import LibraryJobs
from service.domain.jobs import ConfigDraft, CreateDraft, ProviderInfo, ValidationPolicy
from service.ports import CommandContext, LibraryContents
from tests.e2e.helpers import (
    API,
    Spawner,
    client,
    create_job,
    jobs_path,
    list_jobs,
    put_library,
    write_config,
)
from tests.support.nats import NatsServer
from tests.support.processes import libjobs_command

pytestmark = pytest.mark.e2e

TIMEOUT_S = 120


def projections(
    data_dir: Path, *args: str, config: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    flags = ["--data-dir", str(data_dir), *(["--config", str(config)] if config else [])]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIBJOBS_")}
    return subprocess.run(
        [*libjobs_command(), "projections", *args, *flags],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        env=clean | (env or {}),
    )


def line_of(stdout: str, name: str) -> list[str]:
    return next(line.split() for line in stdout.splitlines() if line.startswith(name + " "))


def test_a_rebuild_next_to_a_running_service_equals_it_and_is_loaded_at_the_next_start(
    spawn: Spawner, config_file: Path, database_url: str | None
) -> None:
    env = {"LIBJOBS_DATABASE_URL": database_url} if database_url else {}
    server = spawn(config=config_file, env=env)
    with client(server.url + API) as api:
        library = put_library(api)
        jobs = [create_job(api, library, name=f"job {i}")["id"] for i in range(5)]
        api.patch(jobs_path(library, jobs[0]), json={"name": "renamed", "enabled": True}).raise_for_status()
        api.delete(jobs_path(library, jobs[1])).raise_for_status()

        listed = projections(server.data_dir, "list", config=config_file, env=env)
        assert listed.returncode == 0, listed.stderr
        assert line_of(listed.stdout, "views")[:3] == ["views", "yes", "views_v2"]
        assert line_of(listed.stdout, "relay")[:2] == ["relay", "no"]

        rebuilt = projections(server.data_dir, "rebuild", config=config_file, env=env)
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert "equal a replay, byte for byte" in rebuilt.stdout
        assert "swapped in as views_v2.1 (replacing views_v2)" in rebuilt.stdout
        assert "views: replaying" in rebuilt.stderr  # the progress bar

        status = projections(server.data_dir, "status", config=config_file, env=env)
        assert status.returncode == 0, status.stderr
        views = line_of(status.stdout, "views")
        assert views[4] == "views_v2.1"
        assert "job 4," in status.stdout  # rows by kind: four live jobs

        served = list_jobs(api, library)  # the service kept serving from memory
        assert [j["name"] for j in served] == ["renamed", "job 2", "job 3", "job 4"]
        served.append(create_job(api, library, name="after the rebuild"))  # written on top of the swap
    assert server.stop() == 0  # SIGTERM: the last rows are persisted

    checked = projections(server.data_dir, "rebuild", "--check", config=config_file, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "equal a replay, byte for byte" in checked.stdout
    assert "swapped in" not in checked.stdout

    restarted = spawn(server.data_dir, config=config_file, env=env)
    with client(restarted.url + API) as api:
        assert list_jobs(api, library) == served


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for args, message in [
        (("rebuild", "nope"), "unknown projection 'nope'; known: views, relay"),
        (("status", "nope"), "unknown projection 'nope'"),
        (("rebuild", "relay"), "relay cannot be rebuilt"),
        (("rebuild", "--frobnicate"), "unrecognized arguments: --frobnicate"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
    ]:
        result = projections(tmp_path / "data", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert message in result.stderr
    missing = projections(tmp_path / "data", "status", config=tmp_path / "missing.toml")
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr


# --- a replay fires nothing, publishes nothing, calls no plugin --------------------------------------------


def seed_due_jobs(data_dir: Path, plugin: str) -> int:
    """A store whose jobs are due every minute and have run before, written as the service would; returns
    its last position."""
    info = ProviderInfo(enabled=True, capabilities=frozenset({"series", "book"}))
    env = store_env(data_dir=data_dir, database_url=None, pool_size=1, lock_timeout_s=5)
    app = LibraryJobs(env, providers=lambda name: info if name == plugin else None,
                      library_contents=lambda _: LibraryContents((), (), ()),
                      policy=ValidationPolicy(min_interval_s=0))  # fmt: skip
    try:
        who = CommandContext(actor="key:test", request_id="seed")
        library_id = uuid.uuid4()
        app.upsert_library(library_id, "Comics", who)
        app.upsert_series(
            library_id, uuid.uuid4(), msgspec.to_builtins(UpsertSeriesRequest(title="Akira")), who
        )
        draft = CreateDraft(
            cron_schedule="* * * * *", enabled=True, config=ConfigDraft(provider=f"plugin:{plugin}")
        )
        for i in range(20):
            job_id = app.create_job(library_id, draft, who).id
            instant = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30 - i)
            fired = app.request_run(job_id, instant, "schedule", CommandContext(actor="scheduler"))
            assert fired is not None
            assert fired.run_id is not None
            app.start_run(job_id, fired.run_id, CommandContext(actor="executor"), max_attempts=3)
        return StoreReader(app).max_position()
    finally:
        app.close()


async def test_a_rebuild_publishes_nothing_and_calls_no_plugin(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    marker = tmp_path / "plugin-started"
    config = write_config(tmp_path / "libjobs.toml", {
        "marker": {"command": ["sh", "-c", f"touch {marker}; sleep 30"], "capabilities": ["series", "book"]},
    })  # fmt: skip
    data_dir = tmp_path / "data"
    end = await asyncio.to_thread(seed_due_jobs, data_dir, "marker")
    env = {"LIBJOBS_NATS_URL": nats_server.url}

    seen: list[str] = []
    nc = await nats.connect(nats_server.url)
    try:

        async def note(msg: nats.aio.msg.Msg) -> None:
            seen.append(msg.subject)

        await nc.subscribe(">", cb=note)  # anything anyone sends: events, commands, JetStream API calls
        await nc.flush()
        result = await asyncio.to_thread(projections, data_dir, "rebuild", config=config, env=env)
        assert result.returncode == 0, result.stderr
        assert f"up to position {end:,}" in result.stdout
        await asyncio.sleep(0.5)
        await nc.flush()
        assert seen == []
        await nc.publish("probe.subscription", b"")  # the subscription itself works
        await nc.flush()
        await asyncio.sleep(0.1)
        assert seen == ["probe.subscription"]
    finally:
        await nc.close()
    assert not marker.exists()  # no plugin was started
    after = projections(data_dir, "status", config=config, env=env)
    assert line_of(after.stdout, "views")[1:3] == [f"{end:,}", f"{end:,}"]  # nothing fired: no new event
