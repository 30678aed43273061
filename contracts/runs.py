"""Runs on the wire (SPEC §2.6): `RunDto`, as `GET …/jobs/{jobId}/runs[/{runId}]` and the live
`run.changed` message serve it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

# The same types as `contracts.nats` declares (kept apart, so that neither module needs the other).
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
"""An instant with its UTC offset, written in UTC with a `Z` suffix (e.g. ``2026-11-27T04:00:09Z``)."""
RunTrigger = Literal["schedule", "manual", "catchup"]
RunState = Literal["queued", "running", "success", "partial", "failure", "cancelled"]
"""`queued` (requested), `running` (an executor started it), then one final status."""
FINAL_RUN_STATES = frozenset({"success", "partial", "failure", "cancelled"})


class RunProgressDto(msgspec.Struct, kw_only=True):
    """Cumulative item counts: `done` = `succeeded` + `failed` so far, out of `planned`; `skipped` items
    were not asked for (the reasons are in `RunDto.skipped`)."""

    planned: int
    done: int
    succeeded: int
    failed: int
    skipped: int


class RunSkippedDto(msgspec.Struct, kw_only=True):
    """Skipped items by reason. The keys are the reasons' enum values (snake_case, as SPEC §2.6 writes
    them), not camelCase field names: this Struct is deliberately not renamed."""

    no_external_id: int
    recently_synced: int
    no_match: int
    locked_only: int


class RunDto(msgspec.Struct, rename="camel", kw_only=True):
    """One run of a job. Every key is always present; absent values are null.

    `startedAt` is when the first attempt started (null while queued) and `attempt` how many times an
    executor started the run (0 while queued; a resumed run counts up; a finished run counts at least 1).
    `finishedAt` and `message` are set once the run has a final status. A run recorded by another system
    (NATS `run.record`) without a request here has trigger `manual`, `scheduledFor` null and `requestedAt`
    equal to its `startedAt`.
    """

    id: UUID
    job_id: UUID
    library_id: UUID
    trigger: RunTrigger
    scheduled_for: AwareDatetime | None
    requested_at: AwareDatetime
    started_at: AwareDatetime | None
    finished_at: AwareDatetime | None
    status: RunState
    message: str | None
    progress: RunProgressDto
    skipped: RunSkippedDto
    fields_changed: int
    attempt: int


class ListRunsResponse(msgspec.Struct, rename="camel"):
    """A page of a job's runs, newest first; `nextCursor` is null on the last page."""

    runs: list[RunDto]
    next_cursor: str | None
