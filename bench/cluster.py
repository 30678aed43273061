"""The local cluster (deploy/local_cluster) under load: HTTP reads through both api replicas vs one, and
sustained fires with 10,000 jobs spread over the schedulers, exactly once.

One cluster on a fresh PostgreSQL schema: 3 NATS servers (streams with 3 replicas), api x2, scheduler x2,
executor x2, projector x1, HAProxy in front (round-robin), `LIBJOBS_MIN_INTERVAL_S=0`.

1. **HTTP reads, 2 api replicas vs 1.** `wrk` (32 keep-alive connections, `X-API-Key`) sends
   `GET …/jobs/{id}` (a library of 100 jobs that never fire during the run) to the front. The one-replica
   contender is the same front with `api-2` put in maintenance (HAProxy's admin socket), so the path is the
   same; the two contenders alternate round by round. The CPU of each api replica, of HAProxy and of wrk is
   measured around every round: the machine has 2 cores, and what bounds the ratio is in the notes.
2. **Sustained fires.** 10,000 enabled jobs (2,000 with `--quick`) are written straight into the store
   (as `POST …/jobs` records them, 1,000 per transaction), job i firing at seconds `i % 10, i % 10 + 10,
   …` of every minute: 1,000 fires due every second, spread evenly. The running cluster follows the store
   and its two schedulers claim them (`RunRequested`, or `FireSkipped` while the job's previous run is
   still queued). After a warm-up, the claims stored during a window (20 s, 10 s with `--quick`) are
   counted (from the store's positions at both ends) and divided by its length. Then the jobs are
   disabled, and every claim in the store is checked: no (job, instant) claimed twice. The JSON also has
   how late the claims of the window were (claim time minus the fire's instant) and how many due fires
   were claimed.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from bench.common import (
    Goal,
    Options,
    Result,
    interleave,
    median,
    percentile,
    process_cpu_seconds,
    skipped,
    stage,
)
from bench.load import Load, LoadResult, run_load
from deploy.local_cluster import ClusterError, ClusterSpec, LocalCluster
from deploy.local_cluster.cluster import haproxy_binary
from service.adapters.store import PostgresTarget, StoreReader, store_env
from service.application import LibraryJobs
from service.domain.catalog import Library
from service.domain.jobs import (
    ConfigDraft,
    CreateDraft,
    LibraryJob,
    ProviderInfo,
    ValidationPolicy,
    validate_create,
)
from service.ports import CommandContext, LibraryContents
from tests.support.postgres import fresh_schema, require_postgres

READS_ROW = "cluster GET /jobs/{id}: 2 api replicas vs 1"
FIRES_ROW = "cluster sustained fires, 10,000 jobs"
READS_TARGET = 1.6
CONNECTIONS = 32
READ_JOBS = 100
PERIOD_S = 10
BATCH = 1_000
CTX = CommandContext(actor="bench", request_id=None)
CLAIM_TOPICS = ("libjobs:LibraryJob.RunRequested", "libjobs:LibraryJob.FireSkipped")


def run(options: Options) -> list[Result]:
    reason = _missing()
    if reason is not None:
        return [
            skipped(READS_ROW, Goal.RATIO_AT_LEAST, READS_TARGET, "req/s", reason),
            skipped(FIRES_ROW, Goal.RATIO_AT_LEAST, 1.0, "fires/s", reason),
        ]
    with fresh_schema() as database_url, _cluster(options, database_url) as cluster:
        with stage(READS_ROW):
            reads = _reads(options, cluster)
        with stage(f"{FIRES_ROW} ({_jobs(options):,} with --quick)" if options.quick else FIRES_ROW):
            fires = _fires(options, cluster)
    return [reads, fires]


def _missing() -> str | None:
    try:
        haproxy_binary()
    except ClusterError as e:
        return str(e)
    try:
        require_postgres()
    except BaseException as e:  # pytest's skip/fail outcomes are BaseExceptions
        return f"PostgreSQL: {e}"
    return None


def _jobs(options: Options) -> int:
    return 2_000 if options.quick else 10_000


@contextlib.contextmanager
def _cluster(options: Options, database_url: str) -> Iterator[LocalCluster]:
    spec = ClusterSpec(
        work_dir=options.work_dir / "cluster",
        database_url=database_url,
        env={"LIBJOBS_MIN_INTERVAL_S": "0", "LIBJOBS_LOG_JSON": "true"},
        plugin_data={"series": {}},
    )
    with stage("setup: the local cluster"), contextlib.ExitStack() as stack:
        cluster = stack.enter_context(LocalCluster(spec))
        yield cluster


# --- 1. HTTP reads through the front: two replicas vs one ---------------------------------------------


def _reads(options: Options, cluster: LocalCluster) -> Result:
    headers = {"X-API-Key": cluster.api_key}
    with httpx.Client(base_url=cluster.front_url + "/api/v1", headers=headers, timeout=10) as api:
        library = str(uuid.uuid4())
        assert api.put(f"/libraries/{library}", json={"name": "bench"}).status_code == 201
        body = {
            "cronSchedule": "0 0 29 2 *",
            "config": {"type": "metadata_refresh", "provider": "plugin:fixture"},
        }
        ids = [api.post(f"/libraries/{library}/jobs", json=body).json()["id"] for _ in range(READ_JOBS)]
        path = f"/api/v1/libraries/{library}/jobs/{ids[0]}"
        for url in cluster.api_urls:  # both replicas serve it before anything is measured
            deadline = time.monotonic() + 10
            while httpx.get(url + path, headers=headers, timeout=5).status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} does not serve {path}")
                time.sleep(0.05)
    load = Load(url=cluster.front_url + path, headers=headers, connections=CONNECTIONS)
    pids = {p.name: p.pid for p in [*cluster.api, cluster.front] if p.pid is not None}
    logs: dict[str, list[dict[str, Any]]] = {"two": [], "one": []}

    def sample(replicas: str) -> float:
        cluster.set_front_server("api-2", "ready" if replicas == "two" else "maint")
        cluster.wait_front(up=["api-1", "api-2"] if replicas == "two" else ["api-1"])
        before = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
        result = run_load(load, options.seconds)
        cpu = {name: (process_cpu_seconds(pid) - before[name]) / result.seconds for name, pid in pids.items()}
        logs[replicas].append(_round(result, cpu))
        return result.rps

    sample("two")  # warm-up of both replicas
    sample("one")
    samples = interleave(options.rounds, {"two": partial(sample, "two"), "one": partial(sample, "one")})
    cluster.set_front_server("api-2", "ready")
    two, one = _summary(logs["two"]), _summary(logs["one"])
    return Result(
        name=READS_ROW,
        unit="req/s",
        value=median(samples["two"]),
        target=READS_TARGET,
        goal=Goal.RATIO_AT_LEAST,
        baseline=median(samples["one"]),
        baseline_name="the same front with api-2 in maintenance (one api replica)",
        details={"connections": CONNECTIONS, "two": two, "one": one, "samples": samples},
        note=(
            f"{CONNECTIONS} conns; CPU with 2: api {two['cpu']['api-1']:.2f}+{two['cpu']['api-2']:.2f}, "
            f"haproxy {two['cpu']['front']:.2f}, wrk {two['client_cpu']:.2f}; with 1: api "
            f"{one['cpu']['api-1']:.2f}, haproxy {one['cpu']['front']:.2f}, wrk {one['client_cpu']:.2f} cores"
        ),
    )


def _round(result: LoadResult, cpu: dict[str, float]) -> dict[str, Any]:
    return {
        "rps": round(result.rps, 1),
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "client_cpu": round(result.client_cpu, 2),
        "cpu": {name: round(value, 2) for name, value in cpu.items()},
    }


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    names = rounds[0]["cpu"]
    return {
        "rounds": rounds,
        "p99_ms": round(median([r["p99_ms"] for r in rounds]), 2),
        "client_cpu": round(median([r["client_cpu"] for r in rounds]), 2),
        "cpu": {name: round(median([r["cpu"][name] for r in rounds]), 2) for name in names},
    }


# --- 2. sustained fires ---------------------------------------------------------------------------------


def _providers(_: str) -> ProviderInfo:
    return ProviderInfo(enabled=True, capabilities=frozenset({"series", "book"}))


def _store(database_url: str, work: Path) -> LibraryJobs:
    env = store_env(data_dir=work, database_url=database_url, pool_size=2, lock_timeout_s=5)
    return LibraryJobs(
        env,
        providers=_providers,
        library_contents=lambda _: LibraryContents((), (), ()),
        library_known=lambda _: True,
        policy=ValidationPolicy(min_interval_s=0),
    )


def _seed(app: LibraryJobs, count: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """`count` enabled jobs, job i firing at seconds i % PERIOD_S (+ k·PERIOD_S) of every minute."""
    library_id = uuid.uuid4()
    app.save(Library.register(library_id, "fires", at=datetime.now(UTC), actor=CTX.actor, request_id=None))
    definitions = []
    for offset in range(PERIOD_S):
        seconds = ",".join(str(s) for s in range(offset, 60, PERIOD_S))
        draft = CreateDraft(
            cron_schedule=f"{seconds} * * * * *",
            timezone="UTC",
            enabled=True,
            config=ConfigDraft(provider="plugin:fixture", scope="series_only"),
        )
        definitions.append(validate_create(draft, ValidationPolicy(min_interval_s=0), _providers)[0])
    ids: list[uuid.UUID] = []
    while len(ids) < count:
        now = datetime.now(UTC)
        batch = [
            LibraryJob.create(
                job_id=uuid.uuid4(),
                library_id=library_id,
                definition=definitions[(len(ids) + i) % PERIOD_S],
                enabled=True,
                at=now,
                actor=CTX.actor,
                request_id=None,
            )
            for i in range(min(BATCH, count - len(ids)))
        ]
        app.save(*batch)
        ids += [job.id for job in batch]
    return library_id, ids


class _Claims:
    """Counts claims between two store positions with one SQL query (cheap while the cluster runs)."""

    def __init__(self, database_url: str) -> None:
        target = PostgresTarget.from_url(database_url)
        self.conn = psycopg.connect(target.conninfo(), autocommit=True)
        self.table = sql.Identifier(target.schema, "libjobs_events")

    def position(self) -> int:
        row = self.conn.execute(sql.SQL("SELECT max(notification_id) FROM {}").format(self.table)).fetchone()
        return int(row[0] or 0) if row else 0

    def between(self, after: int, upto: int) -> int:
        query = sql.SQL(
            "SELECT count(*) FROM {} WHERE notification_id > %s AND notification_id <= %s AND topic = ANY(%s)"
        )
        row = self.conn.execute(query.format(self.table), (after, upto, list(CLAIM_TOPICS))).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.conn.close()


def _fires(options: Options, cluster: LocalCluster) -> Result:
    count = _jobs(options)
    window_s = 10.0 if options.quick else 20.0
    warmup_s = 10.0
    demand = count / PERIOD_S
    app = _store(cluster.database_url, options.work_dir / "bench-store")
    claims = _Claims(cluster.database_url)
    try:
        seeded_at = datetime.now(UTC)
        _, ids = _seed(app, count)
        seeded_s = (datetime.now(UTC) - seeded_at).total_seconds()
        time.sleep(warmup_s)
        cpu_pids = {p.name: p.pid for p in cluster.processes() if p.pid is not None}
        cpu_before = {name: process_cpu_seconds(pid) for name, pid in cpu_pids.items()}
        start_position, started = claims.position(), time.monotonic()
        start_at = datetime.now(UTC)
        time.sleep(window_s)
        end_position, ended = claims.position(), time.monotonic()
        end_at = datetime.now(UTC)
        cpu = {
            name: round((process_cpu_seconds(pid) - cpu_before[name]) / (ended - started), 2)
            for name, pid in cpu_pids.items()
        }
        claimed = claims.between(start_position, end_position)
        rate = claimed / (ended - started)
        problems = [f"{p.name} died" for p in cluster.processes() if not p.running]
        for scheduler in cluster.role("scheduler"):  # no more claims while the store is read back
            scheduler.stop()
        check = _check(app, set(ids), start_at, end_at)
    finally:
        claims.close()
        app.close()
    exactly_once = check["claimed_twice"] == 0 and not problems
    return Result(
        name=FIRES_ROW if not options.quick else f"cluster sustained fires, {count:,} jobs",
        unit="fires/s",
        value=rate if exactly_once else None,
        target=1.0,
        goal=Goal.RATIO_AT_LEAST,
        baseline=demand,
        baseline_name=f"fires due per second ({count:,} jobs every {PERIOD_S} s, spread evenly)",
        details={
            "jobs": count,
            "seeded_s": round(seeded_s, 1),
            "window_s": window_s,
            "claims_in_window": claimed,
            "cpu_cores": cpu,
            "cluster_problems": problems,
            **check,
        },
        note=(
            f"{check['claimed_twice']} claimed twice; late p50 {check['late_p50_s']:.2f} s, "
            f"p99 {check['late_p99_s']:.2f} s; {check['requested']:,} runs, {check['skipped']:,} skipped; "
            f"schedulers {cpu.get('scheduler-1', 0):.2f}+{cpu.get('scheduler-2', 0):.2f} cores"
        ),
        error=None
        if exactly_once
        else f"not exactly once: {check['claimed_twice']} claimed twice; {problems}",
    )


def _check(app: LibraryJobs, jobs: set[uuid.UUID], start: datetime, end: datetime) -> dict[str, Any]:
    """Every claim of these jobs in the store: duplicates, and lateness and coverage in [start, end]."""
    seen: Counter[tuple[uuid.UUID, datetime]] = Counter()
    late: list[float] = []
    kinds: Counter[str] = Counter()
    for _, event in StoreReader(app).read(0, 100_000_000):
        if (
            not isinstance(event, LibraryJob.RunRequested | LibraryJob.FireSkipped)
            or event.originator_id not in jobs
        ):
            continue
        if event.scheduled_for is None:
            continue
        seen[(event.originator_id, event.scheduled_for)] += 1
        kinds[type(event).__name__] += 1
        if start <= event.timestamp <= end:
            late.append((event.timestamp - event.scheduled_for).total_seconds())
    due = _due_in(start + timedelta(seconds=2), end - timedelta(seconds=5), len(jobs))
    claimed_in = sum(1 for (_, at) in seen if start + timedelta(seconds=2) < at <= end - timedelta(seconds=5))
    return {
        "claims": sum(seen.values()),
        "claimed_twice": sum(1 for n in seen.values() if n > 1),
        "requested": kinds["RunRequested"],
        "skipped": kinds["FireSkipped"],
        "late_p50_s": round(percentile(late, 50), 3) if late else 0.0,
        "late_p99_s": round(percentile(late, 99), 3) if late else 0.0,
        "late_max_s": round(max(late), 3) if late else 0.0,
        "due_fires_claimed": f"{claimed_in} of {due}",
    }


def _due_in(start: datetime, end: datetime, jobs: int) -> int:
    """Fires due in (start, end]: every whole second, jobs / PERIOD_S of them."""
    seconds = int(end.timestamp()) - int(start.timestamp())
    return max(0, seconds) * jobs // PERIOD_S
