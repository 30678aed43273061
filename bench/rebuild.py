"""Rebuilding the read models from the store (`libjobs projections rebuild`) against merely reading it.

A store of 1,000,000 events (100,000 with `--quick`) is written directly and fast: `LibraryJobs` on the
store's own eventsourcing settings (`Store.eventsourcing_env`, as `libjobs serve` has them) saving one
`Library` and then `LibraryJob` aggregates, 1,000 per `save` (one transaction each), in the order a store
gets them: 20,000 jobs (2,000 quick) are created (`Created`) and renamed (`Updated`), then, hour after
hour, 12 times, every job fires and runs: `RunRequested` (a scheduled fire), `RunStarted`,
`RunProgressed`, `RunFinished`. 50 events a job; the runs model keeps all 240,000 runs (24,000 quick).

Then, in one process and one run, the two contenders alternate (`interleave`, the order rotating):

- **read**: every event read and decoded from the store, as the service reads it (`StoreReader.read`,
  batches of `projections.rebuild.BATCH`), and dropped, with the cyclic garbage collector off as a
  rebuild's replay has it (`projections.rebuild`: the collector would walk the growing models again and
  again; on a mere read it walks each batch's events a few times, about 40 % of the reading time). The
  baseline. The same with the collector on is measured in the same rounds, for the record.
- **rebuild**: exactly what `libjobs projections rebuild` does after opening the stores
  (`projections.rebuild.rebuild` on the view store `service.bootstrap.view_store` opens): take the rebuild
  lock, load the live rows, replay the store (the same reads and decoding, plus applying every event to
  all three read models: jobs, runs and catalog, each changed DTO encoded with msgspec) up to their
  position and compare them byte for byte, write every row as a new generation (chunks of 10,000 per
  transaction: SQLite executemany, PostgreSQL COPY), catch up and swap, drop the old generation.

A first, unmeasured rebuild makes rows live, so that every measured rebuild also checks them (260,001
rows at 1M events), as a rebuild of a deployment does. Rates are events per second of wall time; the row
is the median rebuild rate against the median read rate, target ≥ 40 %.
"""

from __future__ import annotations

import gc
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from bench.common import Goal, Options, Result, interleave, median, stage
from bench.servers import PLUGIN, Store, for_each_store, new_store
from projections.rebuild import BATCH, RebuildReport, rebuild
from projections.sqlview import VIEWS_NAME
from service.adapters.store import StoreReader
from service.application import LibraryJobs
from service.bootstrap import view_store
from service.domain.catalog import Library
from service.domain.jobs import (
    ConfigDraft,
    CreateDraft,
    JobDefinition,
    LibraryJob,
    ProviderInfo,
    ValidationPolicy,
    validate_create,
)
from service.ports import LibraryContents
from service.settings import Settings

TARGET = 0.40
NAME = "rebuild read models vs read+decode ({kind})"
RUNS_PER_JOB = 12
EVENTS_PER_JOB = 2 + 4 * RUNS_PER_JOB
JOBS_PER_SAVE = 1_000
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def run(options: Options) -> list[Result]:
    return for_each_store(NAME, Goal.RATIO_AT_LEAST, TARGET, "events/s", partial(_measure, options=options))


def _events(options: Options) -> int:
    return 100_000 if options.quick else 1_000_000


def _rounds(options: Options) -> int:
    return 3  # a round of the full size takes minutes


def _providers(_: str) -> ProviderInfo:
    return ProviderInfo(enabled=True, capabilities=frozenset({"series", "book"}))


def _app(store: Store) -> LibraryJobs:
    return LibraryJobs(
        store.eventsourcing_env(),
        providers=_providers,
        library_contents=lambda _: LibraryContents((), (), ()),
        library_known=lambda _: True,
        policy=ValidationPolicy(min_interval_s=0),
    )


def seed(app: LibraryJobs, events: int) -> int:
    """Writes about `events` events (see the module's docstring) in the order a store gets them: every
    job created and renamed, then hour after hour each job's run; returns how many."""
    library_id = uuid.uuid4()
    app.save(Library.register(library_id, "bench", at=T0, actor="bench", request_id=None))
    draft = CreateDraft(
        cron_schedule="0 * * * *",
        timezone="UTC",
        enabled=True,
        config=ConfigDraft(provider=f"plugin:{PLUGIN}", scope="series_and_books"),
    )
    definition, _ = validate_create(draft, ValidationPolicy(min_interval_s=0), _providers)
    jobs = []
    for i in range((events - 1) // EVENTS_PER_JOB):
        job = LibraryJob.create(job_id=uuid.uuid4(), library_id=library_id, definition=definition,
                                enabled=True, at=T0, actor="key:bench", request_id=f"create-{i}")  # fmt: skip
        renamed = JobDefinition(f"job {i}", definition.cron_schedule, definition.timezone, definition.config)
        job.change(renamed, True, at=T0 + timedelta(minutes=1), actor="key:bench", request_id=f"rename-{i}")
        jobs.append(job)
    _save_all(app, jobs)
    counts = {"planned": 10, "done": 10, "succeeded": 9, "failed": 1, "skipped": 0}
    for hour in range(1, RUNS_PER_JOB + 1):
        fire = T0 + timedelta(hours=hour)
        started, finished = fire + timedelta(seconds=1), fire + timedelta(seconds=6)
        for job in jobs:
            run_id = job.fire(fire, "schedule", at=fire, actor="scheduler", request_id=None)
            assert run_id is not None
            job.start_run(run_id, at=started, actor="executor", request_id=None)
            job.record_progress(run_id, counts, {"no_match": 1}, 20, at=fire + timedelta(seconds=5),
                                actor="executor", request_id=None)  # fmt: skip
            job.finish_run(run_id, "partial", message="1 item failed", started_at=started,
                           finished_at=finished, counts=counts, at=finished, actor="executor",
                           request_id=None)  # fmt: skip
        _save_all(app, jobs)
    return 1 + len(jobs) * EVENTS_PER_JOB


def _save_all(app: LibraryJobs, jobs: list[LibraryJob]) -> None:
    for start in range(0, len(jobs), JOBS_PER_SAVE):
        app.save(*jobs[start : start + JOBS_PER_SAVE])


def _told(name: str, measure: Callable[[], float]) -> Callable[[], float]:
    """`measure`, saying each rate on stderr as it comes (a round of the full size takes minutes)."""

    def told() -> float:
        rate = measure()
        print(f"   {name}: {rate:,.0f} events/s", file=sys.stderr, flush=True)
        return rate

    return told


def _read_all(reader: StoreReader) -> int:
    """Reads and decodes every stored event, as a rebuild reads them; returns how many."""
    position, count = 0, 0
    while True:
        events = reader.read(position, BATCH)
        if not events:
            return count
        count += len(events)
        position = events[-1][0]


def _measure(kind: str, title: str, *, options: Options) -> Result:
    with new_store(kind, options.work_dir) as store:
        app = _app(store)
        try:
            with stage(f"{title}: writing {_events(options):,} events"):
                events = seed(app, _events(options))
            reader = StoreReader(app)
            settings = Settings(data_dir=store.data_dir, database_url=store.database_url)
            views = view_store(settings, VIEWS_NAME)
            try:
                return _compare(title, options, reader, views, events)
            finally:
                views.close()
        finally:
            app.close()


def _compare(title: str, options: Options, reader: StoreReader, views: Any, events: int) -> Result:
    reports: list[RebuildReport] = []

    def rebuild_once() -> float:
        report = rebuild(views, reader.read, reader.max_position)
        assert report.swapped, report
        assert report.consistent, report
        assert report.events == events, (report.events, events)
        reports.append(report)
        return events / report.seconds

    def read_once(collect: bool) -> float:
        if not collect:
            gc.disable()  # as a rebuild's replay runs
        try:
            started = time.perf_counter()
            assert _read_all(reader) == events
            return events / (time.perf_counter() - started)
        finally:
            gc.enable()

    with stage(f"{title}: warm-up rebuild (makes rows live)"):
        rebuild_once()
    with stage(f"{title}: {_rounds(options)} rounds of read and rebuild"):
        contenders: dict[str, Callable[[], float]] = {
            "read": partial(read_once, False),
            "read, cyclic gc on": partial(read_once, True),
            "rebuild": rebuild_once,
        }
        samples = interleave(_rounds(options), {name: _told(name, f) for name, f in contenders.items()})
    measured = reports[1:]
    rebuild_rate, read_rate = median(samples["rebuild"]), median(samples["read"])
    last = measured[-1]
    return Result(
        name=title,
        unit="events/s",
        value=rebuild_rate,
        target=TARGET,
        goal=Goal.RATIO_AT_LEAST,
        baseline=read_rate,
        baseline_name="every event read and decoded (StoreReader.read, batches of 10,000, cyclic gc off as in"
        " the rebuild's replay), dropped",
        details={
            "events": events,
            "rows": last.rows,
            "read_rates": samples["read"],
            "read_rates_cyclic_gc_on": samples["read, cyclic gc on"],
            "rebuild_rates": samples["rebuild"],
            "rebuild_seconds": [r.seconds for r in measured],
            "last_report": {k: v for k, v in asdict(last).items() if k != "examples"},
        },
        note=f"{events:,} events, {last.rows:,} rows written and checked each time",
    )
