"""Exactly-once firing across replicas (SPEC §3.3), as an operator would run it: three `libjobs serve`
processes on one PostgreSQL database and one NATS server, jobs firing every two seconds, one replica
killed with SIGKILL and restarted, NATS restarted. Every due (job, instant) is claimed exactly once
(`RunRequested` or, while the first run is still queued, `FireSkipped`), none is missing, none is early."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from service.adapters.store import StoreReader, store_env
from service.application import LibraryJobs
from service.domain.jobs import LibraryJob
from service.ports import LibraryContents
from tests.e2e.helpers import API, Spawner, client, job_body, put_library, refresh_config
from tests.support.nats import NatsServer
from tests.support.processes import ServeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

JOBS = 24
PERIOD_S = 2


def claims_by_job(database_url: str, data_dir: Path) -> dict[UUID, list[tuple[datetime, datetime]]]:
    """Every claimed fire in the store: job → [(nominal instant, when it was stored)]."""
    env = store_env(data_dir=data_dir, database_url=database_url, pool_size=2, lock_timeout_s=5)
    app = LibraryJobs(env, providers=lambda _: None, library_contents=lambda _: LibraryContents((), (), ()))
    try:
        found: dict[UUID, list[tuple[datetime, datetime]]] = {}
        for _, event in StoreReader(app).read(0, 1_000_000):
            if isinstance(event, LibraryJob.RunRequested | LibraryJob.FireSkipped) and event.scheduled_for:
                found.setdefault(event.originator_id, []).append((event.scheduled_for, event.timestamp))
        return found
    finally:
        app.close()


def due_instants(start: datetime, end: datetime) -> list[datetime]:
    """The instants of `*/2 * * * * *` in (start, end]."""
    instant = start.replace(microsecond=0) + timedelta(seconds=1)
    found = []
    while instant <= end:
        if instant.second % PERIOD_S == 0 and instant > start:
            found.append(instant)
        instant += timedelta(seconds=1)
    return found


def test_three_replicas_fire_each_due_instant_exactly_once_through_a_crash_and_a_nats_restart(
    tmp_path: Path, postgres_url: str, config_file: Path
) -> None:
    with NatsServer(tmp_path / "nats") as nats:
        env = {
            "LIBJOBS_DATABASE_URL": postgres_url,
            "LIBJOBS_NATS_URL": nats.url,
            "LIBJOBS_MIN_INTERVAL_S": "0",
        }
        spawn = Spawner(tmp_path)
        try:
            replicas: list[ServeProcess] = [spawn(config=config_file, env=env) for _ in range(3)]
            jobs: dict[str, datetime] = {}
            with client(replicas[0].url + API) as api:
                library = put_library(api)
                for _ in range(JOBS):
                    body = job_body(
                        cron="*/2 * * * * *", config=refresh_config(), timezone="UTC", enabled=True
                    )
                    response = api.post(f"/libraries/{library}/jobs", json=body)
                    assert response.status_code == 201, response.text
                    jobs[response.json()["id"]] = datetime.fromisoformat(response.json()["createdAt"])
            time.sleep(4)
            replicas[1].stop(signal.SIGKILL)
            time.sleep(2)
            replicas[1].start()
            time.sleep(2)
            nats.stop()
            time.sleep(2)
            nats.start()
            time.sleep(3)
            end = datetime.now(UTC) - timedelta(seconds=1.5)  # fires due by then were claimed by someone
        finally:
            spawn.stop_all()

    found = claims_by_job(postgres_url, tmp_path / "check")
    problems: list[Any] = []
    for job_id, created in jobs.items():
        claimed = found.get(UUID(job_id), [])
        instants = [instant for instant, _ in claimed]
        if len(instants) != len(set(instants)):
            problems.append(("claimed twice", job_id, sorted(instants)))
        missing = set(due_instants(created, end)) - set(instants)
        if missing:
            problems.append(("missing", job_id, sorted(missing)))
        early = [(i, s) for i, s in claimed if s < i]
        if early:
            problems.append(("early", job_id, early))
    assert problems == []
    assert sum(len(c) for c in found.values()) >= JOBS * 6  # it really fired, through all of it
