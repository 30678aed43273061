"""`libjobs events` as an operator runs it (SPEC §8, §9): the audit log as JSON lines, read from the data dir
of a running `libjobs serve`, with the same `--data-dir` and `--config`."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.e2e.helpers import create_job, jobs_path
from tests.support.processes import ServeProcess, libjobs_command

pytestmark = pytest.mark.e2e

WAIT_S = 20


def events_command(server: ServeProcess, config_file: Path, *args: str) -> list[str]:
    return [
        *libjobs_command(),
        "events",
        "--data-dir",
        str(server.data_dir),
        "--config",
        str(config_file),
        *args,
    ]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LIBJOBS_")}


def run_events(server: ServeProcess, config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        events_command(server, config_file, *args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean_env(),
    )


def history(api: httpx.Client, library: str, job_id: str) -> list[dict[str, Any]]:
    response = api.get(jobs_path(library, job_id) + "/history")
    assert response.status_code == 200, response.text
    return response.json()["events"]  # type: ignore[no-any-return]


def lines_of(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_events_of_a_job_are_exactly_its_envelopes(
    server: ServeProcess, config_file: Path, api: httpx.Client, library: str
) -> None:
    job = create_job(api, library, name="audited")["id"]
    other = create_job(api, library, name="not this one")["id"]
    api.patch(jobs_path(library, job), json={"name": "audited, renamed"}).raise_for_status()
    api.patch(jobs_path(library, other), json={"enabled": True}).raise_for_status()

    result = run_events(server, config_file, "--job", job)

    assert result.returncode == 0, result.stderr
    printed = lines_of(result.stdout)
    assert [e["type"] for e in printed] == ["JobCreated", "JobUpdated"]
    assert printed == history(api, library, job)  # the same envelopes as the audit routes (and the relay)
    assert all(line.startswith("{") for line in result.stdout.splitlines())


def test_filters_combine_and_the_whole_log_is_in_global_order(
    server: ServeProcess, config_file: Path, api: httpx.Client, library: str
) -> None:
    job = create_job(api, library)["id"]
    api.delete(jobs_path(library, job)).raise_for_status()

    everything = lines_of(run_events(server, config_file).stdout)
    of_library = lines_of(run_events(server, config_file, "--library", library).stdout)
    deleted = run_events(server, config_file, "--library", library, "--type", "JobDeleted,JobUpdated")
    after = run_events(server, config_file, "--library", library, "--after", str(of_library[0]["position"]))

    positions = [e["position"] for e in everything]
    assert positions == sorted(positions)
    assert of_library == [e for e in everything if e["libraryId"] == library]
    assert [e["type"] for e in of_library] == ["LibraryRegistered", "JobCreated", "JobDeleted"]
    assert [e["type"] for e in lines_of(deleted.stdout)] == ["JobDeleted"]
    assert lines_of(after.stdout) == of_library[1:]


def _reader(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def test_follow_prints_new_events_and_stops_cleanly_on_sigterm(
    server: ServeProcess, config_file: Path, api: httpx.Client, library: str
) -> None:
    job = create_job(api, library)["id"]
    process = subprocess.Popen(
        events_command(server, config_file, "--job", job, "--follow"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    threading.Thread(target=_reader, args=(process.stdout, lines), daemon=True).start()
    try:
        assert json.loads(lines.get(timeout=WAIT_S))["type"] == "JobCreated"
        api.patch(jobs_path(library, job), json={"enabled": True}).raise_for_status()
        followed = json.loads(lines.get(timeout=WAIT_S))
        assert followed["type"] == "JobEnabled"
        assert followed["jobId"] == job
        assert lines.empty()

        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    assert "Traceback" not in process.stderr.read()


def test_ctrl_c_stops_follow_with_exit_code_0(
    server: ServeProcess, config_file: Path, api: httpx.Client, library: str
) -> None:
    job = create_job(api, library)["id"]
    process = subprocess.Popen(
        events_command(server, config_file, "--job", job, "--follow"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=clean_env(),
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    threading.Thread(target=_reader, args=(process.stdout, lines), daemon=True).start()
    try:
        assert json.loads(lines.get(timeout=WAIT_S))["type"] == "JobCreated"  # following from here on
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(0.5)  # it does not end by itself
        process.send_signal(signal.SIGINT)
        assert process.wait(WAIT_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--job", "not-a-uuid"), "not a UUID"),
        (("--library", "42"), "not a UUID"),
        (("--type", "JobExploded"), "unknown event type"),
        (("--after", "-3"), "not a position"),
        (("--follow", "--bogus"), "unrecognized arguments"),
    ],
)
def test_bad_flags_are_one_line_and_exit_code_2(
    server: ServeProcess, config_file: Path, args: tuple[str, ...], says: str
) -> None:
    result = run_events(server, config_file, *args)

    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert says in result.stderr
