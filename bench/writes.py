"""`POST …/jobs` requests/s against the raw store's create rate, on SQLite and on PostgreSQL.

Measured: `libjobs serve` (a real process) answering `POST /api/v1/libraries/{lib}/jobs` from `wrk` with
CONNECTIONS keep-alive connections; each 201 means the job was validated, saved and projected (the
handler waits for its own write to reach the read model).

Baseline ("raw store"): `service.application.LibraryJobs` in this process, on a store of the same kind
with the same eventsourcing settings as `libjobs serve` (`store_env`), saving a new `LibraryJob`
aggregate (the same definition the POST body produces) with `app.save()` in a loop on one thread. It is
the cost of recording the very same events, without HTTP, validation, library lookup or projection.

For reference, the table's details also carry the create rate of a bare `eventsourcing` Application
saving a trivial aggregate (one event, no attributes) on a third store of the same kind.

The three alternate round by round (`interleave`), so a noisy minute costs all of them alike.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from bench.common import Goal, Options, Result, interleave, median, rate_for
from bench.load import Load, LoadResult, rps_sampler, run_load, summarize
from bench.servers import CREATE_JOB_BODY, Api, Store, for_each_store, libjobs, new_store
from contracts.jobs import CreateLibraryJobRequest
from service.application import LibraryJobs
from service.domain.jobs import LibraryJob, ProviderInfo, ValidationPolicy, validate_create
from service.entrypoints.translate import create_draft
from service.ports import LibraryContents

TARGET = 0.40
CONNECTIONS = 16
NAME = "POST /jobs ({kind})"


class Trivial(Aggregate):
    """The smallest aggregate eventsourcing can save: one `Created` event, no attributes."""

    @event("Created")
    def __init__(self) -> None:
        pass


class TrivialApp(Application[uuid.UUID]):
    name = "benchtrivial"


def _providers(_: str) -> ProviderInfo:
    return ProviderInfo(enabled=True, capabilities=frozenset({"series", "book"}))


def _no_contents(_: uuid.UUID) -> LibraryContents:
    return LibraryContents((), (), ())


def library_job_saver(store: Store) -> tuple[Callable[[], object], Callable[[], None]]:
    """`LibraryJobs` saving new `LibraryJob`s built from the benchmark's POST body; (save one, close)."""
    app = LibraryJobs(store.eventsourcing_env(), providers=_providers, library_contents=_no_contents)
    body = msgspec.json.decode(CREATE_JOB_BODY, type=CreateLibraryJobRequest)
    definition, enabled = validate_create(create_draft(body), ValidationPolicy(), _providers)
    library_id = uuid.uuid4()

    def save_one() -> object:
        job = LibraryJob.create(
            job_id=uuid.uuid4(),
            library_id=library_id,
            definition=definition,
            enabled=enabled,
            at=datetime.now(UTC),
            actor="bench",
            request_id=None,
        )
        return app.save(job)

    return save_one, app.close


def trivial_saver(store: Store) -> tuple[Callable[[], object], Callable[[], None]]:
    app = TrivialApp(store.eventsourcing_env())
    return (lambda: app.save(Trivial())), app.close


def run(options: Options) -> list[Result]:
    return for_each_store(NAME, Goal.RATIO_AT_LEAST, TARGET, "req/s", partial(_compare, options=options))


def _compare(kind: str, name: str, *, options: Options) -> Result:
    work = options.work_dir
    with ExitStack() as stack:
        served, raw, trivial = (stack.enter_context(new_store(kind, work)) for _ in range(3))
        server = stack.enter_context(libjobs(served, work))
        api = Api(server.url)
        stack.callback(api.close)
        load = Load(
            url=server.url + api.jobs_path(api.new_library()),
            method="POST",
            headers={**api.headers(), "Content-Type": "application/json"},
            body=CREATE_JOB_BODY,
            connections=CONNECTIONS,
        )
        save_job, close_raw = library_job_saver(raw)
        stack.callback(close_raw)
        save_trivial, close_trivial = trivial_saver(trivial)
        stack.callback(close_trivial)

        run_load(load, options.warmup_seconds, server_pid=server.pid)
        rate_for(options.warmup_seconds, save_job)
        rate_for(options.warmup_seconds, save_trivial)
        log: list[LoadResult] = []
        samples = interleave(
            options.rounds,
            {
                "http": partial(rps_sampler, load, options.seconds, server.pid, log),
                "store": partial(rate_for, options.seconds, save_job),
                "trivial": partial(rate_for, options.seconds, save_trivial),
            },
        )
    details: dict[str, Any] = {
        "connections": CONNECTIONS,
        **summarize(log),
        "store_samples": [round(s, 1) for s in samples["store"]],
        "trivial_aggregate_rate": round(median(samples["trivial"]), 1),
        "trivial_samples": [round(s, 1) for s in samples["trivial"]],
    }
    return Result(
        name=name,
        unit="req/s",
        value=median(samples["http"]),
        target=TARGET,
        goal=Goal.RATIO_AT_LEAST,
        baseline=median(samples["store"]),
        baseline_name=f"LibraryJobs.save(new LibraryJob) in a loop, one thread, own {kind} store",
        details=details,
        note=(
            f"{CONNECTIONS} conns, p99 {details['p99_ms']:.1f} ms; trivial aggregate "
            f"{details['trivial_aggregate_rate']:,.0f}/s"
        ),
    )
