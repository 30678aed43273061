"""The audit log on the wire (SPEC §8): stored events as `AuditEventDto`, the envelope of SPEC §5."""

from __future__ import annotations

import msgspec

from contracts.nats import EventEnvelope


class AuditEventDto(EventEnvelope, kw_only=True):
    """One stored event: exactly the envelope the relay publishes to NATS (`EventEnvelope`).

    `position` is its place in the global order of all events (increasing, with gaps on PostgreSQL);
    `version` its version in its aggregate's stream; `data` every field of the event, camelCase."""


class AuditEventsResponse(msgspec.Struct, rename="camel"):
    """A page of the audit log in global order. `nextCursor` continues after the last event *scanned*, so
    a page may hold fewer than `limit` events (even none) while `nextCursor` is not null; it is null only
    once the end of the store is reached."""

    events: list[AuditEventDto]
    next_cursor: str | None


class JobHistoryResponse(msgspec.Struct, rename="camel"):
    """Every event of one job, oldest first (its deletion included)."""

    events: list[AuditEventDto]
