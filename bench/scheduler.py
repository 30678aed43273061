"""The scheduler benchmarks: start-up to the first fire, resident memory and idle CPU of `libjobs serve`
with 100,000 enabled jobs (20,000 with `--quick`), and 1,000 jobs due in the same second.

Every store is built directly, fast: `LibraryJobs` on the store's own eventsourcing settings (`store_env`)
saving one `Library` and then `LibraryJob.create(...)` aggregates 1,000 per `save` (one transaction each),
their definitions from `validate_create` as the service validates a POST (`min_interval_s=0`, so a cron
may fire every second). `libjobs serve` then runs as a process, all roles, on that SQLite data dir, with
`LIBJOBS_MIN_INTERVAL_S=0` and the URL of a `nats-server -js` of the benchmark's own. This process watches
the store read-only through its own `LibraryJobs` on the same file (`StoreReader.read`, every 10 ms): a
fire is claimed when its `RunRequested` is committed, whether or not the HTTP server is up yet.

1. **Start-up to first fire**, twice on one store of N jobs with a daily cron at an hour twelve hours away
   (never due during the run) plus ONE job firing every second (`* * * * * *`): from spawning the process
   to seeing that job's first `RunRequested` in the store. The first start has no persisted read models
   and replays the whole store; the second loads the rows the first one persisted (`views.sqlite3`) and
   replays only what was stored after them. Each start gets its own every-second job (the first one's
   run stays in flight: there is no executor, so its later fires would be `FireSkipped`).
2. **Resident memory**: `VmRSS` of that process once it has started, the every-second job is disabled,
   the relay has published the backlog and the process has gone quiet; measured after each start. The
   row shows the larger; the same process on the store before the jobs were written (one library, no
   job) is measured the same way, for comparison.
3. **Idle CPU**: the process's utime + stime over 20 s (10 s with `--quick`) right after (2), nothing
   due, nothing written, nothing asked of it, as % of one core; after each start (the row shows the
   larger) and with no job.
4. **1,000 jobs due in the same second**: a running `libjobs serve` on a store holding one library; 1,000
   jobs firing at second 0 of every minute are stored in one transaction by this process 10-60 s before
   the next minute starts (the service follows the store and schedules them); after that instant, every
   claim's lateness is its `RunRequested` timestamp (the serve process's clock when it claimed) minus its
   `scheduledFor` (the nominal instant). Each job must be claimed exactly once, for that instant, never
   early.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import Goal, Options, Result, median, percentile, process_cpu_seconds, stage
from bench.servers import API_KEY, CONFIG, PLUGIN, Store, new_store
from projections.sqlview import VIEWS_NAME, SqliteViewStore
from service.adapters.store import StoreReader
from service.application import LibraryJobs
from service.domain.catalog import Library
from service.domain.jobs import (
    ConfigDraft,
    CreateDraft,
    LibraryJob,
    PatchDraft,
    ProviderInfo,
    ValidationPolicy,
    validate_create,
)
from service.ports import CommandContext, LibraryContents
from tests.support.nats import NatsServer
from tests.support.processes import ServeProcess, environment, libjobs_command

STARTUP_TARGET_S = 10.0
RSS_TARGET_MB = 400.0
IDLE_TARGET_PCT = 2.0
DUE_TARGET_S = 2.0
DUE_JOBS = 1_000
BATCH = 1_000  # jobs per `save`: one transaction
EVERY_SECOND = "* * * * * *"
AT_SECOND_ZERO = "0 * * * * *"
POLL_S = 0.01
GIVE_UP_S = 120.0
QUIET_CORES = 0.25  # settled: two consecutive seconds under this (the backlog takes ~1 core)
SETTLE_MAX_S = 120.0
DUE_LEAD_S = 10.0  # the 1,000 jobs are written at least this long before their instant
STARTUP_ROW = "scheduler start-up to first fire ({how})"
RSS_ROW = "scheduler resident memory"
IDLE_ROW = "scheduler idle CPU"
DUE_ROW = "1,000 fires due at once, max lateness"
CTX = CommandContext(actor="bench", request_id=None)


def run(options: Options) -> list[Result]:
    results: list[Result] = []
    with NatsServer(options.work_dir / "nats-scheduler") as nats_server:
        with stage(f"scheduler with {_jobs(options):,} jobs: start-up, memory, idle CPU"):
            results += _startup_memory_idle(options, nats_server.url)
        with stage(DUE_ROW):
            results.append(_due_at_once(options, nats_server.url))
    return results


def _jobs(options: Options) -> int:
    return 20_000 if options.quick else 100_000


def _idle_seconds(options: Options) -> float:
    return 10.0 if options.quick else 20.0


# --- the store, written and read by this process ------------------------------------------------------


def _providers(_: str) -> ProviderInfo:
    return ProviderInfo(enabled=True, capabilities=frozenset({"series", "book"}))


def _no_contents(_: uuid.UUID) -> LibraryContents:
    return LibraryContents((), (), ())


class _Seeder:
    """Writes jobs straight into the store (as `POST …/jobs` would record them) and reads it back."""

    def __init__(self, store: Store) -> None:
        self.policy = ValidationPolicy(min_interval_s=0)
        self.app = LibraryJobs(
            store.eventsourcing_env(),
            providers=_providers,
            library_contents=_no_contents,
            library_known=lambda _: True,
            policy=self.policy,
        )
        self.reader = StoreReader(self.app)
        self.library_id = uuid.uuid4()
        library = Library.register(
            self.library_id, "bench", at=datetime.now(UTC), actor=CTX.actor, request_id=None
        )
        self.app.save(library)

    def close(self) -> None:
        self.app.close()

    def jobs(self, cron: str, count: int) -> list[uuid.UUID]:
        """`count` enabled jobs of this cron (UTC), saved BATCH per transaction; returns their ids."""
        draft = CreateDraft(
            cron_schedule=cron,
            timezone="UTC",
            enabled=True,
            config=ConfigDraft(provider=f"plugin:{PLUGIN}", scope="series_and_books"),
        )
        definition, enabled = validate_create(draft, self.policy, _providers)
        ids: list[uuid.UUID] = []
        while len(ids) < count:
            now = datetime.now(UTC)
            batch = [
                LibraryJob.create(
                    job_id=uuid.uuid4(),
                    library_id=self.library_id,
                    definition=definition,
                    enabled=enabled,
                    at=now,
                    actor=CTX.actor,
                    request_id=None,
                )
                for _ in range(min(BATCH, count - len(ids)))
            ]
            self.app.save(*batch)
            ids += [job.id for job in batch]
        return ids

    def disable(self, job_id: uuid.UUID) -> None:
        """As `PATCH {"enabled": false}` does (retrying when the scheduler claims a fire meanwhile)."""
        self.app.update_job(self.library_id, job_id, PatchDraft(enabled=False), CTX)


@dataclass(frozen=True)
class _Seen:
    """A stored event and when this process first read it (wall clock, seconds)."""

    position: int
    event: Any
    seen: float


class _Watcher:
    """Reads the events stored after `after`, as they are committed."""

    def __init__(self, reader: StoreReader, after: int) -> None:
        self.reader = reader
        self.position = after

    def poll(self) -> list[_Seen]:
        batch = self.reader.read(self.position, 10_000)
        seen = time.time()
        if batch:
            self.position = batch[-1][0]
        return [_Seen(position, event, seen) for position, event in batch]


def _claims(seen: list[_Seen]) -> list[_Seen]:
    return [s for s in seen if isinstance(s.event, LibraryJob.RunRequested | LibraryJob.FireSkipped)]


# --- the serve process ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _serve(store: Store, work: Path, nats_url: str) -> Iterator[ServeProcess]:
    """`libjobs serve` (all roles) spawned on `store`, NOT waited for: the caller times its start-up."""
    config = work / "libjobs-scheduler.toml"
    config.write_text(CONFIG)
    values = {"api_key": API_KEY, "config": str(config), "nats_url": nats_url, "min_interval_s": "0"}
    serve = ServeProcess(data_dir=store.data_dir, env=dict(environment(**values)))
    serve.log_path = work / f"serve-scheduler-{serve.port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBJOBS_")} | serve.env
    command = [*libjobs_command(), "serve", "--port", str(serve.port), "--data-dir", str(store.data_dir)]
    with serve.log_path.open("ab") as log:
        serve.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield serve
    finally:
        serve.stop(timeout_s=60)


def _pid(serve: ServeProcess) -> int:
    assert serve.process is not None
    return serve.process.pid


def _check_alive(serve: ServeProcess) -> None:
    if serve.process is not None and serve.process.poll() is not None:
        raise RuntimeError(f"libjobs serve exited with {serve.process.returncode}:\n{serve.output()[-4000:]}")


def _readiness(serve: ServeProcess) -> dict[str, Any] | None:
    """`/readyz`'s checks when it answers 200, else None."""
    try:
        reply = httpx.get(f"{serve.url}/readyz", timeout=1)
    except httpx.TransportError:
        return None
    checks: dict[str, Any] = reply.json()["checks"]
    return checks if reply.status_code == 200 else None


def _memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB (MiB), from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024  # kB
    return values["VmRSS"], values["VmHWM"]


def _settle(serve: ServeProcess) -> float:
    """Waits until the relay has published everything and the process is quiet; returns the seconds."""
    started = time.monotonic()
    pid = _pid(serve)
    while time.monotonic() - started < SETTLE_MAX_S:
        _check_alive(serve)
        checks = _readiness(serve)
        if checks is not None and checks.get("relayLag") == 0 and checks.get("projectionLag") == 0:
            break
        time.sleep(0.2)
    quiet = 0
    while quiet < 2 and time.monotonic() - started < SETTLE_MAX_S:
        before = process_cpu_seconds(pid)
        time.sleep(1.0)
        quiet = quiet + 1 if process_cpu_seconds(pid) - before < QUIET_CORES else 0
    return time.monotonic() - started


def _idle_cpu_pct(pid: int, seconds: float) -> float:
    before, started = process_cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (process_cpu_seconds(pid) - before) / (time.monotonic() - started) * 100


# --- 1-3. start-up, memory, idle CPU ---------------------------------------------------------------


@dataclass(frozen=True)
class _Idle:
    """An idle process: how long it took to settle, its resident memory, its CPU while nothing happens."""

    settle_s: float
    rss_mb: float
    peak_rss_mb: float  # VmHWM: the most it was resident since it started
    cpu_pct: float  # of one core

    @classmethod
    def measure(cls, serve: ServeProcess, seconds: float) -> _Idle:
        settle = _settle(serve)
        rss, peak = _memory_mb(_pid(serve))
        return cls(settle, rss, peak, _idle_cpu_pct(_pid(serve), seconds))


@dataclass(frozen=True)
class _Start:
    how: str  # "full replay" | "persisted views"
    replayed_events: int  # events the read models had to apply from the store at start
    to_first_fire_s: float  # spawn → this process saw the every-second job's `RunRequested`
    to_claim_s: float  # spawn → that event's own timestamp (the serve process's clock when it claimed)
    to_ready_s: float  # spawn → /readyz answered 200
    trigger: str  # of that first fire
    idle: _Idle


def _views_position(data_dir: Path) -> int:
    """The store position of the persisted read models (0: none)."""
    path = data_dir / "views.sqlite3"
    if not path.exists():
        return 0
    views = SqliteViewStore(path, VIEWS_NAME)
    try:
        return views.max_tracking_id(VIEWS_NAME) or 0
    finally:
        views.close()


def _wait_ready(serve: ServeProcess) -> None:
    deadline = time.monotonic() + GIVE_UP_S
    while _readiness(serve) is None:
        _check_alive(serve)
        if time.monotonic() > deadline:
            raise RuntimeError(f"libjobs serve did not become ready:\n{serve.output()[-4000:]}")
        time.sleep(0.05)


def _empty(options: Options, store: Store, nats_url: str) -> _Idle:
    """The same process on the store before the jobs are written (one library): what jobs add to it."""
    with _serve(store, options.work_dir, nats_url) as serve:
        _wait_ready(serve)
        return _Idle.measure(serve, _idle_seconds(options))


def _start(options: Options, store: Store, seeder: _Seeder, nats_url: str, how: str) -> _Start:
    """One start of `libjobs serve` with a new every-second job; returns what it measured."""
    (job_id,) = seeder.jobs(EVERY_SECOND, 1)
    store_position = seeder.reader.max_position()
    replayed = store_position - _views_position(store.data_dir)
    watcher = _Watcher(seeder.reader, store_position)
    first: _Seen | None = None
    ready: float | None = None
    spawned = time.time()
    with _serve(store, options.work_dir, nats_url) as serve:
        while first is None or ready is None:
            _check_alive(serve)
            if time.time() - spawned > GIVE_UP_S:
                raise RuntimeError(f"no fire and ready within {GIVE_UP_S:.0f} s:\n{serve.output()[-4000:]}")
            if first is None:
                first = next((s for s in _claims(watcher.poll()) if s.event.originator_id == job_id), None)
            if ready is None and _readiness(serve) is not None:
                ready = time.time()
            time.sleep(POLL_S)
        if not isinstance(first.event, LibraryJob.RunRequested):
            raise RuntimeError(f"the first claim of the every-second job was {type(first.event).__name__}")
        if "replaying the store" in serve.output():
            raise RuntimeError(f"the persisted read models were not loaded:\n{serve.output()[-4000:]}")
        seeder.disable(job_id)  # nothing is due from now on
        idle = _Idle.measure(serve, _idle_seconds(options))
    return _Start(
        how=how,
        replayed_events=replayed,
        to_first_fire_s=first.seen - spawned,
        to_claim_s=first.event.timestamp.timestamp() - spawned,
        to_ready_s=ready - spawned,
        trigger=first.event.trigger,
        idle=idle,
    )


def _startup_memory_idle(options: Options, nats_url: str) -> list[Result]:
    jobs = _jobs(options)
    size = f"{jobs:,} jobs" + (" (--quick; the issue's number is 100,000)" if options.quick else "")
    with ExitStack() as stack:
        store = stack.enter_context(new_store("sqlite", options.work_dir))
        seeder = _Seeder(store)
        stack.callback(seeder.close)
        empty = _empty(options, store, nats_url)
        daily = f"0 {(datetime.now(UTC).hour + 12) % 24} * * *"  # twelve hours away: never due here
        built = time.perf_counter()
        seeder.jobs(daily, jobs)
        build_s = time.perf_counter() - built
        starts = [_start(options, store, seeder, nats_url, how) for how in ("full replay", "persisted views")]
    common: dict[str, Any] = {
        "jobs": jobs,
        "daily_cron": daily,
        "store_build_s": round(build_s, 1),
        "idle_seconds": _idle_seconds(options),
        "empty_store": asdict(empty),
        "starts": [asdict(s) for s in starts],
    }
    results = [
        Result(
            name=STARTUP_ROW.format(how=s.how),
            unit="s",
            value=s.to_first_fire_s,
            target=STARTUP_TARGET_S,
            goal=Goal.AT_MOST,
            details={**common, "replayed_events": s.replayed_events, "to_ready_s": round(s.to_ready_s, 2)},
            note=(
                f"{size}, {s.replayed_events:,} event{'s' * (s.replayed_events != 1)} replayed; claimed at "
                f"{s.to_claim_s:.2f} s ({s.trigger}), /readyz 200 at {s.to_ready_s:.2f} s"
            ),
        )
        for s in starts
    ]
    replay, views = (s.idle for s in starts)
    results.append(
        Result(
            name=RSS_ROW,
            unit="MB",
            value=max(replay.rss_mb, views.rss_mb),
            target=RSS_TARGET_MB,
            goal=Goal.AT_MOST,
            details=common,
            note=(
                f"{size}: VmRSS after replay {replay.rss_mb:.0f}, after views {views.rss_mb:.0f} MB (peak "
                f"{replay.peak_rss_mb:.0f} / {views.peak_rss_mb:.0f}); no jobs: {empty.rss_mb:.0f} MB"
            ),
        )
    )
    results.append(
        Result(
            name=IDLE_ROW,
            unit="%",
            value=max(replay.cpu_pct, views.cpu_pct),
            target=IDLE_TARGET_PCT,
            goal=Goal.AT_MOST,
            details=common,
            note=(
                f"{size}, % of one core over {_idle_seconds(options):.0f} s: after replay "
                f"{replay.cpu_pct:.1f}, after views {views.cpu_pct:.1f}; no jobs: {empty.cpu_pct:.1f}"
            ),
        )
    )
    return results


# --- 4. 1,000 jobs due in the same second ------------------------------------------------------------


def _next_minute(after: float) -> float:
    return (int(after) // 60 + 1) * 60.0


def _due_at_once(options: Options, nats_url: str) -> Result:
    with ExitStack() as stack:
        store = stack.enter_context(new_store("sqlite", options.work_dir))
        seeder = _Seeder(store)
        stack.callback(seeder.close)
        serve = stack.enter_context(_serve(store, options.work_dir, nats_url))
        _wait_ready(serve)
        _settle(serve)
        if _next_minute(time.time()) - time.time() < DUE_LEAD_S:  # too close: the next minute, then
            time.sleep(_next_minute(time.time()) - time.time() + 0.5)
        instant = _next_minute(time.time())
        watcher = _Watcher(seeder.reader, seeder.reader.max_position())
        written = time.time()
        job_ids = seeder.jobs(AT_SECOND_ZERO, DUE_JOBS)  # one transaction
        lead = instant - time.time()
        nominal = datetime.fromtimestamp(instant, UTC)
        seen: list[_Seen] = []
        while len(_claims(seen)) < DUE_JOBS and time.time() < instant + GIVE_UP_S:
            _check_alive(serve)
            seen += watcher.poll()
            time.sleep(POLL_S)
        time.sleep(1.0)  # a second claim of any of them would be stored by now
        seen += watcher.poll()
    wanted = set(job_ids)
    claims = [s for s in _claims(seen) if s.event.originator_id in wanted]
    _check_claims(claims, wanted, nominal)
    late = [(s.event.timestamp - nominal).total_seconds() for s in claims]
    visible = [s.seen - instant for s in claims]
    p50, p99, worst = median(late), percentile(late, 99), max(late)
    return Result(
        name=DUE_ROW,
        unit="s",
        value=worst,
        target=DUE_TARGET_S,
        goal=Goal.AT_MOST,
        details={
            "jobs": DUE_JOBS,
            "cron": AT_SECOND_ZERO,
            "nominal_instant": nominal.isoformat(),
            "written_before_instant_s": round(instant - written, 2),
            "stored_before_instant_s": round(lead, 2),
            "claim_late_p50_s": round(p50, 4),
            "claim_late_p99_s": round(p99, 4),
            "claim_late_max_s": round(worst, 4),
            "claim_late_min_s": round(min(late), 4),
            "seen_in_store_p50_s": round(median(visible), 3),
            "seen_in_store_max_s": round(max(visible), 3),
            "claims_per_s": round(DUE_JOBS / max(worst - min(late), 1e-6)),
        },
        note=(
            f"all {DUE_JOBS:,} claimed once, none early; claim - nominal p50 {p50:.2f}, p99 {p99:.2f} s; "
            f"all committed and read back {max(visible):.2f} s after the instant"
        ),
    )


def _check_claims(claims: list[_Seen], job_ids: set[uuid.UUID], nominal: datetime) -> None:
    """Every job claimed exactly once, by a `RunRequested` of that very instant, not before it."""
    per_job: dict[uuid.UUID, int] = {}
    for claim in claims:
        per_job[claim.event.originator_id] = per_job.get(claim.event.originator_id, 0) + 1
    problems = []
    if missing := job_ids - per_job.keys():
        problems.append(f"{len(missing)} of {len(job_ids)} jobs were not claimed")
    if twice := [job for job, count in per_job.items() if count > 1]:
        problems.append(f"{len(twice)} jobs were claimed more than once")
    if wrong := [c for c in claims if not isinstance(c.event, LibraryJob.RunRequested)]:
        problems.append(f"{len(wrong)} claims were {type(wrong[0].event).__name__}")
    if other := [c for c in claims if c.event.scheduled_for != nominal]:
        problems.append(f"{len(other)} claims were for another instant, e.g. {other[0].event.scheduled_for}")
    if early := [c for c in claims if c.event.timestamp < nominal]:
        problems.append(f"{len(early)} claims were made before their instant")
    if problems:
        raise RuntimeError("; ".join(problems))
