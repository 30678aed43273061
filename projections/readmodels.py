"""All in-memory read models of a process, advanced together in store order.

The position is the notification id of the last applied event; it moves in the same step as the models,
so a reader that sees position P sees every event up to P.

An owner may listen to job changes (`on_change`, live events): after each applied batch it hears one
`JobChange` per job the batch changed, in store order, on the thread that applies; then, likewise, one
`RunChange` per run the batch changed (`on_run_change`). Loading persisted rows (`restore`) and `reset`
are not changes anyone hears of.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple
from uuid import UUID

from projections.catalog import CatalogView
from projections.jobs import JobRow, JobsView
from projections.rows import ViewRow
from projections.runs import RunRow, RunsView
from service.ports import LibraryContents

log = logging.getLogger("libjobs.projections")


class JobChange(NamedTuple):
    position: int  # of the last event of the batch that changed the job
    library_id: UUID
    job_id: UUID
    json: bytes | None  # the job's LibraryJobDto after the change; None: deleted
    version: int  # the job's version after the change (deleted: the last version it had)


class RunChange(NamedTuple):
    position: int  # of the last event of the batch that changed the run
    library_id: UUID
    job_id: UUID
    run_id: UUID
    json: bytes | None  # the run's RunDto after the change; None: no longer kept (job deleted, retention)


class ReadModels:
    def __init__(
        self,
        *,
        default_timezone: str = "UTC",
        on_change: Callable[[JobChange], None] | None = None,
        on_run_change: Callable[[RunChange], None] | None = None,
    ) -> None:
        self._default_timezone = default_timezone
        self.on_change = on_change
        self.on_run_change = on_run_change
        # False: `apply` does not note the rows it changes (a replay that writes every row at the end)
        self.track_changes = True
        self.reset()

    def reset(self) -> None:
        """Back to the empty models of position 0."""
        self.jobs = JobsView(default_timezone=self._default_timezone)
        self.catalog = CatalogView()
        # Not a bound method of self: that would make the models one reference cycle, left for the cyclic
        # collector to walk (two seconds after a rebuild of 1,000,000 events) instead of freed at once.
        self.runs = RunsView(library_of=self.jobs.library_of)
        self._position = 0
        self._dirty: set[tuple[str, str]] = set()

    def apply(self, batch: Iterable[tuple[int, Any]]) -> int:
        listener, run_listener = self.on_change, self.on_run_change
        # job id → (position, row) of its last change; kept only while someone listens
        changed: dict[UUID, tuple[int, JobRow]] | None = None if listener is None else {}
        runs_changed: dict[UUID, tuple[int, RunRow]] | None = None if run_listener is None else {}
        dirty = self._dirty if self.track_changes else None
        for position, event in batch:
            if position <= self._position:
                continue  # already applied: following is at-least-once, applying is exactly-once
            row = self.jobs.apply(event)
            if row is not None:
                if dirty is not None:
                    dirty.add(("job", str(row.id)))
                if changed is not None:
                    changed.pop(row.id, None)  # re-inserted at the end: announced in store order
                    changed[row.id] = (position, row)
            for run in self.runs.apply(event):  # after the jobs: a run needs its job's library
                if dirty is not None:
                    dirty.add(("run", str(run.id)))
                if runs_changed is not None:
                    runs_changed.pop(run.id, None)
                    runs_changed[run.id] = (position, run)
            touched = self.catalog.apply(event)
            if touched and dirty is not None:
                dirty.update(touched)
            self._position = position
        if changed and listener is not None:
            self._announce(listener, changed.values())
        if runs_changed and run_listener is not None:
            self._announce_runs(run_listener, runs_changed.values())
        return self._position

    def _announce(self, listener: Callable[[JobChange], None], changes: Iterable[tuple[int, JobRow]]) -> None:
        """One change per job of the batch: a command's events (a PATCH's `Updated` and `Enabled`) arrive
        in one batch (its own offer; a store read splits them only at its size limit), so listeners do
        not hear of half a command."""
        for position, row in changes:
            json = row.json if row.id in self.jobs.rows else None
            try:
                listener(JobChange(position, row.library_id, row.id, json, row.version))
            except Exception:  # a listener must not stop the models from following the store
                log.exception("a job change listener failed")

    def _announce_runs(
        self, listener: Callable[[RunChange], None], changes: Iterable[tuple[int, RunRow]]
    ) -> None:
        """One change per run of the batch, in store order, after the jobs' changes."""
        for position, row in changes:
            json = row.json if row.id in self.runs.rows else None
            try:
                listener(RunChange(position, row.library_id, row.job_id, row.id, json))
            except Exception:  # a listener must not stop the models from following the store
                log.exception("a run change listener failed")

    # --- persistence --------------------------------------------------------------------------------

    def take_changes(self) -> tuple[int, list[ViewRow], list[tuple[str, str]]]:
        """The rows changed since the last call: (position, rows to write, (kind, key) to delete)."""
        upserts, deletes = [], []
        for kind, key in sorted(self._dirty):
            if kind == "job":
                row = self.jobs.row(UUID(key))
            elif kind == "run":
                row = self.runs.row(UUID(key))
            else:
                row = self.catalog.row(kind, key)
            if row is None:
                deletes.append((kind, key))
            else:
                upserts.append(row)
        self._dirty.clear()
        return self._position, upserts, deletes

    def forget_changes(self) -> None:
        self._dirty.clear()

    def keep_changes(self, upserts: Iterable[ViewRow], deletes: Iterable[tuple[str, str]]) -> None:
        """Changes taken by `take_changes` that were not written: the next `take_changes` has them again
        (with the rows as they are by then)."""
        self._dirty.update((row.kind, row.key) for row in upserts)
        self._dirty.update(deletes)

    def defer_encoding(self) -> None:
        """From now until `encode_deferred`, changed job and run rows are encoded once, at the end, not
        at every event: for a replay, which reads no row before it is over. Not for models that serve."""
        self.jobs.deferred, self.runs.deferred = set(), set()

    def encode_deferred(self) -> None:
        self.jobs.encode_deferred()
        self.runs.encode_deferred()

    def dump(self) -> tuple[int, list[ViewRow]]:
        return self._position, [*self.jobs.dump(), *self.catalog.dump(), *self.runs.dump()]

    def restore(self, position: int, rows: Iterable[ViewRow]) -> None:
        """Loads persisted rows (aliases first: other rows' events refer to them)."""
        for row in sorted(rows, key=lambda r: r.kind != "alias"):
            if row.kind == "job":
                self.jobs.restore(row)
            elif row.kind == "run":
                self.runs.restore(row)
            else:
                self.catalog.restore(row)
        self._position = position
        self._dirty.clear()

    # --- ReadModelQueries ---------------------------------------------------------------------------

    def position(self) -> int:
        return self._position

    def job_json(self, library_id: UUID, job_id: UUID) -> tuple[bytes, int] | None:
        return self.jobs.job_json(library_id, job_id)

    def jobs_json(self, library_id: UUID) -> bytes:
        return self.jobs.jobs_json(library_id)

    def job_cron(self, library_id: UUID, job_id: UUID) -> tuple[str, str] | None:
        return self.jobs.job_cron(library_id, job_id)

    def runs_page_json(self, library_id: UUID, job_id: UUID, cursor: str | None, limit: int) -> bytes | None:
        """A page of the job's runs, newest first; None when it is not a live job of this library."""
        if self.jobs.library_of(job_id) != library_id:
            return None
        return self.runs.runs_page_json(library_id, job_id, cursor, limit)

    def run_json(self, library_id: UUID, job_id: UUID, run_id: UUID) -> bytes | None:
        """The run's `RunDto`; None when it is not a kept run of a live job of this library."""
        if self.jobs.library_of(job_id) != library_id:
            return None
        return self.runs.run_json(library_id, job_id, run_id)

    def library_exists(self, library_id: UUID) -> bool:
        return self.catalog.library_exists(library_id)

    def libraries_json(self) -> bytes:
        return self.catalog.libraries_json()

    def library_json(self, library_id: UUID) -> bytes | None:
        row = self.catalog.libraries.get(library_id)
        return row.json if row is not None else None

    def series_json(self, library_id: UUID, series_id: UUID) -> bytes | None:
        return self.catalog.item_json(self.catalog.series, library_id, series_id)

    def series_page_json(self, library_id: UUID, cursor: str | None, limit: int) -> bytes:
        return self.catalog.series.page_json(library_id, cursor, limit, "series")

    def book_json(self, library_id: UUID, book_id: UUID) -> bytes | None:
        return self.catalog.item_json(self.catalog.books, library_id, book_id)

    def books_page_json(self, library_id: UUID, cursor: str | None, limit: int) -> bytes:
        return self.catalog.books.page_json(library_id, cursor, limit, "books")

    def library_contents(self, library_id: UUID) -> LibraryContents:
        return LibraryContents(
            job_ids=self.jobs.job_ids(library_id),
            series_ids=self.catalog.series.ids_in(library_id),
            book_ids=self.catalog.books.ids_in(library_id),
        )
