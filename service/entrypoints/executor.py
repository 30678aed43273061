"""The refresh executor (SPEC §4): runs the jobs' runs, and the dry run.

`RunConsumer` pulls `JobRunRequested` work items from the durable JetStream consumer and hands each to
`RefreshExecutor.execute`, which starts the run (`start_run`), plans it against the catalog, asks the
provider for each planned item with at most `maxConcurrency` calls in flight, applies the field rules, and
stores what it did in batches (`record_items`: the items' `Refreshed` events with the run's counts, in one
transaction), then the outcome (`finish_run`). The work item is acknowledged only after the outcome is
stored: an executor that dies mid-run leaves it to be delivered again, and the next attempt continues the
same run (items this run refreshed already are not fetched again; see `service.domain.refresh.plan`).

Cancellation: between items the executor looks at the job in the read model; a deleted job, or a job
disabled after its run started (or, for a scheduled run, disabled at all), ends the run `cancelled`.
Stopping (SIGTERM) stops taking work and hands the runs in progress back to the queue (`nak`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Protocol
from uuid import UUID

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts.jobs import (
    DryRunFieldChange,
    DryRunResponse,
    DryRunSampleItem,
    DryRunSkippedField,
)
from contracts.nats import EXECUTOR_DURABLE, RUNS_STREAM, JobRunRequested
from service.application import ItemRefresh, LibraryJobs, RunCounts
from service.domain.errors import NotFound
from service.domain.jobs import FinalRunStatus, PatchDraft, RefreshConfig, RunStart
from service.domain.refresh import (
    CatalogEntry,
    ItemKind,
    Plan,
    PlannedItem,
    Tally,
    aborted,
    apply_rules,
    outcome,
    plan,
    provider_values,
)
from service.ports import Clock, CommandContext, ProviderFailure, Providers, ProviderUnavailable, RunSync

log = logging.getLogger("libjobs.executor")

ACTOR = "executor"
PROGRESS_INTERVAL_S = 1.0  # how often a run stores its progress (and the items done since)
FLUSH_MAX_ITEMS = 500  # ... or after this many items
RATE_LIMIT_RETRIES = 5
RATE_LIMIT_DEFAULT_WAIT_S = 1.0
RATE_LIMIT_MAX_WAIT_S = 60.0
FAILED_RUN_RETRY_DELAY_S = 5.0  # a run that failed unexpectedly (store down) comes back after this


class CatalogSource(Protocol):
    """The catalog read model as runs see it: a library's series or books, current as of the call."""

    def __call__(self, library_id: UUID, kind: ItemKind) -> list[CatalogEntry]: ...


JobState = Callable[[UUID], bool | None]
"""A job's `enabled` in the read model; None when it is deleted or unknown."""
RunEnded = Callable[[FinalRunStatus], None]


class Cancelled(Exception):
    """The job was deleted or disabled during its run."""


class HandedBack(Exception):
    """The executor is stopping: the run goes back to the queue, to continue elsewhere."""


@dataclass
class _Run:
    """One run in progress: its plan, its counts, and the items done but not stored yet."""

    request: JobRunRequested
    config: RefreshConfig
    start: RunStart
    plan_now: datetime
    was_enabled: bool
    tally: Tally = field(default_factory=Tally)
    pending: list[ItemRefresh] = field(default_factory=list)
    last_flush: float = field(default_factory=time.monotonic)
    flush_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stop_reason: str | None = None

    @property
    def counts(self) -> RunCounts:
        return RunCounts(self.tally.progress(), dict(self.tally.skipped), self.tally.fields_changed)


class RefreshExecutor:
    def __init__(
        self,
        *,
        commands: LibraryJobs,
        run_sync: RunSync,
        catch_up: Callable[[], Awaitable[object]],
        catalog: CatalogSource,
        job_enabled: JobState,
        providers: Providers,
        clock: Clock,
        max_attempts: int = 3,
        on_run_ended: RunEnded = lambda _: None,
    ) -> None:
        self._commands = commands
        self._run_sync = run_sync
        self._catch_up = catch_up
        self._catalog = catalog
        self._job_enabled = job_enabled
        self._providers = providers
        self._clock = clock
        self._max_attempts = max_attempts
        self._on_run_ended = on_run_ended
        self._ctx = CommandContext(actor=ACTOR)
        self.stopping = asyncio.Event()

    # --- a run ---------------------------------------------------------------------------------------

    async def execute(self, request: JobRunRequested) -> FinalRunStatus:
        """Runs the requested run to its end and stores the outcome; raises `HandedBack` when the executor
        stops first (nothing more is stored; the run continues when the work item is delivered again)."""
        await self._catch_up()  # the catalog and the job as of now, at least
        started = await self._run_sync(
            partial(
                self._commands.start_run,
                request.job_id,
                request.run_id,
                self._ctx,
                max_attempts=self._max_attempts,
            )
        )
        if not isinstance(started, RunStart):
            log.info("run %s of job %s: nothing to do (%s)", request.run_id, request.job_id, started)
            return started
        config = RefreshConfig.from_dict(msgspec.structs.asdict(request.config))
        # a manual run of a disabled job runs; other runs, and runs of enabled jobs, end when it is disabled
        enabled = self._job_enabled(request.job_id)
        run = _Run(
            request=request,
            config=config,
            start=started,
            plan_now=started.first_started_at,
            was_enabled=bool(enabled) or request.trigger != "manual",
        )
        run.tally.fields_changed = started.fields_changed
        log.info(
            "run %s of job %s started (attempt %d, trigger %s)",
            request.run_id, request.job_id, started.attempt, request.trigger,
        )  # fmt: skip
        try:
            status, message = await self._run(run)
        except Cancelled as e:
            status, message = "cancelled", f"Cancelled: {e}"
        except HandedBack:
            with contextlib.suppress(Exception):  # keep what was done; the next attempt continues
                await self._flush(run, force=True)
            log.info("run %s handed back (the executor is stopping)", request.run_id)
            raise
        await self._finish(run, status, message)
        return status

    async def _run(self, run: _Run) -> tuple[FinalRunStatus, str]:
        config = run.config
        self._check_job(run)
        problem = await self._provider_problem(config)
        if problem is not None:
            return "failure", aborted(*problem)
        the_plan = await self._plan(run.request.library_id, config, run.plan_now, run.start.first_started_at)
        run.tally.skipped = dict(the_plan.skipped)
        run.tally.succeeded = the_plan.done_before
        to_fetch = await self._match(run, the_plan)
        run.tally.planned = the_plan.done_before + len(to_fetch)
        await self._flush(run, force=True)  # the planned count shows at once
        items = iter(to_fetch)
        workers = [
            asyncio.create_task(self._worker(run, items), name=f"run-{run.request.run_id}-{i}")
            for i in range(min(config.max_concurrency, max(len(to_fetch), 1)))
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if run.stop_reason == "cancelled":
            raise Cancelled(self._cancel_reason(run) or "the job was disabled")
        if run.stop_reason == "stopping":
            raise HandedBack
        return outcome(run.tally, config.scope)

    async def _provider_problem(self, config: RefreshConfig) -> tuple[str, str] | None:
        """Why the provider cannot be asked at all, as (reason, detail); None when it can."""
        name = config.plugin_name
        if self._providers.permissions(name) is None:
            return "plugin_missing", f"provider={config.provider}"
        if not self._providers.enabled(name):
            return "plugin_disabled", f"provider={config.provider}"
        try:
            await self._providers.call(name, "ping", {})
        except ProviderUnavailable as e:
            return e.reason, str(e)
        except ProviderFailure as e:
            log.warning("provider %s failed its ping before a run: %s", config.provider, e)
        return None

    async def _plan(
        self, library_id: UUID, config: RefreshConfig, now: datetime, run_started_at: datetime | None
    ) -> Plan:
        series = self._catalog(library_id, "series")
        books = self._catalog(library_id, "book")
        return plan(series, books, config, now=now, run_started_at=run_started_at)

    async def _match(self, run: _Run, the_plan: Plan) -> list[PlannedItem]:
        """Items without an id at the provider are matched first (bounded like the fetches); those it
        cannot match are skipped `no_match`."""
        unmatched = [i for i, item in enumerate(the_plan.items) if item.external_id is None]
        if not unmatched:
            return the_plan.items
        gate = asyncio.Semaphore(run.config.max_concurrency)
        items = list(the_plan.items)

        async def match(index: int) -> None:
            async with gate:
                if run.stop_reason is not None:
                    return
                self._check_between_items(run)
                found = await self._find_match(run.config, items[index])
                items[index] = found if found is not None else items[index]

        await asyncio.gather(*(match(i) for i in unmatched))
        if run.stop_reason == "cancelled":
            raise Cancelled(self._cancel_reason(run) or "the job was disabled")
        if run.stop_reason == "stopping":
            raise HandedBack
        matched = [item for item in items if item.external_id is not None]
        run.tally.skipped["no_match"] += len(items) - len(matched)
        return matched

    async def _find_match(self, config: RefreshConfig, item: PlannedItem) -> PlannedItem | None:
        """`metadata/<kind>/match`; a plugin without it is asked to `search` by title instead (the top
        result), as the library server does."""
        entry = item.entry
        try:
            try:
                result = await self._call(config, f"metadata/{entry.kind}/match", _match_params(entry))
            except ProviderFailure as e:
                if e.reason != "not_supported":
                    raise
                search = {"query": entry.title, "limit": 1}
                result = await self._call(config, f"metadata/{entry.kind}/search", search)
        except ProviderFailure as e:
            log.info("matching %s %s failed: %s", entry.kind, entry.id, e)
            return None
        external_id = _matched_id(result)
        return None if external_id is None else PlannedItem(entry, external_id, item.fields)

    async def _worker(self, run: _Run, items: Iterator[PlannedItem]) -> None:
        for item in items:
            if run.stop_reason is not None:
                return
            self._check_between_items(run)
            if run.stop_reason is not None:
                return
            refreshed = await self._refresh_item(run, item)
            if refreshed is None:
                run.tally.failed += 1
            else:
                run.tally.succeeded += 1
                run.tally.fields_changed += len(refreshed.changes)
                run.pending.append(refreshed)
            await self._flush(run)

    async def _refresh_item(self, run: _Run, item: PlannedItem) -> ItemRefresh | None:
        config = run.config
        entry = item.entry
        assert item.external_id is not None
        try:
            result = await self._call(config, f"metadata/{entry.kind}/get", {"externalId": item.external_id})
        except ProviderFailure as e:
            log.info("run %s: %s %s failed: %s", run.request.run_id, entry.kind, entry.id, e)
            return None
        permissions = self._providers.permissions(config.plugin_name) or ()
        changes = apply_rules(entry, item.fields, provider_values(result), permissions)
        url = result.get("externalUrl") if isinstance(result, dict) else None
        return ItemRefresh(
            kind=entry.kind,
            item_id=entry.id,
            provider=config.provider,
            external_id=item.external_id,
            external_url=url if isinstance(url, str) else None,
            changes=changes.changes,
            skipped=changes.skipped,
            version=entry.version,
        )

    async def _call(self, config: RefreshConfig, method: str, params: dict[str, Any]) -> Any:
        """One provider call; rate limits are waited out (`retryAfterSeconds`), a crash is retried once
        (the host restarts the plugin)."""
        crashes = 0
        for tries in range(RATE_LIMIT_RETRIES + 1):
            try:
                return await self._providers.call(config.plugin_name, method, params)
            except ProviderFailure as e:
                if e.reason == "rate_limited" and tries < RATE_LIMIT_RETRIES:
                    wait = (
                        e.retry_after_s
                        if e.retry_after_s is not None
                        else RATE_LIMIT_DEFAULT_WAIT_S * 2**tries
                    )
                    await asyncio.sleep(min(wait, RATE_LIMIT_MAX_WAIT_S))
                elif e.reason == "crashed" and crashes == 0:
                    crashes += 1
                else:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_between_items(self, run: _Run) -> None:
        if run.stop_reason is not None:
            return
        if self.stopping.is_set():
            run.stop_reason = "stopping"
        elif self._cancel_reason(run) is not None:
            run.stop_reason = "cancelled"

    def _check_job(self, run: _Run) -> None:
        reason = self._cancel_reason(run)
        if reason is not None:
            raise Cancelled(reason)

    def _cancel_reason(self, run: _Run) -> str | None:
        enabled = self._job_enabled(run.request.job_id)
        if enabled is None:
            return "the job was deleted"
        if not enabled and run.was_enabled:
            return "the job was disabled"
        return None

    async def _flush(self, run: _Run, *, force: bool = False) -> None:
        """Stores the items done since the last flush with the counts, every `PROGRESS_INTERVAL_S`."""
        due = time.monotonic() - run.last_flush >= PROGRESS_INTERVAL_S or len(run.pending) >= FLUSH_MAX_ITEMS
        if not (force or due) or (run.flush_lock.locked() and not force):
            return
        async with run.flush_lock:
            items, run.pending = run.pending, []
            counts = run.counts
            run.last_flush = time.monotonic()
            request = run.request
            try:
                await self._run_sync(
                    self._commands.record_items, request.job_id, request.run_id, items, counts, self._ctx
                )
            except BaseException:
                run.pending[:0] = items  # not stored: the next flush tries again
                raise

    async def _finish(self, run: _Run, status: FinalRunStatus, message: str) -> None:
        await self._flush(run, force=True)
        request = run.request
        await self._run_sync(
            self._commands.finish_run,
            request.job_id,
            request.run_id,
            status,
            message,
            run.start.first_started_at,
            run.counts,
            self._ctx,
        )
        log.info("run %s of job %s ended %s: %s", request.run_id, request.job_id, status, message)
        self._on_run_ended(status)

    # --- the dry run ---------------------------------------------------------------------------------

    async def dry_run(
        self, library_id: UUID, job_id: UUID, override: PatchDraft | None, sample_size: int
    ) -> DryRunResponse:
        """Plans like a run and asks the provider for the first `sample_size` items; writes nothing."""
        await self._catch_up()
        _, config = await self._run_sync(self._commands.dry_run_config, library_id, job_id, override)
        now = self._clock.now()
        the_plan = await self._plan(library_id, config, now, None)
        problem = await self._provider_problem(config)
        sample: list[DryRunSampleItem] = []
        if problem is None and sample_size:
            try:
                sample = await self._sample(config, the_plan, sample_size)
            except ProviderUnavailable as e:
                problem = e.reason, str(e)
        return DryRunResponse(
            total_eligible=len(the_plan.items),
            est_skipped_no_id=the_plan.skipped["no_external_id"],
            est_skipped_recently_synced=the_plan.skipped["recently_synced"],
            plan_failure=None if problem is None else f"{problem[0]}: {problem[1]}",
            sample=sample,
        )

    async def _sample(self, config: RefreshConfig, the_plan: Plan, size: int) -> list[DryRunSampleItem]:
        """The first `size` planned items the provider answers for (matched first when needed), in plan
        order; fetched with the job's concurrency, a few candidates more than needed."""
        candidates = the_plan.items[: size * 2]
        gate = asyncio.Semaphore(config.max_concurrency)
        permissions = self._providers.permissions(config.plugin_name) or ()

        async def look(item: PlannedItem) -> DryRunSampleItem | None:
            async with gate:
                if item.external_id is None:
                    matched = await self._find_match(config, item)
                    if matched is None:
                        return None
                    item = matched
                try:
                    result = await self._call(
                        config, f"metadata/{item.entry.kind}/get", {"externalId": item.external_id}
                    )
                except ProviderUnavailable:
                    raise
                except ProviderFailure:
                    return None
            changes = apply_rules(item.entry, item.fields, provider_values(result), permissions)
            return DryRunSampleItem(
                series_id=item.entry.id,
                series_name=item.entry.title,
                item_type=item.entry.kind,
                changes={k: DryRunFieldChange(v["before"], v["after"]) for k, v in changes.changes.items()},
                skipped=[DryRunSkippedField(s["field"], s["reason"]) for s in changes.skipped],  # type: ignore[arg-type]
            )

        looked = await asyncio.gather(*(look(item) for item in candidates))
        return [item for item in looked if item is not None][:size]


def _match_params(entry: CatalogEntry) -> dict[str, Any]:
    """What a match needs: the title, the year, and the author(s) (series plugins take one `author`,
    book plugins a list of `authors`; the catalog may hold names or `{name, role}` objects)."""
    params: dict[str, Any] = {"title": entry.title}
    year = entry.metadata.get("year")
    if isinstance(year, int) and not isinstance(year, bool):
        params["year"] = year
    authors = entry.metadata.get("authors")
    names = [a if isinstance(a, str) else a.get("name") for a in authors] if isinstance(authors, list) else []
    names = [n for n in names if isinstance(n, str) and n]
    if names:
        if entry.kind == "book":
            params["authors"] = names
        else:
            params["author"] = names[0]
    isbns = entry.metadata.get("isbns")
    if entry.kind == "book" and isinstance(isbns, list) and isbns and isinstance(isbns[0], str):
        params["isbn"] = isbns[0]
    return params


def _matched_id(result: Any) -> str | None:
    """The external id in a `match` answer (`{"match": {"externalId"}}`) or a `search` answer
    (`{"results": [{"externalId"}]}`, the first)."""
    if not isinstance(result, dict):
        return None
    results = result.get("results")
    if isinstance(results, list):
        result = results[0] if results else None
    found = result.get("match", result) if isinstance(result, dict) else None
    external_id = found.get("externalId") if isinstance(found, dict) else None
    return external_id if isinstance(external_id, str) and external_id else None


# --- the work queue ----------------------------------------------------------------------------------


class RunConsumer:
    """Pulls work items from the durable consumer and executes up to `max_runs` runs at once."""

    def __init__(
        self,
        executor: RefreshExecutor,
        *,
        max_runs: int = 4,
        ack_wait_s: float = 60.0,
        handback_grace_s: float = 10.0,
    ) -> None:
        self._executor = executor
        self._max_runs = max_runs
        self._heartbeat_s = max(ack_wait_s / 3, 0.2)
        self._grace_s = handback_grace_s
        self._task: asyncio.Task[None] | None = None
        self._runs: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_runs)

    @property
    def running(self) -> int:
        return len(self._runs)

    def start(self, js: JetStreamContext) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._pull_forever(js), name="run-consumer")

    async def stop(self) -> None:
        """Stops taking work; the runs in progress get `handback_grace_s` to finish, then go back."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._runs:
            _, pending = await asyncio.wait(self._runs, timeout=self._grace_s)
            if pending:
                self._executor.stopping.set()  # they stop between items and hand their runs back
                await asyncio.wait(pending, timeout=30)

    async def _pull_forever(self, js: JetStreamContext) -> None:
        subscription = None
        backoff = 0.5
        while True:
            try:
                if subscription is None:
                    subscription = await js.pull_subscribe_bind(durable=EXECUTOR_DURABLE, stream=RUNS_STREAM)
                await self._slots.acquire()
                try:
                    messages = await subscription.fetch(1, timeout=2)
                except BaseException:
                    self._slots.release()
                    raise
                if not messages:
                    self._slots.release()
                for message in messages[:1]:  # one asked for; the slot is released when it is done
                    task = asyncio.create_task(self._handle(message), name="run")
                    self._runs.add(task)
                    task.add_done_callback(self._runs.discard)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                continue  # no work
            except Exception as e:  # NATS down or the consumer missing: keep trying, never die
                log.warning("fetching run requests failed (%s); retrying in %.1fs", e, backoff)
                subscription = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _handle(self, message: Msg) -> None:
        try:
            await self._handle_message(message)
        finally:
            self._slots.release()

    async def _handle_message(self, message: Msg) -> None:
        try:
            request = msgspec.json.decode(message.data, type=JobRunRequested)
        except msgspec.DecodeError as e:
            log.error("dropped an undecodable run request on %s: %s", message.subject, e)
            await _quietly(message.term())
            return
        heartbeat = asyncio.create_task(self._heartbeat(message), name=f"run-{request.run_id}-heartbeat")
        try:
            await self._executor.execute(request)
        except HandedBack:
            await _quietly(message.nak())
            return
        except NotFound:
            log.warning("run %s: job %s does not exist; dropped", request.run_id, request.job_id)
            await _quietly(message.term())
            return
        except Exception:
            log.exception("run %s failed; it will be tried again", request.run_id)
            await _quietly(message.nak(delay=FAILED_RUN_RETRY_DELAY_S))
            return
        finally:
            heartbeat.cancel()
        await _quietly(message.ack())

    async def _heartbeat(self, message: Msg) -> None:
        """Tells JetStream the run is alive, so a long run is not delivered again while it goes on."""
        while True:
            await asyncio.sleep(self._heartbeat_s)
            await _quietly(message.in_progress())


async def _quietly(action: Awaitable[None]) -> None:
    try:
        await action
    except Exception as e:  # NATS gone: the work item is delivered again after the ack wait
        log.warning("could not acknowledge a run request: %s", e)
