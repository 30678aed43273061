"""An executor killed mid-run (SPEC §4.6), as an operator would see it: one `libjobs serve` process serves the
API, another executes runs; the executor is killed with SIGKILL in the middle of a run and started again.
The run is delivered again and continues under the same run id: it is recorded once, every series is
refreshed once, and the outcome counts every series once."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from service.adapters.store import StoreReader, store_env
from service.application import LibraryJobs
from service.domain.catalog import Series
from service.domain.jobs import LibraryJob
from service.ports import LibraryContents
from tests.e2e.helpers import API, REPO, Spawner, client, put_library, refresh_config, write_config
from tests.support.nats import NatsServer

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

SERIES = 30


def events(database_url: str, data_dir: Path) -> list[Any]:
    env = store_env(data_dir=data_dir, database_url=database_url, pool_size=2, lock_timeout_s=5)
    app = LibraryJobs(env, providers=lambda _: None, library_contents=lambda _: LibraryContents((), (), ()))
    try:
        return [event for _, event in StoreReader(app).read(0, 1_000_000)]
    finally:
        app.close()


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_run_whose_executor_is_killed_continues_and_is_recorded_once(
    tmp_path: Path, postgres_url: str
) -> None:
    data = tmp_path / "fixture.json"
    data.write_text(
        json.dumps(
            {
                "series": {
                    f"s-{i}": {"title": f"T{i}", "metadata": {"rating": i + 0.5}} for i in range(SERIES)
                },
                "delayMs": 120,
            }
        )
    )
    plugin = {
        "command": [sys.executable, "-m", "service.adapters.plugins.fixture", "--data", str(data)],
        "env": {"PYTHONPATH": str(REPO)},
        "permissions": ["metadata:write:*"],
    }
    config = write_config(tmp_path / "libjobs.toml", {"fixture": plugin})
    with NatsServer(tmp_path / "nats") as nats:
        env = {
            "LIBJOBS_DATABASE_URL": postgres_url,
            "LIBJOBS_NATS_URL": nats.url,
            "LIBJOBS_RUN_ACK_WAIT_S": "2",
        }
        spawn = Spawner(tmp_path)
        try:
            spawn(config=config, env=env, args=("--roles", "api,projector"))
            api_process = spawn.started[0]
            executor = spawn(config=config, env=env, args=("--roles", "executor"))
            with client(api_process.url + API) as api:
                library = put_library(api)
                for i in range(SERIES):
                    body = {
                        "title": f"T{i:02}",
                        "externalIds": [{"source": "plugin:fixture", "externalId": f"s-{i}"}],
                    }
                    series_id = f"00000000-0000-4000-8000-{i:012d}"
                    assert api.put(f"/libraries/{library}/series/{series_id}", json=body).status_code in (
                        200,
                        201,
                    )
                job = api.post(
                    f"/libraries/{library}/jobs",
                    json={"cronSchedule": "0 0 29 2 *", "config": refresh_config(maxConcurrency=1)},
                )
                assert job.status_code == 201, job.text
                job_id = job.json()["id"]
                run = api.post(f"/libraries/{library}/jobs/{job_id}/run-now")
                assert run.status_code == 200, run.text
                run_id = UUID(run.json()["taskId"])

                def progressed() -> bool:
                    return any(
                        isinstance(e, LibraryJob.RunProgressed)
                        and e.run_id == run_id
                        and e.progress["done"] >= 5
                        for e in events(postgres_url, tmp_path / "check")
                    )

                wait_for(progressed, 30, "the run to be under way")
                executor.stop(signal.SIGKILL)
                executor.start()

                def finished() -> list[Any]:
                    return [
                        e
                        for e in events(postgres_url, tmp_path / "check")
                        if isinstance(e, LibraryJob.RunFinished) and e.run_id == run_id
                    ]

                wait_for(finished, 60, "the run to finish")
                time.sleep(3)  # anything recorded twice would be by now (the ack wait is 2 s)
                stored = events(postgres_url, tmp_path / "check")
                dto = api.get(f"/libraries/{library}/jobs/{job_id}").json()
        finally:
            spawn.stop_all()

    outcomes = [e for e in stored if isinstance(e, LibraryJob.RunFinished) and e.run_id == run_id]
    assert len(outcomes) == 1
    assert outcomes[0].status == "success", outcomes[0].message
    assert outcomes[0].counts == {
        "planned": SERIES,
        "done": SERIES,
        "succeeded": SERIES,
        "failed": 0,
        "skipped": 0,
    }
    assert (
        outcomes[0].message
        == f"Refreshed {SERIES} of {SERIES} series ({SERIES} succeeded, 0 failed, 0 skipped)"
    )
    attempts = [e.attempt for e in stored if isinstance(e, LibraryJob.RunStarted) and e.run_id == run_id]
    assert attempts == [1, 2]
    refreshed = Counter(
        e.originator_id for e in stored if isinstance(e, Series.Refreshed) and e.run_id == run_id
    )
    assert len(refreshed) == SERIES
    assert set(refreshed.values()) == {1}
    assert (dto["lastRunStatus"], dto["currentRunId"]) == ("success", None)
