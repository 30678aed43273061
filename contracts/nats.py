"""NATS on the wire (SPEC §5): subjects, streams, command requests and replies, event messages.

Commands are request/reply on ``{prefix}.cmd.<command>``; a command's payload is the HTTP body of the
same command plus the ids HTTP takes from the path, so every command Struct extends (or mirrors) its
HTTP request Struct and rejects unknown keys like it. Replies are `CommandOk` or `CommandError`.

Messages that libjobs *publishes* (`EventEnvelope`, `JobRunRequested`, `MetadataRefreshed`) do not
forbid unknown fields: a consumer built against this version keeps decoding messages of a newer
producer that added a field (rolling upgrades). Requests, which libjobs *receives*, are strict.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final, Literal, get_args
from uuid import UUID

import msgspec

from contracts.catalog import UpsertBookRequest, UpsertLibraryRequest, UpsertSeriesRequest
from contracts.errors import ErrorResponse
from contracts.jobs import (
    CreateLibraryJobRequest,
    LibraryJobConfigDto,
    LibraryJobConfigInput,
    PatchLibraryJobRequest,
)

# ------------------------------------------------------------------------------------------------
# Streams and consumers

EVENTS_STREAM: Final = "LIBJOBS_EVENTS"
"""Every stored event (``{p}.evt.>``) and every metadata refresh (``{p}.metadata.refreshed.>``)."""
RUNS_STREAM: Final = "LIBJOBS_RUNS"
"""The work queue of run requests (``{p}.run.requested.>``)."""
EXECUTOR_DURABLE: Final = "refresh-executor"
"""The durable pull consumer of `RUNS_STREAM` that the refresh executors share."""

# ------------------------------------------------------------------------------------------------
# Event type names

JobEventType = Literal[
    "JobCreated",
    "JobUpdated",
    "JobEnabled",
    "JobDisabled",
    "JobDeleted",
    "RunRequested",
    "RunStarted",
    "RunProgressed",
    "RunFinished",
    "FireSkipped",
]
CatalogEventType = Literal[
    "LibraryRegistered",
    "LibraryRenamed",
    "LibraryDeleted",
    "SeriesUpserted",
    "SeriesChanged",
    "SeriesDeleted",
    "SeriesRefreshed",
    "BookUpserted",
    "BookChanged",
    "BookDeleted",
    "BookRefreshed",
]
AggregateType = Literal["job", "library", "series", "book"]

JOB_EVENT_TYPES: Final[tuple[str, ...]] = get_args(JobEventType)
CATALOG_EVENT_TYPES: Final[tuple[str, ...]] = get_args(CatalogEventType)

AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
"""An instant with its UTC offset (RFC 3339, e.g. ``2026-11-27T04:00:09Z``); a naive time is rejected."""

RunTrigger = Literal["schedule", "manual", "catchup"]
FinalRunStatus = Literal["success", "partial", "failure", "cancelled"]
ItemType = Literal["series", "book"]
FieldSkipReason = Literal["locked", "not_permitted", "unchanged"]

# ------------------------------------------------------------------------------------------------
# Job commands


class CreateJobCommand(CreateLibraryJobRequest, kw_only=True):
    """Create a job (``POST /libraries/{libraryId}/jobs``); the reply's result is the `LibraryJobDto`."""

    library_id: UUID


class UpdateJobCommand(PatchLibraryJobRequest, kw_only=True):
    """Change a job (``PATCH .../jobs/{jobId}``); the reply's result is the `LibraryJobDto`.

    Like the HTTP body, `timezone` is tri-state: absent keeps, null clears, a value sets.
    `ifMatch` is the version the caller expects (HTTP's ``If-Match``); a stale one gives status 412.
    """

    library_id: UUID
    job_id: UUID
    if_match: int | None = None


class DeleteJobCommand(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """Delete a job (``DELETE .../jobs/{jobId}``); the reply's result is null. `ifMatch` as for updates."""

    library_id: UUID
    job_id: UUID
    if_match: int | None = None


class RunNowCommand(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """Run a job now (``POST .../jobs/{jobId}/run-now``); the reply's result is ``{"taskId": runId}``."""

    library_id: UUID
    job_id: UUID


class DryRunCommand(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """Plan a run without writing (``POST .../jobs/{jobId}/dry-run``); the result is a `DryRunResponse`.

    `configOverride` replaces the saved config for this plan only; `sampleSize` defaults to 5, and more than
    20 is capped at 20.
    """

    library_id: UUID
    job_id: UUID
    config_override: LibraryJobConfigInput | None = None
    sample_size: int | None = None


class RunCounts(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How many items a run planned and what became of them (the shape of `RunDto.progress`)."""

    planned: int = 0
    done: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0


class RecordRunCommand(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """Record the outcome of a run (``RecordRun``), requested by libjobs or executed outside it.

    The outcome of the job's run in flight ends that run (the job's `currentRunId` is null again).
    The reply's result is ``{"jobId", "runId", "status"}`` (`RecordRunResult`): the status recorded for the
    run. Recording the same `runId` again changes nothing, and answers the status recorded first. A
    `cancelled` run ends the run in flight but leaves the job's `lastRun*` fields as they were.
    """

    job_id: UUID
    run_id: UUID
    status: FinalRunStatus
    message: str | None = None
    started_at: AwareDatetime
    finished_at: AwareDatetime
    counts: RunCounts


class RecordRunResult(msgspec.Struct, rename="camel", kw_only=True):
    """The result of ``run.record``: the run and the status recorded for it."""

    job_id: UUID
    run_id: UUID
    status: FinalRunStatus


# ------------------------------------------------------------------------------------------------
# Catalog commands


class UpsertLibraryCommand(UpsertLibraryRequest, rename="camel", kw_only=True):
    """Register or rename a library (``PUT /libraries/{libraryId}``); the result is the `LibraryDto`."""

    library_id: UUID


class DeleteLibraryCommand(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """Delete a library and its jobs (``DELETE /libraries/{libraryId}``); the result is null."""

    library_id: UUID


class UpsertSeriesCommand(UpsertSeriesRequest, kw_only=True):
    """Describe a series (``PUT .../series/{seriesId}``); the reply's result is the `SeriesDto`."""

    library_id: UUID
    series_id: UUID


class DeleteSeriesCommand(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """Forget a series (``DELETE .../series/{seriesId}``); the reply's result is null."""

    library_id: UUID
    series_id: UUID


class UpsertBookCommand(UpsertBookRequest, kw_only=True):
    """Describe a book (``PUT .../books/{bookId}``); the reply's result is the `BookDto`."""

    library_id: UUID
    book_id: UUID


class DeleteBookCommand(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """Forget a book (``DELETE .../books/{bookId}``); the reply's result is null."""

    library_id: UUID
    book_id: UUID


COMMANDS: Final[dict[str, type[msgspec.Struct]]] = {
    "job.create": CreateJobCommand,
    "job.update": UpdateJobCommand,
    "job.delete": DeleteJobCommand,
    "job.run_now": RunNowCommand,
    "job.dry_run": DryRunCommand,
    "run.record": RecordRunCommand,
    "catalog.library.upsert": UpsertLibraryCommand,
    "catalog.library.delete": DeleteLibraryCommand,
    "catalog.series.upsert": UpsertSeriesCommand,
    "catalog.series.delete": DeleteSeriesCommand,
    "catalog.book.upsert": UpsertBookCommand,
    "catalog.book.delete": DeleteBookCommand,
}
"""Command name -> request Struct. The subject of a command is ``{prefix}.cmd.{name}``."""

IDEMPOTENCY_KEY_HEADER: Final = "Idempotency-Key"
"""Optional command header, with the semantics of the HTTP header of the same name."""
ACTOR_HEADER: Final = "Libjobs-Actor"
"""Optional command header: who sends the command (1-128 printable characters), recorded on the events as
``nats:<actor>`` (default ``nats``)."""
REQUEST_ID_HEADER: Final = "Libjobs-Request-Id"
"""Optional command header: the request id recorded on the events (1-128 of ``[A-Za-z0-9._:-]``)."""
MSG_ID_HEADER: Final = "Nats-Msg-Id"
"""JetStream de-duplication header: the event id of an event, the run id of a run request."""

# ------------------------------------------------------------------------------------------------
# Replies


class CommandOk(msgspec.Struct, kw_only=True):
    """A command's success. `result` is the body HTTP would answer (null where HTTP answers 204)."""

    ok: Literal[True]
    result: Any  # the server may put pre-encoded JSON here as a `msgspec.Raw`


class CommandError(msgspec.Struct, kw_only=True):
    """A command's failure: the HTTP error body, and the status HTTP would have answered."""

    ok: Literal[False]
    error: ErrorResponse
    status: int


class _ReplyHead(msgspec.Struct):
    ok: bool


def decode_reply(data: bytes | bytearray | memoryview) -> CommandOk | CommandError:
    """Decode a command reply into the right Struct (they share no tag msgspec could dispatch on)."""
    head = msgspec.json.decode(data, type=_ReplyHead)
    if head.ok:
        return msgspec.json.decode(data, type=CommandOk)
    return msgspec.json.decode(data, type=CommandError)


# ------------------------------------------------------------------------------------------------
# Events


class EventEnvelope(msgspec.Struct, rename="camel", kw_only=True):
    """One stored event as published on ``{p}.evt....`` (and served as the audit log's `AuditEventDto`).

    - `type` is the event's name (`JOB_EVENT_TYPES` or `CATALOG_EVENT_TYPES`); `data` its fields.
    - `aggregateType`/`aggregateId` name what the event is about, by the id clients know it by (the job id,
      or the library server's library, series or book id); `version` is its version in that stream and
      `position` its place in the global order of all events.
    - Job events: `aggregateType` ``"job"``, `jobId` = `aggregateId`, `libraryId` the job's library.
    - Catalog events: `jobId` is null, `libraryId` is the library (for library events, = `aggregateId`),
      `aggregateType` ``"library"``, ``"series"`` or ``"book"``.
    - `actor`: API key id, JWT subject, ``scheduler``, ``executor`` or the NATS caller; null if unknown.

    The NATS ``Nats-Msg-Id`` header of the message is `eventId`.
    """

    type: str
    event_id: UUID
    job_id: UUID | None
    library_id: UUID | None
    version: int
    position: int
    occurred_at: AwareDatetime
    actor: str | None
    data: dict[str, Any]
    aggregate_id: UUID
    aggregate_type: AggregateType


class JobRunRequested(msgspec.Struct, tag="JobRunRequested", tag_field="type", rename="camel", kw_only=True):
    """A run to execute, on the work queue ``{p}.run.requested.{config type}``.

    ``Nats-Msg-Id`` is `runId` (for scheduled runs, ``uuid5(jobId, scheduledFor)``). `config` is the job's
    config when the run was requested; `scheduledFor` is the nominal fire instant (null for manual runs).
    """

    run_id: UUID
    job_id: UUID
    library_id: UUID
    trigger: RunTrigger
    scheduled_for: AwareDatetime | None
    config: LibraryJobConfigDto


class FieldChange(msgspec.Struct):
    before: Any
    after: Any


class SkippedField(msgspec.Struct):
    field: str
    reason: FieldSkipReason


class MetadataRefreshed(
    msgspec.Struct, tag="MetadataRefreshed", tag_field="type", rename="camel", kw_only=True
):
    """An item a run changed, on ``{p}.metadata.refreshed.{libraryId}``, for the library server to apply.

    `changes` maps each written field to its value before and after; `skipped` lists the selected fields
    that were not written, and why.
    """

    run_id: UUID
    job_id: UUID
    library_id: UUID
    item_type: ItemType
    item_id: UUID
    provider: str
    external_id: str
    changes: dict[str, FieldChange]
    skipped: list[SkippedField] = msgspec.field(default_factory=list)


class SchedulerPresence(msgspec.Struct, rename="camel", kw_only=True):
    """A scheduler replica saying it is alive (every second), or leaving, on ``{p}.scheduler.presence``.

    Replicas share the jobs out among the members they hear from (docs/architecture.md, "Sharing fires
    out"); who claims a fire first is all it decides, never whether a fire happens once.
    """

    member: str  # the replica's id, new at each start
    leaving: bool = False


# ------------------------------------------------------------------------------------------------
# Subjects


def _token(value: UUID | str, what: str) -> str:
    if isinstance(value, UUID):  # always a valid token (hex and dashes); the relay names every event
        return str(value)
    text = value
    if not text or "." in text or any(c.isspace() for c in text):
        raise ValueError(f"invalid NATS subject token for {what}: {text!r}")
    return text


@dataclass(frozen=True, slots=True)
class Subjects:
    """Every subject of SPEC §5 under one prefix.

    Id arguments take a UUID, or a string token: ``"*"``/``">"`` for subscriptions, or a placeholder
    such as ``"{libraryId}"`` for documents.
    """

    prefix: str = "libjobs"

    def __post_init__(self) -> None:
        if not self.prefix or self.prefix.startswith(".") or self.prefix.endswith("."):
            raise ValueError(f"invalid NATS subject prefix: {self.prefix!r}")
        if any(c.isspace() or c in "*>" for c in self.prefix):
            raise ValueError(f"invalid NATS subject prefix: {self.prefix!r}")

    # commands
    def command(self, name: str) -> str:
        """``{p}.cmd.{name}`` for a name of `COMMANDS`, e.g. ``job.create``."""
        if name not in COMMANDS:
            raise KeyError(f"unknown command: {name!r}")
        return f"{self.prefix}.cmd.{name}"

    def command_subjects(self) -> dict[str, str]:
        """Command name -> subject, for every command."""
        return {name: self.command(name) for name in COMMANDS}

    @property
    def all_commands(self) -> str:
        return f"{self.prefix}.cmd.>"

    # events
    def job_events(self, library_id: UUID | str, job_id: UUID | str) -> str:
        return f"{self.prefix}.evt.job.{_token(library_id, 'libraryId')}.{_token(job_id, 'jobId')}"

    def library_events(self, library_id: UUID | str) -> str:
        return f"{self.prefix}.evt.library.{_token(library_id, 'libraryId')}"

    def series_events(self, library_id: UUID | str, series_id: UUID | str) -> str:
        return f"{self.prefix}.evt.series.{_token(library_id, 'libraryId')}.{_token(series_id, 'seriesId')}"

    def book_events(self, library_id: UUID | str, book_id: UUID | str) -> str:
        return f"{self.prefix}.evt.book.{_token(library_id, 'libraryId')}.{_token(book_id, 'bookId')}"

    def aggregate_events(self, aggregate_type: AggregateType, library_id: UUID, aggregate_id: UUID) -> str:
        """The subject of an event of the given aggregate (for a library, `aggregate_id` = `library_id`)."""
        if aggregate_type == "job":
            return self.job_events(library_id, aggregate_id)
        if aggregate_type == "series":
            return self.series_events(library_id, aggregate_id)
        if aggregate_type == "book":
            return self.book_events(library_id, aggregate_id)
        return self.library_events(library_id)

    @property
    def all_events(self) -> str:
        return f"{self.prefix}.evt.>"

    @property
    def all_job_events(self) -> str:
        return f"{self.prefix}.evt.job.>"

    # runs and refreshes
    def run_requested(self, job_type: str) -> str:
        """``{p}.run.requested.{type}``, the type being the config's (e.g. ``metadata_refresh``)."""
        return f"{self.prefix}.run.requested.{_token(job_type, 'type')}"

    def metadata_refreshed(self, library_id: UUID | str) -> str:
        return f"{self.prefix}.metadata.refreshed.{_token(library_id, 'libraryId')}"

    @property
    def scheduler_presence(self) -> str:
        return f"{self.prefix}.scheduler.presence"

    # streams
    @property
    def events_stream_subjects(self) -> tuple[str, ...]:
        """The subjects of `EVENTS_STREAM`."""
        return (self.all_events, f"{self.prefix}.metadata.refreshed.>")

    @property
    def runs_stream_subjects(self) -> tuple[str, ...]:
        """The subjects of `RUNS_STREAM`."""
        return (f"{self.prefix}.run.requested.>",)
