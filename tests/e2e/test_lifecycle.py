"""`libjobs serve` as an operator runs it (SPEC §9): first start, restarts, signals, bad flags and config,
and two processes sharing one PostgreSQL database."""

from __future__ import annotations

import signal
import stat
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import (
    API,
    Spawner,
    assert_error,
    client,
    create_job,
    jobs_path,
    list_jobs,
    poll,
    put_library,
    write_config,
)
from tests.support.processes import ServeProcess, admin_key, libjobs_command

pytestmark = pytest.mark.e2e

ANNOUNCEMENT = "created an admin API key"
REPLICA_LAG_S = 0.1  # SPEC §2.1: another replica sees a write within the projection lag (< 100 ms)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*libjobs_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )


def snapshot(api: httpx.Client, library: str) -> dict[str, object]:
    """What a client can see of a library: the library, its jobs and each job's ETag."""
    jobs = list_jobs(api, library)
    return {
        "library": api.get(f"/libraries/{library}").json(),
        "jobs": jobs,
        "etags": [api.get(jobs_path(library, j["id"])).headers["etag"] for j in jobs],
    }


# --- first start and restarts -----------------------------------------------------------------------------


def test_first_start_prints_the_admin_key_once_and_a_restart_keeps_key_and_data(
    spawn: Spawner, tmp_path: Path, plugins: dict[str, dict[str, Any]]
) -> None:
    data_dir = tmp_path / "data"
    config = write_config(tmp_path / "plugins-only.toml", plugins, keys=())  # no key configured at all
    first = spawn(data_dir, config=config)
    key = admin_key(data_dir)
    key_file = (data_dir / "admin-api-key").resolve()

    assert ANNOUNCEMENT in first.output()
    assert key in first.output()
    assert str(key_file) in first.output()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    with client(first.url + API, key) as api:
        library = put_library(api, "Persistent")
        job = create_job(api, library, name="kept", enabled=True, timezone="Europe/Paris")
        api.patch(jobs_path(library, job["id"]), json={"cronSchedule": "15 3 * * *"}).raise_for_status()
        create_job(api, library, name="second")
        before = snapshot(api, library)
    assert first.stop(signal.SIGTERM) == 0

    second = spawn(data_dir, config=config)
    assert ANNOUNCEMENT not in second.output()
    assert key not in second.output()
    assert admin_key(data_dir) == key
    with client(second.url + API, key) as api:
        assert snapshot(api, library) == before
    with client(second.url + API, "lj_some_other_key") as stranger:
        assert_error(stranger.get("/libraries"), 401, "Unauthorized")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_shuts_down_cleanly_with_exit_code_0(spawn: Spawner, sig: signal.Signals) -> None:
    process = spawn()

    code = process.stop(sig)

    assert "libjobs stopped" in process.output()
    assert code == 0


# --- start-up errors --------------------------------------------------------------------------------------
#
# Each `libjobs serve` that fails to start still imports the whole service (about a second), so all of them
# run at once in a module fixture, and each case below checks its own result.

BAD_FLAGS: dict[str, tuple[tuple[str, ...], str]] = {  # case -> (flags, what the message must name)
    "port_text": (("--port", "abc"), "--port"),
    "unknown_flag": (("--bogus",), "--bogus"),
}
BAD_CONFIGS: dict[str, tuple[str, str]] = {  # case -> (config file, the key the message must name)
    "unknown_key": ("[server]\nprot = 8000\n", "prot"),
    "unknown_plugin_key": ('[plugins.p]\ncommand = ["x"]\ncomand = ["y"]\n', "comand"),
    "wrong_type": ('[server]\nport = "8000"\n', "server.port"),
    "missing_command": ("[plugins.p]\nenabled = true\n", "plugins.p.command"),
}


@pytest.fixture(scope="module")
def failed_starts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("failed-starts")
    commands: dict[str, tuple[str, ...]] = {}
    for case, (flags, _) in BAD_FLAGS.items():
        commands[case] = ("serve", "--data-dir", str(root / case), *flags)
    for case, (toml, _) in BAD_CONFIGS.items():
        config = root / f"{case}.toml"
        config.write_text(toml)
        commands[case] = ("serve", "--data-dir", str(root / case), "--config", str(config))
    with ThreadPoolExecutor(len(commands)) as pool:
        results = pool.map(lambda args: run_cli(*args, cwd=root), commands.values())
        return dict(zip(commands, results, strict=True))


def single_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("libjobs: error: "), lines
    return lines[0]


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_a_bad_flag_is_one_line_on_stderr_and_exit_2(
    failed_starts: dict[str, subprocess.CompletedProcess[str]], case: str
) -> None:
    line = single_error_line(failed_starts[case])

    assert BAD_FLAGS[case][1] in line
    assert failed_starts[case].stdout == ""


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_a_bad_config_file_is_one_line_naming_the_key_and_exit_2(
    failed_starts: dict[str, subprocess.CompletedProcess[str]], case: str
) -> None:
    line = single_error_line(failed_starts[case])

    assert BAD_CONFIGS[case][1] in line
    assert f"{case}.toml" in line


# --- PostgreSQL: two processes, one database --------------------------------------------------------------


def lag_until(condition: Callable[[], bool], timeout_s: float = 5) -> float:
    """Polls `condition` until it holds; returns how long that took (seconds)."""
    started = time.monotonic()
    assert poll(lambda: True if condition() else None, timeout_s, 0.002), f"not seen within {timeout_s} s"
    return time.monotonic() - started


@pytest.mark.postgres
def test_two_processes_on_one_postgres_database_see_each_others_writes(
    spawn: Spawner, tmp_path: Path, postgres_url: str, config_file: Path
) -> None:
    env = {"LIBJOBS_DATABASE_URL": postgres_url}
    one: ServeProcess = spawn(tmp_path / "one", config=config_file, env=env)
    two: ServeProcess = spawn(tmp_path / "two", config=config_file, env=env)

    with client(one.url + API) as a, client(two.url + API) as b:
        library = put_library(a, "Shared")
        assert lag_until(lambda: b.get(jobs_path(library)).status_code == 200) < REPLICA_LAG_S

        job = create_job(a, library, name="made on one")
        path = jobs_path(library, job["id"])
        assert lag_until(lambda: b.get(path).status_code == 200) < REPLICA_LAG_S
        assert b.get(path).json() == job
        assert list_jobs(b, library) == [job]

        changed = b.patch(path, json={"name": "changed on two", "enabled": True}, headers={"If-Match": '"1"'})
        assert changed.status_code == 200, changed.text
        assert lag_until(lambda: a.get(path).headers["etag"] == '"2"') < REPLICA_LAG_S
        assert a.get(path).json() == changed.json()
        stale = a.patch(path, json={"name": "stale"}, headers={"If-Match": '"1"'})
        assert_error(stale, 412, "PreconditionFailed")

        assert a.delete(path).status_code == 204
        assert lag_until(lambda: b.get(path).status_code == 404) < REPLICA_LAG_S
        assert list_jobs(b, library) == []
