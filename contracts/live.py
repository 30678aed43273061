"""Live events on the wire (SPEC §2.2 `GET /events`): the `data` of each Server-Sent Events message.

Each message is `event: <type>`, `id: <store position>` (none for `dropped`) and `data: <one line of
JSON>`, the JSON being one of these Structs; `type` repeats the SSE event name.
"""

from __future__ import annotations

from uuid import UUID

import msgspec

from contracts.jobs import LibraryJobDto
from contracts.runs import RunDto

JOB_CHANGED = "job.changed"
RUN_CHANGED = "run.changed"
DROPPED = "dropped"
LIVE_EVENT_TYPES = (JOB_CHANGED, RUN_CHANGED)  # what a subscriber can choose (`?types=`)


class JobChanged(msgspec.Struct, tag=JOB_CHANGED, tag_field="type", rename="camel", kw_only=True):
    """A job was created, changed or deleted; `job` is its `LibraryJobDto` after the change (null when
    `deleted`). One message per job per batch of events applied together, so one request's change (a PATCH
    that renames and enables) arrives as one message."""

    position: int
    library_id: UUID
    job_id: UUID
    deleted: bool
    job: LibraryJobDto | None


class RunChanged(msgspec.Struct, tag=RUN_CHANGED, tag_field="type", rename="camel", kw_only=True):
    """A run of a job was requested, started (or resumed), progressed or finished; `run` is its `RunDto`
    after the change, as `GET …/runs/{runId}` serves it. One message per run per batch of events applied
    together, after the `job.changed` messages of that batch. `run` is null when the run left the read
    model: its job was deleted, or it was dropped as one of the oldest finished runs beyond the 100 kept
    per job."""

    position: int
    library_id: UUID
    job_id: UUID
    run_id: UUID
    run: RunDto | None


class StreamDropped(msgspec.Struct, tag=DROPPED, tag_field="type", kw_only=True):
    """The last message of a stream whose client fell too far behind (the server keeps a bounded backlog
    per client): changes may have been missed, so reconnect and reload what you show."""

    message: str


LiveEvent = JobChanged | RunChanged | StreamDropped
