"""LibraryJobs: the one application object. One method per command; the aggregates decide.

Every command loads the aggregates it needs, lets them record events, and saves atomically. Optimistic
concurrency (the store's unique (aggregate id, version)) settles races: a conflicting save reloads and
retries, and `If-Match` is re-checked against what it reloaded.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError

from service.domain.catalog import (
    Book,
    CatalogItem,
    Library,
    Series,
    library_aggregate_id,
)
from service.domain.errors import Conflict, NotFound, PreconditionFailed
from service.domain.jobs import (
    AlreadyClaimed,
    CreateDraft,
    FinalRunStatus,
    FireRefused,
    FireTrigger,
    LibraryJob,
    PatchDraft,
    ProviderLookup,
    RefreshConfig,
    RunStart,
    ValidationPolicy,
    validate_create,
    validate_patch,
)
from service.domain.timetable import Fire
from service.ports import Clock, CommandContext, LibraryContents, SystemClock

T = TypeVar("T")
SaveFn = Callable[..., Sequence[Any]]  # aggregates → eventsourcing recordings
OCC_ATTEMPTS = 16
OCC_BACKOFF_S = 0.002
OCC_BACKOFF_MAX_S = 0.05


@dataclass(frozen=True)
class Saved:
    """What a command did: the aggregate's id and the store position of its last event (None: no change)."""

    id: UUID
    position: int | None
    created: bool = False


# `LibraryJobs.create_job` from the event loop, stored with the creates made at the same time (bootstrap)
CreateJob = Callable[[UUID, CreateDraft, CommandContext], Awaitable[Saved]]


@dataclass(frozen=True)
class JobRequest:
    """One `create_job`, for `create_jobs`."""

    library_id: UUID
    draft: CreateDraft
    ctx: CommandContext


@dataclass(frozen=True)
class ItemRefresh:
    """One series or book a run fetched: what it writes, for `record_items`."""

    kind: Literal["series", "book"]
    item_id: UUID
    provider: str
    external_id: str
    external_url: str | None
    changes: dict[str, dict[str, Any]]
    skipped: list[dict[str, str]]
    # the item's version in the store as the run planned it (None: unknown): its `Refreshed` is then
    # recorded without loading the item, and the store refuses it if the item changed since
    version: int | None = None


@dataclass(frozen=True)
class RunCounts:
    """A run's cumulative counts: `progress` (RunDto.progress), `skipped` by reason, fields changed."""

    progress: Mapping[str, int]
    skipped: Mapping[str, int]
    fields_changed: int


@dataclass(frozen=True)
class Fired(Saved):
    """A claimed fire: `run_id` is the run it requested, None when it was recorded as skipped."""

    run_id: UUID | None = None


class LibraryJobs(Application[UUID]):
    name = "libjobs"

    def __init__(
        self,
        env: dict[str, str] | None = None,
        *,
        providers: ProviderLookup,
        library_contents: Callable[[UUID], LibraryContents],
        library_known: Callable[[UUID], bool] = lambda _: False,
        on_saved: Callable[[list[tuple[int, Any]]], None] = lambda _: None,
        wrap_save: Callable[[SaveFn], SaveFn] | None = None,
        policy: ValidationPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(env)
        self.providers = providers
        self.library_contents = library_contents
        self.library_known = library_known
        self.on_saved = on_saved
        # Bootstrap may wrap saving, e.g. to commit concurrent commands in one transaction.
        self._store: SaveFn = wrap_save(self.save) if wrap_save else self.save
        self.policy = policy or ValidationPolicy()
        self.clock = clock or SystemClock()

    # --- jobs ---------------------------------------------------------------------------------------

    def create_job(self, library_id: UUID, draft: CreateDraft, ctx: CommandContext) -> Saved:
        (created,) = self.create_jobs([JobRequest(library_id, draft, ctx)])
        if isinstance(created, Exception):
            raise created
        return created

    def create_jobs(self, requests: Sequence[JobRequest]) -> list[Saved | Exception]:
        """`create_job` for many requests, the valid ones stored in one transaction: each request's
        `Saved`, or the error that refuses it alone (validation, an unknown library, or a failure while
        checking it: one request's trouble is never another's). New aggregates cannot conflict; an error
        of the store while saving is raised, as it concerns them all."""
        jobs: list[LibraryJob] = []
        outcomes: list[LibraryJob | Exception] = []
        for request in requests:
            try:
                job = self._new_job(request)
            except Exception as e:  # handed to that request's caller alone, who reports it
                outcomes.append(e)
                continue
            jobs.append(job)
            outcomes.append(job)
        saved = self._persist(*jobs) if jobs else []
        position = {event.originator_id: at for at, event in saved}  # each job's last event
        return [
            outcome
            if isinstance(outcome, Exception)
            else Saved(outcome.id, position[outcome.id], created=True)
            for outcome in outcomes
        ]

    def _new_job(self, request: JobRequest) -> LibraryJob:
        definition, enabled = validate_create(request.draft, self.policy, self.providers)
        if not self.library_known(request.library_id):  # the read model answers fast; the store decides
            self._live_library(request.library_id)
        return LibraryJob.create(
            job_id=uuid.uuid4(),
            library_id=request.library_id,
            definition=definition,
            enabled=enabled,
            at=self.clock.now(),
            actor=request.ctx.actor,
            request_id=request.ctx.request_id,
        )

    def update_job(
        self,
        library_id: UUID,
        job_id: UUID,
        patch: PatchDraft,
        ctx: CommandContext,
        *,
        if_match: int | None = None,
    ) -> Saved:
        def attempt() -> Saved:
            job = self.job(library_id, job_id)
            _check_if_match(job, if_match)
            definition, enabled = validate_patch(
                job.definition, job.enabled, patch, self.policy, self.providers
            )
            changed = job.change(
                definition, enabled, at=self.clock.now(), actor=ctx.actor, request_id=ctx.request_id
            )
            return Saved(job.id, self._save(job) if changed else None)

        return _retry_on_conflict(attempt)

    def delete_job(
        self, library_id: UUID, job_id: UUID, ctx: CommandContext, *, if_match: int | None = None
    ) -> Saved:
        def attempt() -> Saved:
            job = self.job(library_id, job_id)
            _check_if_match(job, if_match)
            job.delete(at=self.clock.now(), actor=ctx.actor, request_id=ctx.request_id)
            return Saved(job.id, self._save(job))

        return _retry_on_conflict(attempt)

    # --- runs -------------------------------------------------------------------------------------

    def request_run(
        self,
        job_id: UUID,
        nominal_instant: datetime,
        trigger: FireTrigger,
        ctx: CommandContext,
        *,
        missed_fires: int = 0,
    ) -> Fired | None:
        """The scheduler's claim of the fire (job, nominal instant): `RunRequested` (run id
        `uuid5(job id, instant)`), or `FireSkipped` while a run is in flight or for a `missed` fire.

        None when there is nothing to do: the fire was claimed already (another replica fired it: when two
        race, one saves and the other reloads and finds it claimed), or the job is unknown, disabled or
        deleted. Manual runs go through `run_now`.
        """

        def attempt() -> Fired | None:
            job = self._get(job_id, LibraryJob)
            if job is None:
                return None
            try:
                run_id = job.fire(
                    nominal_instant,
                    trigger,
                    missed_fires=missed_fires,
                    at=self.clock.now(),
                    actor=ctx.actor,
                    request_id=ctx.request_id,
                )
            except (AlreadyClaimed, FireRefused):
                return None
            return Fired(job.id, self._save(job), run_id=run_id)

        return _retry_on_conflict(attempt)

    def request_runs(self, fires: Sequence[Fire], ctx: CommandContext) -> list[Fired | None]:
        """`request_run` for many fires at once, stored in one transaction: a scheduler with a thousand
        fires due in the same second must not pay a transaction (and a thread hop) for each. When the
        batch conflicts with another writer (another replica claimed one of them first), each fire is
        claimed alone, which settles every race as `request_run` does."""
        jobs: list[LibraryJob] = []
        results: list[tuple[LibraryJob, UUID | None] | None] = []
        for fire in fires:
            job = self._get(fire.job_id, LibraryJob)
            if job is None:
                results.append(None)
                continue
            try:
                run_id = job.fire(
                    fire.instant,
                    fire.trigger,
                    missed_fires=fire.missed_fires,
                    at=self.clock.now(),
                    actor=ctx.actor,
                    request_id=ctx.request_id,
                )
            except (AlreadyClaimed, FireRefused):
                results.append(None)
                continue
            jobs.append(job)
            results.append((job, run_id))
        try:
            position = self._save(*jobs) if jobs else None
        except IntegrityError:
            return [
                self.request_run(f.job_id, f.instant, f.trigger, ctx, missed_fires=f.missed_fires)
                for f in fires
            ]
        return [None if r is None else Fired(r[0].id, position, run_id=r[1]) for r in results]

    def run_now(self, library_id: UUID, job_id: UUID, ctx: CommandContext) -> tuple[Saved, UUID]:
        """A manual run (SPEC §2.6), also of a disabled job: its run id is new (uuid4). Conflict (409)
        while a run of this job is queued or running."""
        run_id = uuid.uuid4()

        def attempt() -> Saved:
            job = self.job(library_id, job_id)
            job.run_now(run_id, at=self.clock.now(), actor=ctx.actor, request_id=ctx.request_id)
            return Saved(job.id, self._save(job))

        return _retry_on_conflict(attempt), run_id

    def record_run(
        self,
        job_id: UUID,
        run_id: UUID,
        status: FinalRunStatus,
        message: str | None,
        started_at: datetime,
        finished_at: datetime,
        counts: Mapping[str, int],
        ctx: CommandContext,
    ) -> tuple[Saved, FinalRunStatus]:
        """Records a run's outcome (`RunFinished`): of the run in flight, which it ends, or of a run
        executed elsewhere. Once per run id: recording it again changes nothing (position None).
        Returns the status recorded for the run, the first one when it was recorded before."""

        def attempt() -> tuple[Saved, FinalRunStatus]:
            job = self._get(job_id, LibraryJob)
            if job is None:
                raise NotFound("Job not found")
            recorded = job.finish_run(
                run_id,
                status,
                message=message,
                started_at=started_at,
                finished_at=finished_at,
                counts=counts,
                at=self.clock.now(),
                actor=ctx.actor,
                request_id=ctx.request_id,
            )
            saved = Saved(job.id, self._save(job) if recorded else None)
            return saved, job.finished_runs[str(run_id)]

        return _retry_on_conflict(attempt)

    # --- the executor's commands ---------------------------------------------------------------------

    def start_run(
        self, job_id: UUID, run_id: UUID, ctx: CommandContext, *, max_attempts: int
    ) -> RunStart | FinalRunStatus:
        """An executor takes the run: `RunStarted` (attempt 1, or the next after a crash), and the
        `RunStart` to continue from. Instead, the run's final status when there is nothing to run: it
        was recorded already, its job was deleted (`cancelled`, recorded now), or `max_attempts`
        attempts have started it already (`failure`, recorded now). NotFound for an unknown job."""

        def attempt() -> RunStart | FinalRunStatus:
            job = self._get(job_id, LibraryJob)
            if job is None:
                raise NotFound("Job not found")
            done = job.run_finished(run_id)
            if done is not None:
                return done
            now = self.clock.now()
            stamp: dict[str, Any] = {"at": now, "actor": ctx.actor, "request_id": ctx.request_id}
            if job.deleted:
                message = "Cancelled: the job was deleted"
                job.finish_run(run_id, "cancelled", message=message, started_at=now, finished_at=now,
                               counts={}, **stamp)  # fmt: skip
            elif job.run_attempts(run_id) >= max_attempts:
                message = f"Gave up after {max_attempts} attempts (the executor failed or stopped each time)"
                job.finish_run(run_id, "failure", message=message, started_at=now, finished_at=now,
                               counts={}, **stamp)  # fmt: skip
            else:
                start = job.start_run(run_id, **stamp)
                self._save(job)
                return start
            self._save(job)
            return job.finished_runs[str(run_id)]

        return _retry_on_conflict(attempt)

    def record_items(
        self,
        job_id: UUID,
        run_id: UUID,
        items: Sequence[ItemRefresh],
        counts: RunCounts,
        ctx: CommandContext,
    ) -> int | None:
        """Stores what a run did to some items (each item's `Refreshed`) with the run's counts after
        them (`RunProgressed`), atomically: a resumed run finds its counts and its items agreeing.
        Items deleted meanwhile are left alone. Returns the position (None: nothing stored).

        An item whose version the run knows is not loaded: its `Refreshed` is made for that version, and
        if the item changed since (the library server wrote it, or deleted it), the store refuses the
        whole save and it is tried again loading every item (a run's items are rarely written meanwhile;
        loading each one cost about a fifth of a run's CPU)."""
        attempts = 0

        def attempt() -> int | None:
            nonlocal attempts
            trust_versions, attempts = attempts == 0, attempts + 1  # a retry follows a conflict
            job = self._get(job_id, LibraryJob)
            if job is None:
                raise NotFound("Job not found")
            now = self.clock.now()
            stamp: dict[str, Any] = {"at": now, "actor": ctx.actor, "request_id": ctx.request_id}
            changed: list[Any] = []
            for item in items:
                kind = Series if item.kind == "series" else Book
                refresh: dict[str, Any] = {
                    "run_id": run_id,
                    "job_id": job_id,
                    "provider": item.provider,
                    "external_id": item.external_id,
                    "external_url": item.external_url,
                    "changes": item.changes,
                    "skipped": item.skipped,
                    **stamp,
                }
                if trust_versions and item.version is not None:
                    changed.append(kind.refreshed_at(item.item_id, item.version, **refresh))
                    continue
                aggregate = self._get(kind.aggregate_id(item.item_id), kind)
                if aggregate is None or aggregate.deleted:
                    continue
                aggregate.refresh(**refresh)
                changed.append(aggregate)
            if job.record_progress(run_id, counts.progress, counts.skipped, counts.fields_changed, **stamp):
                changed.append(job)
            return self._save(*changed) if changed else None

        return _retry_on_conflict(attempt)

    def finish_run(
        self,
        job_id: UUID,
        run_id: UUID,
        status: FinalRunStatus,
        message: str,
        started_at: datetime,
        counts: RunCounts,
        ctx: CommandContext,
    ) -> Saved:
        """The executor's end of a run: its last counts and its outcome, in one save."""

        def attempt() -> Saved:
            job = self._get(job_id, LibraryJob)
            if job is None:
                raise NotFound("Job not found")
            now = self.clock.now()
            stamp: dict[str, Any] = {"at": now, "actor": ctx.actor, "request_id": ctx.request_id}
            job.record_progress(run_id, counts.progress, counts.skipped, counts.fields_changed, **stamp)
            recorded = job.finish_run(
                run_id,
                status,
                message=message,
                started_at=min(started_at, now),
                finished_at=now,
                counts=counts.progress,
                **stamp,
            )
            return Saved(job.id, self._save(job) if recorded else None)

        return _retry_on_conflict(attempt)

    def dry_run_config(
        self, library_id: UUID, job_id: UUID, override: PatchDraft | None
    ) -> tuple[LibraryJob, RefreshConfig]:
        """The job and the config a dry run plans with: the saved one, or the override validated like a
        PATCH of the config (SPEC §2.7)."""
        job = self.job(library_id, job_id)
        if override is None:
            return job, job.definition.config
        definition, _ = validate_patch(job.definition, job.enabled, override, self.policy, self.providers)
        return job, definition.config

    def job(self, library_id: UUID, job_id: UUID) -> LibraryJob:
        """The live job of this library; NotFound for a deleted job or another library's job."""
        job = self._get(job_id, LibraryJob)
        if job is None or job.deleted or job.library_id != library_id:
            raise NotFound("Job not found")
        return job

    # --- catalog ------------------------------------------------------------------------------------

    def upsert_library(self, library_id: UUID, name: str, ctx: CommandContext) -> Saved:
        def attempt() -> Saved:
            now = self.clock.now()
            library = self._get(library_aggregate_id(library_id), Library)
            if library is None:
                library = Library.register(
                    library_id, name, at=now, actor=ctx.actor, request_id=ctx.request_id
                )
                return Saved(library_id, self._save(library), created=True)
            created = library.deleted
            if not library.upsert(name, at=now, actor=ctx.actor, request_id=ctx.request_id):
                return Saved(library_id, None)
            return Saved(library_id, self._save(library), created=created)

        return _retry_on_conflict(attempt)

    def delete_library(self, library_id: UUID, ctx: CommandContext) -> Saved:
        """Deletes the library with its jobs, series and books, all in one atomic save."""

        def attempt() -> Saved:
            library = self._live_library(library_id)
            now = self.clock.now()
            stamp: dict[str, Any] = {"at": now, "actor": ctx.actor, "request_id": ctx.request_id}
            contents = self.library_contents(library_id)
            doomed: list[LibraryJob | CatalogItem] = []
            for job_id in contents.job_ids:
                job = self._get(job_id, LibraryJob)
                if job is not None and not job.deleted:
                    doomed.append(job)
            items = [(Series, s) for s in contents.series_ids] + [(Book, b) for b in contents.book_ids]
            for kind, item_id in items:
                item = self._get(kind.aggregate_id(item_id), kind)
                if item is not None and not item.deleted and item.library_id == library_id:
                    doomed.append(item)
            for aggregate in doomed:
                aggregate.delete(**stamp)
            library.delete(**stamp)
            return Saved(library_id, self._save(library, *doomed))

        return _retry_on_conflict(attempt)

    def upsert_series(
        self, library_id: UUID, series_id: UUID, state: dict[str, Any], ctx: CommandContext
    ) -> Saved:
        return self._upsert_item(Series, series_id, library_id, state, ctx)

    def delete_series(self, library_id: UUID, series_id: UUID, ctx: CommandContext) -> Saved:
        return self._delete_item(Series, series_id, library_id, ctx)

    def upsert_book(
        self, library_id: UUID, book_id: UUID, state: dict[str, Any], ctx: CommandContext
    ) -> Saved:
        return self._upsert_item(Book, book_id, library_id, state, ctx)

    def delete_book(self, library_id: UUID, book_id: UUID, ctx: CommandContext) -> Saved:
        return self._delete_item(Book, book_id, library_id, ctx)

    # --- helpers ------------------------------------------------------------------------------------

    def _upsert_item(
        self,
        kind: type[Series] | type[Book],
        item_id: UUID,
        library_id: UUID,
        state: dict[str, Any],
        ctx: CommandContext,
    ) -> Saved:
        def attempt() -> Saved:
            self._live_library(library_id)
            now = self.clock.now()
            item = self._get(kind.aggregate_id(item_id), kind)
            if item is None:
                new = kind.new(item_id, library_id, state, at=now, actor=ctx.actor, request_id=ctx.request_id)
                return Saved(item_id, self._save(new), created=True)
            if item.library_id != library_id and not item.deleted:
                raise Conflict(f"{kind.__name__} {item_id} belongs to another library")
            created = item.deleted
            if not item.upsert(library_id, state, at=now, actor=ctx.actor, request_id=ctx.request_id):
                return Saved(item_id, None)
            return Saved(item_id, self._save(item), created=created)

        return _retry_on_conflict(attempt)

    def _delete_item(
        self,
        kind: type[Series] | type[Book],
        item_id: UUID,
        library_id: UUID,
        ctx: CommandContext,
    ) -> Saved:
        def attempt() -> Saved:
            item = self._get(kind.aggregate_id(item_id), kind)
            if item is None or item.deleted or item.library_id != library_id:
                raise NotFound(f"{kind.__name__} not found")
            item.delete(at=self.clock.now(), actor=ctx.actor, request_id=ctx.request_id)
            return Saved(item_id, self._save(item))

        return _retry_on_conflict(attempt)

    def _live_library(self, library_id: UUID) -> Library:
        library = self._get(library_aggregate_id(library_id), Library)
        if library is None or library.deleted:
            raise NotFound("Library not found")
        return library

    def _get(self, aggregate_id: UUID, kind: type[T]) -> T | None:
        try:
            aggregate: Any = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        return aggregate if isinstance(aggregate, kind) else None

    def _save(self, *aggregates: Any) -> int | None:
        return max((position for position, _ in self._persist(*aggregates)), default=None)

    def _persist(self, *aggregates: Any) -> list[tuple[int, Any]]:
        """Stores the aggregates' new events in one transaction: (position, event) of each."""
        recordings = self._store(*aggregates)
        saved = [(r.notification.id, r.domain_event) for r in recordings]
        self.on_saved(saved)
        return saved


def _check_if_match(job: LibraryJob, if_match: int | None) -> None:
    if if_match is not None and if_match != job.job_version:
        raise PreconditionFailed(
            f"The job is at version {job.job_version}, not {if_match}", current_version=job.job_version
        )


def _retry_on_conflict(attempt: Callable[[], T]) -> T:
    """Runs a load-decide-save attempt again when another writer saved the same aggregate first.

    The back-off is jittered and grows: without it, the writer that has just saved tends to win the
    next race too. When every attempt lost, the caller gets a Conflict (409), never the store's error.
    """
    for tries in range(OCC_ATTEMPTS):
        try:
            return attempt()
        except IntegrityError:
            ceiling = min(OCC_BACKOFF_MAX_S, OCC_BACKOFF_S * 2**tries)
            time.sleep(random.uniform(0, ceiling))  # noqa: S311 (jitter, not secrecy)
    raise Conflict("The item was changed by other writers at the same time; try again")
