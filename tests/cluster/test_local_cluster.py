"""Issue 7 on the local cluster (deploy/local_cluster): 3 NATS servers, api x2, scheduler x2, executor x2,
projector x1 on one PostgreSQL schema, HAProxy in front of the api replicas.

- a job created through one api replica is read through the other, and through the front;
- jobs firing every 2 s fire exactly once and every run is executed and recorded once;
- the same while one NATS server, one scheduler and one executor are killed (SIGKILL), then restarted:
  the cluster heals, nothing is lost or doubled;
- the api replicas are restarted one by one (SIGTERM, graceful drain) under a client loop of GETs and
  POSTs through the front: no request fails, and every POST created exactly one job.

The exactly-once checks read the store (every event, with the application's own mapper)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import nats
import pytest

from deploy.local_cluster import LocalCluster
from tests.cluster.helpers import (
    SERIES_PER_JOB,
    Ledger,
    create_firing_jobs,
    disable_jobs,
    stored_events,
    wait_until,
)
from tests.e2e.helpers import API, client, job_body, put_library

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]

PERIOD_S = 2
CRON = f"*/{PERIOD_S} * * * * *"
STREAMS = ("LIBJOBS_EVENTS", "LIBJOBS_RUNS")


def api_client(cluster: LocalCluster, base: str) -> httpx.Client:
    return client(base + API, cluster.api_key)


def front_served(cluster: LocalCluster) -> dict[str, int]:
    """Requests the front sent to each api replica so far (HAProxy's `stot`)."""
    lines = cluster.front_command("show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return {
        r["svname"]: int(r["stot"]) for r in rows if r["pxname"] == "api" and r["svname"].startswith("api-")
    }


async def _streams(urls: list[str]) -> dict[str, Any]:
    nc = await nats.connect(urls, connect_timeout=2, max_reconnect_attempts=2)
    try:
        js = nc.jetstream()
        found = {}
        for name in STREAMS:
            info = await js.stream_info(name)
            assert info.cluster is not None
            found[name] = {
                "replicas": info.config.num_replicas,
                "leader": info.cluster.leader,
                "peers": sorted(
                    (r.name, bool(r.current), bool(r.offline)) for r in info.cluster.replicas or []
                ),
            }
        return found
    finally:
        await nc.close()


def streams(cluster: LocalCluster) -> dict[str, Any]:
    return asyncio.run(_streams(cluster.nats_urls))


def streams_healthy(cluster: LocalCluster) -> dict[str, Any] | None:
    """The streams when each has 3 replicas, a leader and two current followers; else None."""
    try:
        found = streams(cluster)
    except Exception:
        return None
    for info in found.values():
        if info["replicas"] != 3 or not info["leader"] or len(info["peers"]) != 2:
            return None
        if not all(current and not offline for _, current, offline in info["peers"]):
            return None
    return found


def just_started_runs(log: Path, within_s: float = 0.15) -> list[UUID]:
    """Runs an executor's log says it started less than `within_s` ago and has not ended."""
    started: dict[UUID, datetime] = {}
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        words = entry.get("msg", "").split()
        if entry.get("logger") == "libjobs.executor" and len(words) > 5 and words[0] == "run":
            if words[5] == "started":
                started[UUID(words[1])] = datetime.fromisoformat(entry["ts"])
            elif words[5] == "ended":
                started.pop(UUID(words[1]), None)
    now = datetime.now(UTC)
    return [run for run, at in started.items() if (now - at).total_seconds() < within_s]


def test_a_job_written_through_one_api_replica_is_read_through_the_other(cluster: LocalCluster) -> None:
    cluster.wait_healthy()
    first, second = cluster.api_urls
    with (
        api_client(cluster, first) as one,
        api_client(cluster, second) as other,
        api_client(cluster, cluster.front_url) as front,
    ):
        library = put_library(one)
        created = [one.post(f"/libraries/{library}/jobs", json=job_body(name=f"job {i}")) for i in range(5)]
        assert [r.status_code for r in created] == [201] * 5
        patched = one.patch(f"/libraries/{library}/jobs/{created[0].json()['id']}", json={"name": "renamed"})
        assert patched.status_code == 200, patched.text

        def other_has_it() -> list[Any] | None:
            listed = other.get(f"/libraries/{library}/jobs")
            jobs = listed.json()["jobs"] if listed.status_code == 200 else []
            return jobs if len(jobs) == 5 and jobs[0]["name"] == "renamed" else None

        jobs = wait_until(other_has_it, 5, "the other replica to serve the writes", interval_s=0.01)
        assert jobs == one.get(f"/libraries/{library}/jobs").json()["jobs"]
        job = other.get(f"/libraries/{library}/jobs/{created[0].json()['id']}")
        assert job.headers["etag"] == patched.headers["etag"]

        before = front_served(cluster)
        for _ in range(10):
            assert front.get(f"/libraries/{library}/jobs").json()["jobs"] == jobs
        after = front_served(cluster)
    assert {name: after[name] - before.get(name, 0) for name in after} == {"api-1": 5, "api-2": 5}


def _fire_and_check(cluster: LocalCluster, jobs_count: int, trouble: Any = None) -> Ledger:
    """Jobs firing every PERIOD_S; `trouble(cluster)` runs while they fire; then the jobs are disabled,
    every run is waited for, and the store is checked: each due fire claimed once, each run recorded once."""
    check_dir = cluster.work_dir / "check"
    with api_client(cluster, cluster.front_url) as api:
        jobs = create_firing_jobs(api, jobs_count, CRON)
        time.sleep(3 * PERIOD_S)
        if trouble is not None:
            trouble(cluster)
        time.sleep(2 * PERIOD_S)
        until = datetime.now(UTC) - timedelta(seconds=1.5)  # fires due by then were claimed by someone
        disable_jobs(api, jobs.values())

    def settled() -> Ledger | None:
        ledger = Ledger.of(stored_events(cluster.database_url, check_dir), jobs)
        return ledger if ledger.requested and not ledger.unfinished() else None

    ledger = wait_until(settled, 60, "every run to finish", interval_s=1)
    time.sleep(3)  # a run recorded twice would be by now (the ack wait is 2 s)
    ledger = Ledger.of(stored_events(cluster.database_url, check_dir), jobs)
    assert ledger.fire_problems(jobs.values(), until, PERIOD_S) == []
    assert ledger.run_problems() == []
    # a run succeeds, or is cancelled when its job is disabled at the end (SPEC §3.4)
    assert set(ledger.status.values()) <= {"success", "cancelled"}, Counter(ledger.status.values())
    assert Counter(ledger.status.values())["success"] >= len(ledger.requested) - len(jobs)
    # every successful run refreshed every series of its library (once: see run_problems)
    refreshed = Counter(run for run, _ in ledger.refreshed)
    assert {run: refreshed[run] for run, s in ledger.status.items() if s == "success"} == {
        run: SERIES_PER_JOB for run, s in ledger.status.items() if s == "success"
    }
    return ledger


def test_jobs_fire_exactly_once_and_each_run_executes_once(cluster: LocalCluster) -> None:
    cluster.wait_healthy()
    ledger = _fire_and_check(cluster, jobs_count=10)
    assert len(ledger.requested) >= 10 * 2  # they really ran, several times each
    assert all(attempts == [1] for attempts in ledger.attempts.values())  # nothing crashed: one attempt each


def test_killing_a_nats_server_a_scheduler_and_an_executor_loses_and_doubles_nothing(
    cluster: LocalCluster,
) -> None:
    cluster.wait_healthy()
    assert streams_healthy(cluster) is not None
    killed: list[str] = []

    interrupted: list[UUID] = []

    def trouble(cluster: LocalCluster) -> None:
        # the NATS server leading the run queue, one scheduler, and one executor in the middle of a run
        leader = streams(cluster)["LIBJOBS_RUNS"]["leader"]
        node = f"nats-{leader.rsplit('-', 1)[1]}"
        for name in (node, "scheduler-1"):
            cluster.process(name).kill()
            killed.append(name)
        executor = cluster.process("executor-1")
        interrupted.extend(
            wait_until(lambda: just_started_runs(executor.log_path), 20, "a run on executor-1", 0.01)
        )
        executor.kill()
        killed.append(executor.name)
        time.sleep(2 * PERIOD_S)  # jobs go on firing with the rest of the cluster
        for name in killed:
            cluster.process(name).start()
        cluster.wait_healthy(60)

    ledger = _fire_and_check(cluster, jobs_count=10, trouble=trouble)
    assert len(killed) == 3
    # the cluster healed: every process ready, the front routes to both api replicas, every stream has its
    # three replicas current again
    assert cluster.healthy() == []
    wait_until(lambda: streams_healthy(cluster), 30, "the streams to have 3 current replicas again")
    # the executor was killed mid-run: its run was delivered again and resumed (attempt 2), recorded once
    assert [ledger.attempts[run] for run in interrupted] == [[1, 2]] * len(interrupted)
    assert len(ledger.requested) >= 10 * 3


def test_rolling_the_api_replicas_fails_no_request(cluster: LocalCluster) -> None:
    cluster.wait_healthy()
    with api_client(cluster, cluster.front_url) as setup:
        library = put_library(setup)  # the POSTs' jobs
        read_library = put_library(setup)  # the GETs', a few jobs
        job_ids = [
            setup.post(f"/libraries/{read_library}/jobs", json=job_body()).json()["id"] for _ in range(3)
        ]
    reads = [f"/libraries/{read_library}/jobs", f"/libraries/{read_library}/jobs/{job_ids[0]}"]
    failures: list[str] = []
    created: list[str] = []
    counts = Counter[str]()
    stop = threading.Event()

    def client_loop(n: int) -> None:
        with api_client(cluster, cluster.front_url) as api:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    if i % 4 == 0:
                        key = str(uuid.uuid4())
                        r = api.post(
                            f"/libraries/{library}/jobs",
                            json=job_body(name=f"c{n}-{i}"),
                            headers={"Idempotency-Key": key},
                        )
                        if r.status_code == 201:
                            created.append(r.json()["id"])
                    else:
                        r = api.get(reads[i % 2])
                    counts[str(r.status_code)] += 1
                    if r.status_code not in (200, 201):
                        failures.append(
                            f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:200]}"
                        )
                except httpx.HTTPError as e:
                    failures.append(f"{type(e).__name__}: {e}")
                    counts["error"] += 1

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    codes: dict[str, int | None] = {}
    try:
        time.sleep(1)
        for replica in cluster.api:
            served_before = front_served(cluster)
            codes[replica.name] = replica.stop(timeout_s=40)  # SIGTERM: drain and exit
            replica.start()
            replica.wait_ready(60)
            cluster.wait_front(up=[p.name for p in cluster.api])
            time.sleep(1)  # the restarted replica serves through the front again
            served = front_served(cluster)
            assert served[replica.name] > served_before.get(replica.name, 0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert failures == []
    assert codes == {"api-1": 0, "api-2": 0}  # a graceful stop exits 0
    assert sum(counts.values()) > 200, counts
    with api_client(cluster, cluster.front_url) as api:
        listed = api.get(f"/libraries/{library}/jobs").json()["jobs"]
    assert sorted(job["id"] for job in listed) == sorted(created)  # every POST created one job, once


def test_the_cluster_runs_each_role_as_its_own_process(cluster: LocalCluster) -> None:
    names = sorted(p.name for p in cluster.processes())
    assert names == sorted(
        ["front", "nats-1", "nats-2", "nats-3", "api-1", "api-2", "scheduler-1", "scheduler-2",
         "executor-1", "executor-2", "projector-1"]
    )  # fmt: skip
    assert len({p.pid for p in cluster.processes()}) == 11
    assert cluster.healthy() == []
    for p in cluster.libjobs:
        assert "--roles" in p.command
        assert p.command[p.command.index("--roles") + 1] == p.name.rsplit("-", 1)[0]
    nodes = streams_healthy(cluster)
    assert nodes is not None
    assert {info["replicas"] for info in nodes.values()} == {3}
    assert Path(cluster.config_path).read_text().count("metadata:write:*") == 1
