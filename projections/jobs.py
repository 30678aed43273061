"""The jobs read model: every live job's `LibraryJobDto`, encoded once when an event changes it.

`GET …/jobs/{id}` is a dict lookup of ready bytes; `GET …/jobs` joins a library's ready bytes once and
keeps the result until one of that library's jobs changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from contracts.jobs import LibraryJobDto, MetadataRefreshConfigDto
from projections.rows import ViewRow
from service.domain.cron import parse_cron
from service.domain.jobs import JobDefinition, LibraryJob, RefreshConfig
from service.domain.schedule import next_fire
from service.domain.timezones import zone

_encode = msgspec.json.encode


@dataclass
class JobRow:
    id: UUID
    library_id: UUID
    definition: JobDefinition
    enabled: bool
    created_at: datetime
    updated_at: datetime
    version: int
    last_run_at: datetime | None = None
    last_run_status: str | None = None
    last_run_message: str | None = None
    next_run_at: datetime | None = None
    current_run_id: UUID | None = None
    json: bytes = b""

    def to_dto(self) -> LibraryJobDto:
        config = self.definition.config.to_dict()
        del config["type"]  # the Struct's tag writes it
        return LibraryJobDto(
            id=self.id,
            library_id=self.library_id,
            name=self.definition.name,
            enabled=self.enabled,
            cron_schedule=self.definition.cron_schedule,
            timezone=self.definition.timezone,
            config=MetadataRefreshConfigDto(**config),
            last_run_at=self.last_run_at,
            last_run_status=self.last_run_status,  # type: ignore[arg-type]
            last_run_message=self.last_run_message,
            created_at=self.created_at,
            updated_at=self.updated_at,
            version=self.version,
            next_run_at=self.next_run_at,
            current_run_id=self.current_run_id,
        )


@dataclass
class JobsView:
    """Pure state: apply events in store order; read ready-encoded JSON; dump and restore rows."""

    default_timezone: str = "UTC"
    rows: dict[UUID, JobRow] = field(default_factory=dict)
    by_library: dict[UUID, dict[UUID, None]] = field(default_factory=dict)  # insertion = createdAt order
    _lists: dict[UUID, bytes] = field(default_factory=dict)
    # (cron, zone) → (asked after, first fire after that): jobs created in one minute share their next
    # fire, and finding it again costs more than this look-up
    _next_fires: dict[tuple[str, str], tuple[datetime, datetime | None]] = field(default_factory=dict)

    def apply(self, event: Any) -> JobRow | None:
        """Applies one stored event; returns the row of the job it changed, if any (a deleted job's row
        is no longer in `rows`)."""
        if not isinstance(event, LibraryJob.Event):
            return None
        job_id: UUID = event.originator_id
        if isinstance(event, LibraryJob.Created):
            row = JobRow(
                id=job_id,
                library_id=event.library_id,
                definition=JobDefinition.from_dict(event.definition),
                enabled=event.enabled,
                created_at=event.timestamp,
                updated_at=event.timestamp,
                version=event.job_version,
            )
            self.rows[job_id] = row
            self.by_library.setdefault(row.library_id, {})[job_id] = None
            row.next_run_at = self._next_run(row, after=event.timestamp)
        else:
            found = self.rows.get(job_id)
            if found is None:
                return None
            row = found
            if isinstance(event, LibraryJob.Deleted):
                del self.rows[job_id]
                self.by_library.get(row.library_id, {}).pop(job_id, None)
                self._lists.pop(row.library_id, None)
                return row
            if isinstance(event, LibraryJob.Updated | LibraryJob.Enabled | LibraryJob.Disabled):
                self._apply_change(row, event)
            elif isinstance(event, LibraryJob.RunRequested | LibraryJob.FireSkipped | LibraryJob.RunFinished):
                self._apply_run_event(row, event)
            else:
                return None
        row.json = _encode(row.to_dto())
        self._lists.pop(row.library_id, None)
        return row

    def _apply_change(
        self, row: JobRow, event: LibraryJob.Updated | LibraryJob.Enabled | LibraryJob.Disabled
    ) -> None:
        """A user's change: a new version, and the next fire after the change."""
        if isinstance(event, LibraryJob.Updated):
            row.definition = JobDefinition.from_dict(event.definition)
        else:
            row.enabled = isinstance(event, LibraryJob.Enabled)
        row.version = event.job_version
        row.updated_at = event.timestamp
        row.next_run_at = self._next_run(row, after=event.timestamp)

    def _apply_run_event(
        self, row: JobRow, event: LibraryJob.RunRequested | LibraryJob.FireSkipped | LibraryJob.RunFinished
    ) -> None:
        """Runs change neither `version` nor `updatedAt`. A claimed fire moves `nextRunAt` to the first fire
        after it (computed from the event, so a replay gives the same bytes)."""
        if isinstance(event, LibraryJob.RunFinished):
            if row.current_run_id == event.run_id:
                row.current_run_id = None
            # `lastRun*` tell of the finished run that finished last; a cancelled run is not one of them
            # (`lastRunStatus` has no such value, SPEC §2.3)
            if event.status != "cancelled" and (
                row.last_run_at is None or event.finished_at >= row.last_run_at
            ):
                row.last_run_at = event.finished_at
                row.last_run_status = event.status
                row.last_run_message = event.message
            return
        if isinstance(event, LibraryJob.RunRequested):
            row.current_run_id = event.run_id
        if event.scheduled_for is not None:
            row.next_run_at = self._next_run(row, after=event.scheduled_for)

    def _next_run(self, row: JobRow, after: datetime) -> datetime | None:
        if not row.enabled:
            return None
        definition = row.definition
        key = (definition.cron_schedule, definition.timezone or self.default_timezone)
        known = self._next_fires.get(key)
        # exact: the first fire after `asked` is also the first after any instant before it
        if known is not None and known[1] is not None and known[0] <= after < known[1]:
            return known[1]
        fire = next_fire(parse_cron(key[0], min_interval_s=0), zone(key[1]), after)
        if len(self._next_fires) >= 4096:
            self._next_fires.clear()
        self._next_fires[key] = (after, fire)
        return fire

    # --- queries ------------------------------------------------------------------------------------

    def job_json(self, library_id: UUID, job_id: UUID) -> tuple[bytes, int] | None:
        row = self.rows.get(job_id)
        if row is None or row.library_id != library_id:
            return None
        return row.json, row.version

    def job_cron(self, library_id: UUID, job_id: UUID) -> tuple[str, str] | None:
        """The job's cron and the time zone it is evaluated in (its own, else the server default)."""
        row = self.rows.get(job_id)
        if row is None or row.library_id != library_id:
            return None
        return row.definition.cron_schedule, row.definition.timezone or self.default_timezone

    def jobs_json(self, library_id: UUID) -> bytes:
        cached = self._lists.get(library_id)
        if cached is None:
            jobs = sorted((self.rows[i] for i in self.by_library.get(library_id, {})), key=_creation_order)
            cached = b'{"jobs":[' + b",".join(row.json for row in jobs) + b"]}"
            self._lists[library_id] = cached
        return cached

    def job_ids(self, library_id: UUID) -> tuple[UUID, ...]:
        return tuple(self.by_library.get(library_id, {}))

    # --- persistence --------------------------------------------------------------------------------

    def row(self, job_id: UUID) -> ViewRow | None:
        found = self.rows.get(job_id)
        return None if found is None else ViewRow("job", str(job_id), str(found.library_id), found.json)

    def dump(self) -> list[ViewRow]:
        return [ViewRow("job", str(r.id), str(r.library_id), r.json) for r in self.rows.values()]

    def restore(self, row: ViewRow) -> None:
        """Rebuilds a job's state from its persisted DTO bytes (which it keeps as they are)."""
        dto = msgspec.json.decode(row.payload, type=LibraryJobDto)
        config = RefreshConfig.from_dict(msgspec.structs.asdict(dto.config))
        job = JobRow(
            id=dto.id,
            library_id=dto.library_id,
            definition=JobDefinition(dto.name, dto.cron_schedule, dto.timezone, config),
            enabled=dto.enabled,
            created_at=dto.created_at,
            updated_at=dto.updated_at,
            version=dto.version,
            last_run_at=dto.last_run_at,
            last_run_status=dto.last_run_status,
            last_run_message=dto.last_run_message,
            next_run_at=dto.next_run_at,
            current_run_id=dto.current_run_id,
            json=row.payload,
        )
        self.rows[job.id] = job
        self.by_library.setdefault(job.library_id, {})[job.id] = None
        self._lists.pop(job.library_id, None)


def _creation_order(row: JobRow) -> tuple[datetime, str]:
    return row.created_at, str(row.id)
