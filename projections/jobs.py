"""The jobs read model: every live job's `LibraryJobDto`, encoded once when an event changes it.

`GET …/jobs/{id}` is a dict lookup of ready bytes; `GET …/jobs` joins a library's ready bytes once and
keeps the result until one of that library's jobs changes.

Rows share what is equal between jobs: one `JobDefinition` (and `RefreshConfig`) instance per distinct
value, one library id object per library, and, for rows restored from their bytes, equal instants. Most
jobs have the same config, many the same whole definition; a copy per job, with the strings decoded
with it, cost about 1.3 KB a job (130 MB for 100,000 jobs). Sharing is safe because these are immutable
and equal values encode to the same bytes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
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
_SHARED_MIN = 1024  # distinct definitions kept before the first look for ones no job has any more
_INSTANTS_MAX = 1024  # distinct instants remembered while restoring rows
_USER_CHANGES = (LibraryJob.Updated, LibraryJob.Enabled, LibraryJob.Disabled)
_RUN_EVENTS = (LibraryJob.RunRequested, LibraryJob.FireSkipped, LibraryJob.RunFinished)


@dataclass(slots=True)
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
    # the one instance of each distinct value that rows share (see the module's docstring); definitions
    # no row has any more are dropped when there are twice as many as after the last such clean-up
    _definitions: dict[JobDefinition, JobDefinition] = field(default_factory=dict)
    _configs: dict[RefreshConfig, RefreshConfig] = field(default_factory=dict)
    _shared_limit: int = _SHARED_MIN
    _library_ids: dict[UUID, UUID] = field(default_factory=dict)  # kept as long as `by_library`'s keys
    _instants: dict[datetime, datetime] = field(default_factory=dict)  # restored rows' instants
    # the last restored row's config, decoded and shared: the next row's is most often the same
    _restored_config: tuple[MetadataRefreshConfigDto, RefreshConfig] | None = None
    # while not None, changed rows are noted here and encoded by `encode_deferred`, once each: a replay
    # changes a job's row some 25 times and needs its bytes only at the end
    deferred: set[UUID] | None = None

    def apply(self, event: Any) -> JobRow | None:
        """Applies one stored event; returns the row of the job it changed, if any (a deleted job's row
        is no longer in `rows`)."""
        if not isinstance(event, LibraryJob.Event):
            return None
        job_id: UUID = event.originator_id
        if isinstance(event, LibraryJob.Created):
            row = JobRow(
                id=job_id,
                library_id=self._library_id(event.library_id),
                definition=self._shared(JobDefinition.from_dict(event.definition)),
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
                if self.deferred is not None:
                    self.deferred.discard(job_id)
                return row
            if isinstance(event, _USER_CHANGES):
                self._apply_change(row, event)
            elif isinstance(event, _RUN_EVENTS):
                self._apply_run_event(row, event)
            else:
                return None
        if self.deferred is None:
            row.json = _encode(row.to_dto())
        else:
            self.deferred.add(job_id)
        self._lists.pop(row.library_id, None)
        return row

    def encode_deferred(self) -> None:
        """Encodes the rows changed since deferring began, and stops deferring."""
        deferred, self.deferred = self.deferred, None
        for job_id in deferred or ():
            row = self.rows[job_id]
            row.json = _encode(row.to_dto())

    def _apply_change(
        self, row: JobRow, event: LibraryJob.Updated | LibraryJob.Enabled | LibraryJob.Disabled
    ) -> None:
        """A user's change: a new version, and the next fire after the change."""
        if isinstance(event, LibraryJob.Updated):
            row.definition = self._shared(JobDefinition.from_dict(event.definition))
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
                row.last_run_status = sys.intern(event.status)
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

    # --- shared values ------------------------------------------------------------------------------

    def _shared(self, definition: JobDefinition) -> JobDefinition:
        """The instance of this definition that rows share; a new one is made of shared parts too (its
        config, its strings), so that jobs that differ only by name share the rest."""
        found = self._definitions.get(definition)
        if found is not None:
            return found
        if len(self._definitions) >= self._shared_limit:
            self._forget_unused()
        config = self._configs.get(definition.config)
        if config is None:
            config = _interned_config(definition.config)
            self._configs[config] = config
        timezone = definition.timezone
        shared = JobDefinition(
            name=sys.intern(definition.name),
            cron_schedule=sys.intern(definition.cron_schedule),
            timezone=None if timezone is None else sys.intern(timezone),
            config=config,
        )
        self._definitions[shared] = shared
        return shared

    def _forget_unused(self) -> None:
        """Keeps only the definitions (and configs) of the rows: edited and deleted jobs' are dropped."""
        self._definitions = {row.definition: row.definition for row in self.rows.values()}
        self._configs = {d.config: d.config for d in self._definitions}
        self._shared_limit = max(_SHARED_MIN, 2 * len(self._definitions))

    def _library_id(self, library_id: UUID) -> UUID:
        return self._library_ids.setdefault(library_id, library_id)

    def _instant(self, instant: datetime) -> datetime:
        """An equal instant (same moment, same UTC offset: the same text) restored before, else this one."""
        found = self._instants.get(instant)
        if found is not None and (found.tzinfo is instant.tzinfo or found.utcoffset() == instant.utcoffset()):
            return found
        if len(self._instants) >= _INSTANTS_MAX:
            self._instants.clear()
        self._instants[instant] = instant
        return instant

    # --- queries ------------------------------------------------------------------------------------

    def library_of(self, job_id: UUID) -> UUID | None:
        row = self.rows.get(job_id)
        return None if row is None else row.library_id

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
        last = self._restored_config
        if last is not None and last[0] == dto.config:
            config = last[1]
        else:
            config = RefreshConfig.from_dict(msgspec.structs.asdict(dto.config))
        definition = self._shared(JobDefinition(dto.name, dto.cron_schedule, dto.timezone, config))
        self._restored_config = (dto.config, definition.config)
        created_at, status, next_run_at = self._instant(dto.created_at), dto.last_run_status, dto.next_run_at
        job = JobRow(
            id=dto.id,
            library_id=self._library_id(dto.library_id),
            definition=definition,
            enabled=dto.enabled,
            created_at=created_at,
            updated_at=self._instant(dto.updated_at),
            version=dto.version,
            last_run_at=dto.last_run_at,
            last_run_status=None if status is None else sys.intern(status),
            last_run_message=dto.last_run_message,
            next_run_at=None if next_run_at is None else self._instant(next_run_at),
            current_run_id=dto.current_run_id,
            json=row.payload,
        )
        self.rows[job.id] = job
        self.by_library.setdefault(job.library_id, {})[job.id] = None
        self._lists.pop(job.library_id, None)


def _creation_order(row: JobRow) -> tuple[datetime, str]:
    return row.created_at, str(row.id)


def _strings(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sys.intern(value) for value in values)


def _interned_config(config: RefreshConfig) -> RefreshConfig:
    """An equal config whose strings are the interpreter's interned ones (shared by all equal configs)."""
    return replace(
        config,
        provider=sys.intern(config.provider),
        scope=sys.intern(config.scope),
        field_groups=_strings(config.field_groups),
        extra_fields=_strings(config.extra_fields),
        book_field_groups=_strings(config.book_field_groups),
        book_extra_fields=_strings(config.book_extra_fields),
    )
