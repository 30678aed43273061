"""The executor benchmarks (issue 5): a run over a 10,000-series library (1,000 with `--quick`) with the
fixture plugin taking 20 ms per call, at `maxConcurrency` 1, 4 and 16; and planning 100,000 series.

1. **Run time by concurrency**: one `Service` in this process (roles api, projector, executor) on a SQLite
   store of its own, a `nats-server -js` of the benchmark's own, the fixture plugin as a real process
   (`delayMs` 20) permitted to write everything. The libraries' series are stored directly
   (`Series.new` aggregates saved 1,000 per transaction); three jobs differ only in `maxConcurrency`, each
   on a library of its own with the same series, so that every run fetches and changes every series (4
   fields each: one `Refreshed` and one `MetadataRefreshed` per series). Each job is run once (run-now)
   and waited for; the run time is its `RunFinished.finishedAt - startedAt` (the executor's own clock,
   from `start_run` to the stored outcome: planning, every fetch, every catalog write). Every run must
   end `success` with every series succeeded. Throughput = series / run time; the target compares 16
   with 1 (>= 12x).
2. **Planning 100,000 series**: the catalog read model holding 100,000 series of one library (a third
   without an id at the provider, a third synced recently), then the executor's planning step as it
   runs: the read model's `entries()` (catalog rows to `CatalogEntry`, made cold each time: the read model
   keeps them once made) and `plan()`; the median of 5. The rows are frozen out of the cyclic GC's sight
   first, as the service does with what it loads at start-up.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from bench.common import Goal, Options, Result, median, stage
from projections.catalog import ItemIndex, ItemRow
from service.bootstrap import Service
from service.domain.catalog import Library, Series
from service.domain.jobs import ConfigDraft, CreateDraft, LibraryJob, RefreshConfig
from service.domain.refresh import plan
from service.ports import CommandContext
from service.settings import PluginSpec, Settings
from tests.support.nats import NatsServer

CONCURRENCIES = (1, 4, 16)
DELAY_MS = 20
RATIO_TARGET = 12.0
PLAN_SERIES = 100_000
PLAN_TARGET_S = 2.0
PLUGIN = "fixture"
CTX = CommandContext(actor="bench")


def run(options: Options) -> list[Result]:
    series = 1_000 if options.quick else 10_000
    root = options.work_dir / "executor"
    spec = _fixture_plugin(root, series)
    title = f"executor: runs over {series:,} series at maxConcurrency {CONCURRENCIES}"
    with stage(title), NatsServer(options.work_dir / "executor-nats") as nats:
        times = asyncio.run(_run_times(root, spec, nats.url, series))
    with stage(f"executor: planning {PLAN_SERIES:,} series"):
        plan_s = _planning_seconds()
    rate = {c: series / seconds for c, seconds in times.items()}
    note = ", ".join(f"c={c}: {times[c]:.1f} s ({rate[c]:,.0f}/s)" for c in CONCURRENCIES)
    details: dict[str, Any] = {"series": series, "delay_ms": DELAY_MS, "run_seconds": times}
    return [
        Result(
            name=f"executor: run throughput, maxConcurrency 16 vs 1 ({series:,} series)",
            unit="series/s",
            value=rate[16],
            target=RATIO_TARGET,
            goal=Goal.RATIO_AT_LEAST,
            baseline=rate[1],
            baseline_name="maxConcurrency 1",
            details=details,
            note=note,
        ),
        Result(
            name=f"executor: run throughput, maxConcurrency 4 vs 1 ({series:,} series)",
            unit="series/s",
            value=rate[4],
            target=1.0,  # no target of its own; shown for the curve
            goal=Goal.RATIO_AT_LEAST,
            baseline=rate[1],
            baseline_name="maxConcurrency 1",
            details=details,
            note="reported, no target",
        ),
        Result(
            name=f"executor: planning {PLAN_SERIES:,} series",
            unit="s",
            value=plan_s,
            target=PLAN_TARGET_S,
            goal=Goal.AT_MOST,
            note="catalog rows to entries, then plan(); median of 5",
        ),
    ]


def _fixture_plugin(root: Path, count: int) -> PluginSpec:
    root.mkdir(parents=True, exist_ok=True)
    data = root / "fixture.json"
    metadata = {"rating": 7.5, "status": "ongoing", "year": 2001, "totalVolumeCount": 12}
    items = {f"s-{i}": {"title": f"T{i}", "metadata": metadata} for i in range(count)}
    data.write_text(json.dumps({"series": items, "delayMs": DELAY_MS}))
    return PluginSpec(
        name=PLUGIN,
        command=(sys.executable, "-m", "service.adapters.plugins.fixture", "--data", str(data)),
        permissions=("metadata:write:*",),
    )


async def _run_times(root: Path, spec: PluginSpec, nats_url: str, count: int) -> dict[int, float]:
    settings = Settings(
        data_dir=root / "data",
        roles=frozenset({"api", "projector", "executor"}),
        nats_urls=(nats_url,),
        plugins=(spec,),
    )
    service = Service(settings)
    await service.start()
    try:
        times = {}
        for concurrency in CONCURRENCIES:
            # a library of its own: every run changes every series (a run over series another run has
            # just refreshed would change nothing, and publish nothing: less work per item)
            library_id = await _library(service, count)
            times[concurrency] = await _one_run(service, library_id, concurrency, count)
        return times
    finally:
        await service.stop()


async def _library(service: Service, count: int) -> UUID:
    library_id = uuid4()
    app = service.commands
    now = datetime.now(UTC)
    await service.run_sync(
        app.save, Library.register(library_id, "Bench", at=now, actor="bench", request_id=None)
    )
    for start in range(0, count, 1_000):
        batch = [
            Series.new(
                uuid4(),
                library_id,
                {
                    "title": f"Series {i:06}",
                    "titleSort": None,
                    "metadata": {"rating": 1},
                    "locks": [],
                    "externalIds": [{"source": f"plugin:{PLUGIN}", "externalId": f"s-{i}"}],
                },
                at=now,
                actor="bench",
                request_id=None,
            )
            for i in range(start, min(start + 1_000, count))
        ]
        await service.run_sync(app.save, *batch)
    await service.follower.catch_up()
    return library_id


async def _one_run(service: Service, library_id: UUID, concurrency: int, count: int) -> float:
    config = ConfigDraft(
        provider=f"plugin:{PLUGIN}", max_concurrency=concurrency, skip_recently_synced_within_s=0
    )
    draft = CreateDraft(name=f"c{concurrency}", cron_schedule="0 0 29 2 *", config=config)
    saved = await service.run_sync(service.commands.create_job, library_id, draft, CTX)
    job_id = saved.id
    await service.follower.wait_for(saved.position)
    _, run_id = await service.run_sync(service.commands.run_now, library_id, job_id, CTX)
    deadline = time.monotonic() + count * DELAY_MS / 1000 * 3 + 120
    while time.monotonic() < deadline:
        job: LibraryJob = await service.run_sync(service.commands.repository.get, job_id)
        status = job.run_finished(run_id)
        if status is not None:
            break
        await asyncio.sleep(0.5)
    else:
        raise RuntimeError(f"the run at maxConcurrency {concurrency} did not finish in time")
    finished = _finished_event(service, job_id, run_id)
    if finished.status != "success" or finished.counts["succeeded"] != count:
        raise RuntimeError(
            f"the run at maxConcurrency {concurrency} ended {finished.status}: {finished.message}"
        )
    seconds: float = (finished.finished_at - finished.started_at).total_seconds()
    return seconds


def _finished_event(service: Service, job_id: UUID, run_id: UUID) -> Any:
    for event in service.commands.repository.event_store.get(job_id, desc=True):
        if isinstance(event, LibraryJob.RunFinished) and event.run_id == run_id:
            return event
    raise RuntimeError("no RunFinished")


def _planning_seconds() -> float:
    library_id = uuid4()
    now = datetime.now(UTC)
    index = ItemIndex(is_book=False)
    for i in range(PLAN_SERIES):
        refs = []
        if i % 3:
            synced = now - timedelta(minutes=10 if i % 3 == 1 else 600)
            refs = [
                {"source": f"plugin:{PLUGIN}", "externalId": f"s-{i}", "lastSyncedAt": synced.isoformat()}
            ]
        state = {"title": f"Series {i:06}", "titleSort": None, "metadata": {"rating": 1}, "locks": [],
                 "externalIds": refs}  # fmt: skip
        index.put(ItemRow(uuid4(), library_id, state, now))
    config = RefreshConfig(
        f"plugin:{PLUGIN}", "series_only", ("ratings", "status", "counts"), (), (), (), True, 3600, 4
    )
    gc.collect()
    gc.freeze()  # as the service does with what it loaded at start-up (bootstrap.settle_memory)
    samples = []
    for _ in range(5):
        for row in index.rows.values():
            row.entry = None  # cold: every entry made again, as on the first run after a start
        started = time.perf_counter()
        plan(index.entries(library_id), [], config, now=now)
        samples.append(time.perf_counter() - started)
    gc.unfreeze()
    return median(samples)
