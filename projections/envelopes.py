"""Stored events as the world sees them: the `EventEnvelope` of SPEC §5/§8, its subject and its id.

The relay publishes these to NATS (and the audit routes will serve the same envelopes), so the mapping
lives in one pure place. An envelope is self-contained: `data` carries every field of the event in
camelCase (a job's definition as in `LibraryJobDto`, a catalog item's state as the library server sent
it), so a consumer can rebuild a job from its subject alone.

The event id is `uuid5(aggregate id, version)`: the same stored event always gets the same id, so a
relay that publishes it again after a crash is de-duplicated by JetStream (`Nats-Msg-Id`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID, uuid5

import msgspec
from eventsourcing.domain import Aggregate

from contracts.jobs import MetadataRefreshConfigDto
from contracts.nats import (
    AggregateType,
    EventEnvelope,
    FieldChange,
    JobRunRequested,
    MetadataRefreshed,
    SkippedField,
    Subjects,
)
from service.domain.catalog import Book, Library, Series
from service.domain.jobs import LibraryJob

# Aggregate class → (name in event types, aggregate type of the envelope)
_AGGREGATES: Final[tuple[tuple[type[Any], str, AggregateType], ...]] = (
    (LibraryJob, "Job", "job"),
    (Library, "Library", "library"),
    (Series, "Series", "series"),
    (Book, "Book", "book"),
)
_SELF_NAMED: Final = ("Run", "Fire")
_ENVELOPE_FIELDS: Final = frozenset({"originator_id", "originator_version", "timestamp", "actor"})
_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class Origin:
    """What only an aggregate's first event says: its library, and the id clients know it by (a job's
    id; the library server's library, series or book id, which the stored aggregate id is derived from)."""

    library_id: UUID
    public_id: UUID


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: where, its de-duplication id, and the encoded envelope."""

    subject: str
    msg_id: str
    payload: bytes


def event_id(aggregate_id: UUID, version: int) -> UUID:
    return uuid5(aggregate_id, str(version))


_KINDS: dict[type[Any], tuple[str, AggregateType]] = {}  # per event class: asked for every event


def _kind(event: Any) -> tuple[str, AggregateType]:
    event_class = type(event)
    found = _KINDS.get(event_class)
    if found is None:
        for aggregate, name, kind in _AGGREGATES:
            if isinstance(event, aggregate.Event):
                found = _KINDS[event_class] = (name, kind)
                break
        else:
            raise TypeError(f"not an event libjobs publishes: {event_class.__qualname__}")
    return found


def event_type(event: Any) -> str:
    """`JobCreated`, `LibraryRenamed`, `SeriesUpserted`, ...: aggregate name + event class name, except
    for a job's run and fire events, which name their subject themselves (`RunRequested`, `FireSkipped`)."""
    name, _ = _kind(event)
    own = type(event).__name__
    return own if own.startswith(_SELF_NAMED) else name + own


def origin_of(event: Any) -> Origin | None:
    """The origin, when this event says it (an aggregate's first event always does)."""
    if not isinstance(event, Aggregate.Created):
        return None
    _, kind = _kind(event)
    library_id: UUID = vars(event)["library_id"]  # every creation event of ours carries it
    public_id = event.originator_id if kind == "job" else getattr(event, "item_id", library_id)
    return Origin(library_id, public_id)


@functools.cache  # field names are few
def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _config(stored: dict[str, Any]) -> Any:
    """A stored job config in the wire's shape (`LibraryJobConfigDto`)."""
    config = dict(stored)
    del config["type"]  # the DTO's tag writes it
    return msgspec.to_builtins(MetadataRefreshConfigDto(**config))


def _definition(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored job definition in the wire's shape (the fields of `LibraryJobDto` it covers)."""
    return {
        "name": stored["name"],
        "cronSchedule": stored["cron_schedule"],
        "timezone": stored["timezone"],
        "config": _config(stored["config"]),
    }


_WIRE_SHAPES: Final = {"definition": _definition, "config": _config}  # a job's, and a run's (RunRequested)


def event_data(event: Any) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, value in vars(event).items():
        if name in _ENVELOPE_FIELDS:
            continue
        shape = _WIRE_SHAPES.get(name)
        data[_camel(name)] = value if shape is None else shape(value)
    return data


def envelope(position: int, event: Any, origin: Origin) -> EventEnvelope:
    _, kind = _kind(event)
    return EventEnvelope(
        type=event_type(event),
        event_id=event_id(event.originator_id, event.originator_version),
        job_id=origin.public_id if kind == "job" else None,
        library_id=origin.library_id,
        version=event.originator_version,
        position=position,
        occurred_at=event.timestamp,
        actor=event.actor,
        data=event_data(event),
        aggregate_id=origin.public_id,
        aggregate_type=kind,
    )


def outgoing(subjects: Subjects, position: int, event: Any, origin: Origin) -> Outgoing:
    """The message that publishes this stored event on its aggregate's subject."""
    message = envelope(position, event, origin)
    subject = subjects.aggregate_events(message.aggregate_type, origin.library_id, origin.public_id)
    return Outgoing(subject, str(message.event_id), _encode(message))


def derived_message(subjects: Subjects, event: Any, origin: Origin) -> Outgoing | None:
    """What a stored event means besides its envelope, if anything:

    - `RunRequested`: the `JobRunRequested` work item on `{p}.run.requested.<type>`, whose `Nats-Msg-Id`
      is the run id (the executor's idempotency key);
    - a refresh that changed a series or book: `MetadataRefreshed` on `{p}.metadata.refreshed.<libraryId>`,
      whose `Nats-Msg-Id` is `uuid5(run id, item id)` (one per item and run).
    """
    if isinstance(event, LibraryJob.RunRequested):
        config = dict(event.config)
        job_type = config.pop("type")
        message = JobRunRequested(
            run_id=event.run_id,
            job_id=origin.public_id,
            library_id=origin.library_id,
            trigger=event.trigger,
            scheduled_for=event.scheduled_for,
            config=MetadataRefreshConfigDto(**config),
        )
        return Outgoing(subjects.run_requested(job_type), str(event.run_id), _encode(message))
    if isinstance(event, Series.Refreshed | Book.Refreshed) and event.changes:
        refreshed = MetadataRefreshed(
            run_id=event.run_id,
            job_id=event.job_id,
            library_id=origin.library_id,
            item_type="book" if isinstance(event, Book.Refreshed) else "series",
            item_id=origin.public_id,
            provider=event.provider,
            external_id=event.external_id,
            changes={name: FieldChange(c["before"], c["after"]) for name, c in event.changes.items()},
            skipped=[SkippedField(s["field"], s["reason"]) for s in event.skipped],  # type: ignore[arg-type]
        )
        msg_id = uuid5(event.run_id, str(origin.public_id))
        return Outgoing(subjects.metadata_refreshed(origin.library_id), str(msg_id), _encode(refreshed))
    return None
