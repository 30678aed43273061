"""The runs read model (SPEC §2.6): each run's `RunDto`, encoded once when an event changes it.

A job's runs are kept in request order (`requestedAt`, then run id), and served newest first in pages
with an opaque cursor. Only the latest `RUNS_KEPT_PER_JOB` runs of each job are kept: when a new run
makes more, the oldest finished ones are dropped (a queued or running run never is). The full history
stays in the event log. A deleted job's runs are dropped with it.

A row keeps only its ready JSON bytes and what ordering and retention need; an event that changes the run
decodes the bytes, changes the DTO and encodes it again (runs change a few times each, and are read far
more often than that).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

import msgspec

from contracts.runs import FINAL_RUN_STATES, RunDto, RunProgressDto, RunSkippedDto
from projections.catalog import BadCursor, decode_cursor, encode_cursor
from projections.rows import ViewRow
from service.domain.jobs import PROGRESS_KEYS, SKIP_REASONS, LibraryJob

RUNS_KEPT_PER_JOB: Final = 100
"""How many runs of each job the read model keeps (the oldest finished ones go first)."""
_STAMP: Final = "%Y-%m-%dT%H:%M:%S.%fZ"  # fixed width: the text sorts as the instants do
_encode = msgspec.json.encode
_decode = msgspec.json.Decoder(RunDto).decode

RunKey = tuple[str, str]
"""A run's place among its job's runs: (`requestedAt` as fixed-width UTC text, run id)."""


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _run_key(requested_at: datetime, run_id: UUID) -> RunKey:
    # `_STAMP`'s text (for years 1000-9999), made faster: a replay makes one key per run
    return _utc(requested_at).isoformat(timespec="microseconds")[:26] + "Z", str(run_id)


def _decode_run_cursor(cursor: str) -> RunKey:
    """A cursor handed out by `runs_page_json`; `BadCursor` (400) for anything else."""
    stamp, run_id = decode_cursor(cursor)
    try:
        datetime.strptime(stamp, _STAMP)
        UUID(run_id)
    except ValueError as e:
        raise BadCursor(f"invalid cursor {cursor!r}") from e
    return stamp, run_id


@dataclass(slots=True)
class RunRow:
    id: UUID
    job_id: UUID
    library_id: UUID
    key: RunKey
    final: bool  # it has a final status (it may be dropped by retention)
    json: bytes  # its RunDto
    # its RunDto as last stored, while it is not final: the next change (a run changes a few times in a
    # row, then never again) need not decode it; only runs in flight keep one
    open_dto: RunDto | None = None

    def dto(self) -> RunDto:
        """The run's DTO, to change and `store`."""
        return self.open_dto if self.open_dto is not None else _decode(self.json)

    def store(self, dto: RunDto, *, defer: bool = False) -> None:
        """Takes the run's new DTO; `defer`: keeps it to be encoded later (`encode`), not now."""
        self.final = dto.status in FINAL_RUN_STATES
        if defer:
            self.open_dto = dto
        else:
            self.json = _encode(dto)
            self.open_dto = None if self.final else dto


_PROGRESSING = (LibraryJob.RunStarted, LibraryJob.RunProgressed)


def _row_key(row: RunRow) -> RunKey:
    return row.key


_NO_PROGRESS: Final = dict.fromkeys(PROGRESS_KEYS, 0)
_NO_SKIPS: Final = dict.fromkeys(SKIP_REASONS, 0)


def _progress(counts: dict[str, int]) -> RunProgressDto:
    """The counts as the DTO has them: every key (0 when missing), integers."""
    if not counts:
        return RunProgressDto(**_NO_PROGRESS)
    try:  # the usual case, every key with an integer, four times faster
        return msgspec.convert(counts, RunProgressDto)
    except msgspec.ValidationError:
        return RunProgressDto(**{key: int(counts.get(key, 0)) for key in PROGRESS_KEYS})


def _skipped(counts: dict[str, int]) -> RunSkippedDto:
    if not counts:
        return RunSkippedDto(**_NO_SKIPS)
    try:
        return msgspec.convert(counts, RunSkippedDto)
    except msgspec.ValidationError:
        return RunSkippedDto(**{key: int(counts.get(key, 0)) for key in SKIP_REASONS})


@dataclass
class RunsView:
    """Pure state: apply job events in store order; read ready-encoded JSON; dump and restore rows.

    `library_of` tells the library of a live job (None: unknown or deleted): run events do not carry it,
    and a run of a job that is not live is not kept.
    """

    library_of: Callable[[UUID], UUID | None]
    rows: dict[UUID, RunRow] = field(default_factory=dict)  # run id → row
    by_job: dict[UUID, list[RunRow]] = field(default_factory=dict)  # job id → rows, in `key` order
    # while not None, changed rows keep their DTO, noted here, for `encode_deferred` to encode once each
    # (a replay changes a run's row four times and needs its bytes only at the end)
    deferred: set[UUID] | None = None

    def apply(self, event: Any) -> list[RunRow]:
        """Applies one stored event; returns the rows it changed or removed (a removed row is no longer
        in `rows`): the run's own, and those that retention or a job's deletion dropped."""
        if isinstance(event, LibraryJob.RunRequested):
            return self._requested(event)
        if isinstance(event, _PROGRESSING):
            return self._progressed(event)
        if isinstance(event, LibraryJob.RunFinished):
            return self._finished(event)
        if isinstance(event, LibraryJob.Deleted):
            removed = self.by_job.pop(event.originator_id, [])
            for row in removed:
                del self.rows[row.id]
            return removed
        return []

    def _requested(self, event: LibraryJob.RunRequested) -> list[RunRow]:
        library_id = self.library_of(event.originator_id)
        if library_id is None or event.run_id in self.rows:
            return []
        dto = RunDto(
            id=event.run_id,
            job_id=event.originator_id,
            library_id=library_id,
            trigger=event.trigger,
            scheduled_for=None if event.scheduled_for is None else _utc(event.scheduled_for),
            requested_at=_utc(event.requested_at),
            started_at=None,
            finished_at=None,
            status="queued",
            message=None,
            progress=_progress({}),
            skipped=_skipped({}),
            fields_changed=0,
            attempt=0,
        )
        return self._insert(dto)

    def _progressed(self, event: LibraryJob.RunStarted | LibraryJob.RunProgressed) -> list[RunRow]:
        row = self.rows.get(event.run_id)
        if row is None or row.final or row.job_id != event.originator_id:
            return []  # a run this view does not hold (or no longer does), or one that is over
        dto = row.dto()
        if isinstance(event, LibraryJob.RunStarted):
            dto.status = "running"
            dto.attempt = max(dto.attempt, event.attempt)
            if dto.started_at is None:  # a resumed run keeps the start of its first attempt
                dto.started_at = _utc(event.started_at)
        else:
            dto.progress = _progress(event.progress)
            dto.skipped = _skipped(event.skipped)
            dto.fields_changed = event.fields_changed
        self._store(row, dto)
        return [row]

    def _finished(self, event: LibraryJob.RunFinished) -> list[RunRow]:
        row = self.rows.get(event.run_id)
        if row is None:
            library_id = self.library_of(event.originator_id)
            if library_id is None:
                return []
            started_at = _utc(event.started_at)
            dto = RunDto(  # a run executed elsewhere, recorded without a request here
                id=event.run_id,
                job_id=event.originator_id,
                library_id=library_id,
                trigger="manual",
                scheduled_for=None,
                requested_at=started_at,
                started_at=started_at,
                finished_at=_utc(event.finished_at),
                status=event.status,
                message=event.message,
                progress=_progress(event.counts),
                skipped=_skipped({}),
                fields_changed=0,
                attempt=1,
            )
            return self._insert(dto)
        if row.final or row.job_id != event.originator_id:
            return []
        dto = row.dto()
        dto.status = event.status
        dto.message = event.message
        dto.finished_at = _utc(event.finished_at)
        if dto.started_at is None:
            dto.started_at = _utc(event.started_at)
        dto.attempt = max(dto.attempt, 1)
        dto.progress = _progress(event.counts)
        self._store(row, dto)
        return [row]

    def _store(self, row: RunRow, dto: RunDto) -> None:
        if self.deferred is None:
            row.store(dto)
        else:
            row.store(dto, defer=True)
            self.deferred.add(row.id)

    def encode_deferred(self) -> None:
        """Encodes the rows changed since deferring began, and stops deferring."""
        deferred, self.deferred = self.deferred, None
        for run_id in deferred or ():
            row = self.rows.get(run_id)  # None: dropped meanwhile (retention, the job deleted)
            if row is not None and row.open_dto is not None:
                row.store(row.open_dto)

    def _insert(self, dto: RunDto) -> list[RunRow]:
        """Adds a new run in its place, then drops the oldest finished runs beyond the job's quota."""
        row = RunRow(dto.id, dto.job_id, dto.library_id, _run_key(dto.requested_at, dto.id), False, b"")
        self._store(row, dto)
        self.rows[row.id] = row
        runs = self.by_job.setdefault(row.job_id, [])
        bisect.insort(runs, row, key=_row_key)
        touched = [row]
        excess = len(runs) - RUNS_KEPT_PER_JOB
        if excess > 0:
            dropped = [old for old in runs if old.final][:excess]
            for old in dropped:
                runs.remove(old)
                del self.rows[old.id]
            touched += [old for old in dropped if old is not row]
        return touched

    # --- queries ------------------------------------------------------------------------------------

    def runs_page_json(self, library_id: UUID, job_id: UUID, cursor: str | None, limit: int) -> bytes | None:
        """A `ListRunsResponse` page, newest first: the `limit` runs before `cursor` (from the newest when
        None). None when the job is not a live job of this library."""
        if self.library_of(job_id) != library_id:
            return None
        runs = self.by_job.get(job_id, [])
        end = bisect.bisect_left(runs, _decode_run_cursor(cursor), key=_row_key) if cursor else len(runs)
        start = max(0, end - max(limit, 0))
        chosen = runs[start:end]
        next_cursor = encode_cursor(chosen[0].key) if start > 0 and chosen else None
        body = b",".join(row.json for row in reversed(chosen))
        return b'{"runs":[%s],"nextCursor":%s}' % (body, _encode(next_cursor))

    def run_json(self, library_id: UUID, job_id: UUID, run_id: UUID) -> bytes | None:
        """The run's `RunDto`; None when it is not a kept run of this job of this library."""
        row = self.rows.get(run_id)
        if row is None or row.job_id != job_id or row.library_id != library_id:
            return None
        return row.json

    # --- persistence --------------------------------------------------------------------------------

    def row(self, run_id: UUID) -> ViewRow | None:
        found = self.rows.get(run_id)
        return None if found is None else ViewRow("run", str(run_id), str(found.library_id), found.json)

    def dump(self) -> list[ViewRow]:
        return [ViewRow("run", str(r.id), str(r.library_id), r.json) for r in self.rows.values()]

    def restore(self, row: ViewRow) -> None:
        """Rebuilds a run from its persisted DTO bytes (which it keeps as they are)."""
        dto = _decode(row.payload)
        run = RunRow(
            dto.id,
            dto.job_id,
            dto.library_id,
            _run_key(dto.requested_at, dto.id),
            dto.status in FINAL_RUN_STATES,
            row.payload,
        )
        old = self.rows.pop(run.id, None)
        runs = self.by_job.setdefault(run.job_id, [])
        if old is not None:
            runs.remove(old)
        self.rows[run.id] = run
        bisect.insort(runs, run, key=_row_key)
