"""What the cluster tests check against: the events in the store, due instants of a cron, jobs with series."""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import httpx
import pytest

from deploy.local_cluster import ClusterError
from deploy.local_cluster.cluster import haproxy_binary
from service.adapters.store import StoreReader, store_env
from service.application import LibraryJobs
from service.domain.catalog import Series
from service.domain.jobs import LibraryJob
from service.ports import LibraryContents
from tests.e2e.helpers import put_library, refresh_config

T = TypeVar("T")


def require_haproxy() -> None:
    """The cluster's front; CI installs it (.ci/run)."""
    try:
        haproxy_binary()
    except ClusterError as e:
        pytest.fail(str(e))


def stored_events(database_url: str, data_dir: Path) -> list[Any]:
    """Every event of the store, in order (read with the application's own mapper)."""
    env = store_env(data_dir=data_dir, database_url=database_url, pool_size=2, lock_timeout_s=5)
    app = LibraryJobs(env, providers=lambda _: None, library_contents=lambda _: LibraryContents((), (), ()))
    try:
        return [event for _, event in StoreReader(app).read(0, 10_000_000)]
    finally:
        app.close()


def due_instants(start: datetime, end: datetime, period_s: int) -> list[datetime]:
    """The instants of `*/period_s * * * * *` in (start, end]."""
    instant = start.replace(microsecond=0) + timedelta(seconds=1)
    found = []
    while instant <= end:
        if instant.second % period_s == 0:
            found.append(instant)
        instant += timedelta(seconds=1)
    return found


def wait_until(check: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.2) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


SERIES_PER_JOB = 3


@dataclass(frozen=True)
class FiringJob:
    id: UUID
    library_id: str
    created: datetime


def create_firing_jobs(api: httpx.Client, count: int, cron: str) -> dict[UUID, FiringJob]:
    """`count` enabled jobs of `cron`, each in a library of its own with SERIES_PER_JOB series known to the
    fixture plugin; every run refreshes them all (nothing is skipped as recently synced)."""
    jobs: dict[UUID, FiringJob] = {}
    for _ in range(count):
        library = put_library(api)
        for i in range(SERIES_PER_JOB):
            body = {"title": f"T{i}", "externalIds": [{"source": "plugin:fixture", "externalId": f"s-{i}"}]}
            response = api.put(f"/libraries/{library}/series/{uuid.uuid4()}", json=body)
            assert response.status_code in (200, 201), response.text
        config = refresh_config(maxConcurrency=1, skipRecentlySyncedWithinS=0)
        body = {"cronSchedule": cron, "timezone": "UTC", "enabled": True, "config": config}
        response = api.post(f"/libraries/{library}/jobs", json=body)
        assert response.status_code == 201, response.text
        job_id = UUID(response.json()["id"])
        jobs[job_id] = FiringJob(job_id, library, datetime.fromisoformat(response.json()["createdAt"]))
    return jobs


def disable_jobs(api: httpx.Client, jobs: Iterable[FiringJob]) -> None:
    for job in jobs:
        response = api.patch(f"/libraries/{job.library_id}/jobs/{job.id}", json={"enabled": False})
        assert response.status_code == 200, response.text


@dataclass
class Ledger:
    """The runs and fires of some jobs, as the store has them."""

    claims: dict[UUID, list[tuple[datetime, datetime]]] = field(default_factory=lambda: defaultdict(list))
    requested: dict[UUID, UUID] = field(default_factory=dict)  # run → job
    finished: Counter[UUID] = field(default_factory=Counter)
    attempts: dict[UUID, list[int]] = field(default_factory=lambda: defaultdict(list))
    refreshed: Counter[tuple[UUID, UUID]] = field(default_factory=Counter)  # (run, series) → times
    status: dict[UUID, str] = field(default_factory=dict)  # run → its (last) outcome

    @classmethod
    def of(cls, events: Iterable[Any], jobs: Iterable[UUID]) -> Ledger:
        wanted = set(jobs)
        ledger = cls()
        for event in events:
            if isinstance(event, Series.Refreshed):
                if event.job_id in wanted:
                    ledger.refreshed[(event.run_id, event.originator_id)] += 1
                continue
            if not isinstance(event, LibraryJob.Event) or event.originator_id not in wanted:
                continue
            if isinstance(event, LibraryJob.RunRequested | LibraryJob.FireSkipped) and event.scheduled_for:
                ledger.claims[event.originator_id].append((event.scheduled_for, event.timestamp))
            if isinstance(event, LibraryJob.RunRequested):
                ledger.requested[event.run_id] = event.originator_id
            elif isinstance(event, LibraryJob.RunStarted):
                ledger.attempts[event.run_id].append(event.attempt)
            elif isinstance(event, LibraryJob.RunFinished):
                ledger.finished[event.run_id] += 1
                ledger.status[event.run_id] = event.status
        return ledger

    def unfinished(self) -> set[UUID]:
        return set(self.requested) - set(self.finished)

    def fire_problems(self, jobs: Iterable[FiringJob], until: datetime, period_s: int) -> list[Any]:
        """Fires claimed twice, due but never claimed (by `until`), or claimed before their instant."""
        problems: list[Any] = []
        for job in jobs:
            job_id, created = job.id, job.created
            claimed = self.claims.get(job_id, [])
            instants = [instant for instant, _ in claimed]
            if len(instants) != len(set(instants)):
                problems.append(
                    ("claimed twice", job_id, sorted(i for i, n in Counter(instants).items() if n > 1))
                )
            missing = set(due_instants(created, until, period_s)) - set(instants)
            if missing:
                problems.append(("missing", job_id, sorted(missing)))
            early = [(i, s) for i, s in claimed if s < i]
            if early:
                problems.append(("early", job_id, early))
        return problems

    def run_problems(self) -> list[Any]:
        """Runs not recorded exactly once, or an item refreshed twice by one run."""
        problems: list[Any] = []
        problems += [("never finished", run) for run in self.unfinished()]
        problems += [("finished twice", run, n) for run, n in self.finished.items() if n > 1]
        problems += [("finished, never requested", run) for run in set(self.finished) - set(self.requested)]
        for run, attempts in self.attempts.items():
            if attempts != list(range(1, len(attempts) + 1)):
                problems.append(("attempts", run, attempts))
        problems += [("refreshed twice", key, n) for key, n in self.refreshed.items() if n > 1]
        return problems
