"""The audit log (SPEC §8): stored events as the envelopes the relay publishes, read from the event store.

Blocking: the HTTP routes call it in the store's thread pool (`run_sync`); `libjobs events` calls it
directly. Three readings:

- **A page of the global order** (`page`), filtered by job, library and event types. A job's events are
  read by its aggregate id (the store's primary key), so `jobId` never scans other events. Otherwise the
  page scans at most `SCAN_BOUND` positions after `after`: types through the store's own topic filter
  (`select_notifications(..., topics=)`), a library by each event's origin (its aggregate's first event,
  remembered). A page whose scan reached its bound before `limit` events matched ends there, with fewer
  events (even none), and the next page continues from where the scan stopped.
- **A job's history** (`job_history`): every event of the job, oldest first, also after its deletion.
- **A job at a version** (`job_at_version`): the job's events replayed through a fresh `JobsView` up to the
  change that made that version (with the other events of the same command), so the bytes are those the
  jobs read model served right after that change.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final
from uuid import UUID

import msgspec
from eventsourcing.application import Application
from eventsourcing.persistence import Notification
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import get_topic
from psycopg.sql import SQL, Identifier

from projections.envelopes import Origin, envelope, event_type, origin_of
from projections.jobs import JobsView
from service.domain.catalog import Book, Library, Series
from service.domain.errors import NotFound
from service.domain.jobs import LibraryJob
from service.ports import AuditFilter, AuditPage

SCAN_BOUND: Final = 10_000  # positions a page of `page` looks at, at most
READ_BATCH: Final = 1_000  # events read from the store at once
ORIGINS_KEPT: Final = 20_000  # aggregates whose origin is remembered (least recently used go first)
_AGGREGATES: Final = (LibraryJob, Library, Series, Book)
_JOB_CHANGES: Final = (LibraryJob.Created, LibraryJob.Updated, LibraryJob.Enabled, LibraryJob.Disabled)
_encode = msgspec.json.encode

AggregateReader = Callable[[UUID, int, int], Sequence[Notification]]


def event_topics() -> dict[str, frozenset[str]]:
    """Event type name (`JobCreated`, `RunFinished`, ...) → the topics its events are stored under: the
    class's topic and any older topic registered for the same class (eventsourcing's topic aliases)."""
    try:
        from eventsourcing.utils import _topic_cache as registered  # older topics of renamed classes
    except ImportError:  # pragma: no cover - another eventsourcing version
        registered = {}
    topics: dict[str, frozenset[str]] = {}
    for aggregate in _AGGREGATES:
        for value in vars(aggregate).values():
            if (
                isinstance(value, type)
                and issubclass(value, aggregate.Event)
                and value is not aggregate.Event
            ):
                # the envelope's own naming rule, asked of a bare instance (it only looks at the class)
                name = event_type(object.__new__(value))
                aliases = {topic for topic, target in list(registered.items()) if target is value}
                topics[name] = frozenset({get_topic(value), *aliases})
    return topics


class _Origins:
    """Aggregate id → `Origin`, thread-safe and bounded (see `relay.Origins`, which learns from decoded
    events; this one is asked about stored notifications, so that only the ones it keeps are decoded)."""

    def __init__(self, capacity: int = ORIGINS_KEPT) -> None:
        self._capacity = capacity
        self._known: OrderedDict[UUID, Origin] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, aggregate_id: UUID) -> Origin | None:
        with self._lock:
            origin = self._known.get(aggregate_id)
            if origin is not None:
                self._known.move_to_end(aggregate_id)
            return origin

    def put(self, aggregate_id: UUID, origin: Origin) -> None:
        with self._lock:
            self._known[aggregate_id] = origin
            self._known.move_to_end(aggregate_id)
            if len(self._known) > self._capacity:
                self._known.popitem(last=False)


class StoreAuditLog:
    """The `AuditLog` port over the application's recorder and mapper."""

    def __init__(self, app: Application[Any], *, default_timezone: str = "UTC") -> None:
        self._recorder = app.recorder
        self._mapper = app.mapper
        self._default_timezone = default_timezone
        self._topics = event_topics()
        self._origins = _Origins()
        self._aggregate_events = _aggregate_reader(self._recorder)

    def event_types(self) -> frozenset[str]:
        return frozenset(self._topics)

    # --- pages of the global order ------------------------------------------------------------------

    def page(self, after: int, limit: int, where: AuditFilter) -> AuditPage:
        topics: frozenset[str] | None = None
        if where.types is not None:
            unknown = where.types - self._topics.keys()
            if unknown:
                raise ValueError(f"unknown event types: {', '.join(sorted(unknown))}")
            topics = frozenset().union(*(self._topics[name] for name in where.types))
        if where.job_id is not None:
            return self._job_page(after, limit, where, topics)
        return self._scan(after, limit, where.library_id, topics)

    def _scan(
        self, after: int, limit: int, library_id: UUID | None, topics: frozenset[str] | None
    ) -> AuditPage:
        """At most `limit` events in the positions (after, after + SCAN_BOUND] that pass the filters."""
        end = int(self._recorder.max_notification_id() or 0)
        stop = min(after + SCAN_BOUND, end)
        events: list[bytes] = []
        position = after
        while position < stop:
            wanted = READ_BATCH if library_id is not None else limit - len(events)
            batch = self._recorder.select_notifications(
                position + 1, wanted, stop=stop, topics=sorted(topics) if topics else ()
            )
            for notification in batch:
                position = notification.id
                origin, event = self._origin(notification)
                if library_id is not None and origin.library_id != library_id:
                    continue
                events.append(self._envelope(notification, origin, event))
                if len(events) == limit:
                    return AuditPage(events, position, position >= end)
            if len(batch) < wanted:
                break  # nothing else that passes the topic filter up to `stop`
        return AuditPage(events, stop if stop > after else after, stop >= end)

    def _job_page(
        self, after: int, limit: int, where: AuditFilter, topics: frozenset[str] | None
    ) -> AuditPage:
        """A job's events after `after`, read by its aggregate id; at most `SCAN_BOUND` of them are looked
        at when a type filter passes few."""
        assert where.job_id is not None
        origin = self._job_origin(where.job_id)
        if origin is None or (where.library_id is not None and origin.library_id != where.library_id):
            return AuditPage([], after, True)
        events: list[bytes] = []
        position, scanned = after, 0
        while scanned < SCAN_BOUND:
            wanted = READ_BATCH if topics else limit - len(events)
            batch = self._aggregate_events(where.job_id, position, wanted)
            for notification in batch:
                position = notification.id
                scanned += 1
                if topics and notification.topic not in topics:
                    continue
                events.append(self._envelope(notification, origin, None))
                if len(events) == limit:
                    more = self._aggregate_events(where.job_id, position, 1)
                    return AuditPage(events, position, not more)
            if len(batch) < wanted:
                return AuditPage(events, position, True)
        return AuditPage(events, position, False)

    # --- one job ------------------------------------------------------------------------------------

    def job_history(self, library_id: UUID, job_id: UUID) -> list[bytes]:
        origin = self._job_origin(job_id)
        if origin is None or origin.library_id != library_id:
            raise NotFound("Job not found")
        return [self._envelope(n, origin, event) for n, event in self._job_events(job_id)]

    def job_at_version(self, library_id: UUID, job_id: UUID, version: int) -> bytes:
        origin = self._job_origin(job_id)
        if origin is None or origin.library_id != library_id:
            raise NotFound("Job not found")
        view = JobsView(default_timezone=self._default_timezone)
        found: bytes | None = None
        for _, event in self._job_events(job_id):
            made_it = isinstance(event, _JOB_CHANGES) and event.job_version == version
            if found is not None and not made_it:
                break  # the command that made `version` is over: what follows is later
            row = view.apply(event)
            if made_it and row is not None:
                found = row.json
            elif isinstance(event, LibraryJob.Deleted) or getattr(event, "job_version", 0) > version:
                break
        if found is None:
            raise NotFound(f"Job version {version} not found")
        return found

    def _job_events(self, job_id: UUID) -> Iterator[tuple[Notification, Any]]:
        """The job's stored events, oldest first, decoded; read in batches as they are consumed."""
        position = 0
        while True:
            batch = self._aggregate_events(job_id, position, READ_BATCH)
            for notification in batch:
                yield notification, self._mapper.to_domain_event(notification)
            if len(batch) < READ_BATCH:
                return
            position = batch[-1].id

    def _job_origin(self, job_id: UUID) -> Origin | None:
        """The job's library (and id), from its creation; None when no job was ever stored under this id."""
        origin = self._origins.get(job_id)
        if origin is not None:
            return origin
        first = self._recorder.select_events(job_id, lte=1, limit=1)
        if not first:
            return None
        event = self._mapper.to_domain_event(first[0])
        if not isinstance(event, LibraryJob.Created):
            return None  # another kind of aggregate: a job id is never one of theirs
        origin = origin_of(event)
        assert origin is not None
        self._origins.put(job_id, origin)
        return origin

    # --- envelopes ----------------------------------------------------------------------------------

    def _origin(self, notification: Notification) -> tuple[Origin, Any | None]:
        """The origin of a stored event's aggregate, and the event when it had to be decoded for it."""
        aggregate_id = notification.originator_id
        assert isinstance(aggregate_id, UUID)
        origin = self._origins.get(aggregate_id)
        if origin is not None:
            return origin, None
        if notification.originator_version == 1:
            event = self._mapper.to_domain_event(notification)
            creation = event
        else:
            event = None
            stored = self._recorder.select_events(aggregate_id, lte=1, limit=1)
            if not stored:
                raise LookupError(f"aggregate {aggregate_id} has no creation event")
            creation = self._mapper.to_domain_event(stored[0])
        origin = origin_of(creation)
        if origin is None:
            raise LookupError(f"aggregate {aggregate_id} has no creation event")
        self._origins.put(aggregate_id, origin)
        return origin, event

    def _envelope(self, notification: Notification, origin: Origin, event: Any | None) -> bytes:
        """The encoded envelope (the event decoded here unless it was already)."""
        if event is None:
            event = self._mapper.to_domain_event(notification)
        return _encode(envelope(notification.id, event, origin))


# --- one aggregate's notifications: its events with their positions, by the store's primary key ----------


def _aggregate_reader(recorder: Any) -> AggregateReader:
    """`(aggregate id, after position, limit)` → the aggregate's notifications after that position, in
    order. eventsourcing selects an aggregate's events without their positions, and notifications without
    an aggregate filter; this reads both at once, through the (aggregate id, version) primary key."""
    if isinstance(recorder, PostgresApplicationRecorder):
        return _postgres_reader(recorder)
    if isinstance(recorder, SQLiteApplicationRecorder):
        return _sqlite_reader(recorder)
    return _scanning_reader(recorder)


def _sqlite_reader(recorder: SQLiteApplicationRecorder) -> AggregateReader:
    statement = (
        f"SELECT rowid, * FROM {recorder.events_table_name} "  # noqa: S608 - the recorder's own table name
        "WHERE originator_id=? AND rowid>? ORDER BY originator_version LIMIT ?"
    )

    def read(aggregate_id: UUID, after: int, limit: int) -> list[Notification]:
        with recorder.datastore.transaction(commit=False) as c:
            c.execute(statement, [aggregate_id.hex, after, limit])
            return [
                Notification(
                    id=row["rowid"],
                    originator_id=recorder.convert_originator_id(row["originator_id"]),
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=row["state"],
                )
                for row in c.fetchall()
            ]

    return read


def _postgres_reader(recorder: PostgresApplicationRecorder) -> AggregateReader:
    statement = SQL(
        "SELECT * FROM {schema}.{table} WHERE originator_id = %s AND notification_id > %s "
        "ORDER BY originator_version LIMIT %s"
    ).format(schema=Identifier(recorder.datastore.schema), table=Identifier(recorder.events_table_name))

    def read(aggregate_id: UUID, after: int, limit: int) -> list[Notification]:
        with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, [aggregate_id, after, limit], prepare=True)
            return [
                Notification(
                    id=row["notification_id"],
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
                for row in curs.fetchall()
            ]

    return read


def _scanning_reader(recorder: Any) -> AggregateReader:
    """Any other recorder (eventsourcing's in-memory one): the whole order, filtered here."""

    def read(aggregate_id: UUID, after: int, limit: int) -> list[Notification]:
        found: list[Notification] = []
        position = after
        while len(found) < limit:
            batch = recorder.select_notifications(position + 1, READ_BATCH)
            found += [n for n in batch if n.originator_id == aggregate_id][: limit - len(found)]
            if len(batch) < READ_BATCH:
                break
            position = batch[-1].id
        return found

    return read
