"""The catalog (SPEC §6): libraries, series and books as the library server describes them.

Aggregate ids are derived from the library server's ids per kind, so a series can never collide with a
library or a job in the event store, however the ids were chosen.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Self
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

LIBRARY_NAMESPACE = UUID("6f1d1c52-4a55-4a5e-9d7b-2f0f6f0c9a01")
SERIES_NAMESPACE = UUID("6f1d1c52-4a55-4a5e-9d7b-2f0f6f0c9a02")
BOOK_NAMESPACE = UUID("6f1d1c52-4a55-4a5e-9d7b-2f0f6f0c9a03")


def library_aggregate_id(library_id: UUID) -> UUID:
    return uuid5(LIBRARY_NAMESPACE, str(library_id))


def series_aggregate_id(item_id: UUID) -> UUID:
    return uuid5(SERIES_NAMESPACE, str(item_id))


def book_aggregate_id(item_id: UUID) -> UUID:
    return uuid5(BOOK_NAMESPACE, str(item_id))


class Library(Aggregate):
    TOPIC = "libjobs:Library"

    class Event(Aggregate.Event):
        TOPIC = "libjobs:Library.Event"
        actor: str | None
        request_id: str | None

    class Registered(Event, Aggregate.Created):
        TOPIC = "libjobs:Library.Registered"
        library_id: UUID
        name: str

    class Renamed(Event):
        TOPIC = "libjobs:Library.Renamed"
        name: str

        def apply(self, aggregate: Any) -> None:
            aggregate.name = self.name
            aggregate.deleted = False

    class Deleted(Event):
        TOPIC = "libjobs:Library.Deleted"

        def apply(self, aggregate: Any) -> None:
            aggregate.deleted = True

    # Without this, eventsourcing adds a `Created` class that would share the `Event` topic.
    Created = Registered

    def __init__(self, library_id: UUID, name: str, actor: str | None, request_id: str | None) -> None:
        self.library_id = library_id
        self.name = name
        self.deleted = False

    @classmethod
    def register(
        cls, library_id: UUID, name: str, *, at: datetime, actor: str | None, request_id: str | None
    ) -> Library:
        return cls._create(
            cls.Registered,
            id=library_aggregate_id(library_id),
            library_id=library_id,
            name=name,
            timestamp=at,
            actor=actor,
            request_id=request_id,
        )

    def upsert(self, name: str, *, at: datetime, actor: str | None, request_id: str | None) -> bool:
        if name == self.name and not self.deleted:
            return False
        self.trigger_event(self.Renamed, name=name, timestamp=at, actor=actor, request_id=request_id)
        return True

    def delete(self, *, at: datetime, actor: str | None, request_id: str | None) -> None:
        self.trigger_event(self.Deleted, timestamp=at, actor=actor, request_id=request_id)


class CatalogItem(Aggregate):
    """A series or a book: the library server's whole description of it, replaced on each upsert.

    `state` holds `title`, `title_sort`, `metadata`, `locks`, `external_ids` (and `series_id` for a book),
    all plain JSON values.
    """

    class Event(Aggregate.Event):
        actor: str | None
        request_id: str | None

    class Upserted(Event, Aggregate.Created):
        item_id: UUID
        library_id: UUID
        state: dict[str, Any]

    class Changed(Event):
        library_id: UUID
        state: dict[str, Any]

        def apply(self, aggregate: Any) -> None:
            aggregate.library_id = self.library_id
            aggregate.state = self.state
            aggregate.deleted = False

    class Deleted(Event):
        def apply(self, aggregate: Any) -> None:
            aggregate.deleted = True

    class Refreshed(Event):
        """A refresh run fetched the item from its provider: the changed fields' values are written
        (`changes`: field → {"before", "after"}), and the provider's external id gets `lastSyncedAt`
        (added when the run matched the item). `skipped` lists selected fields not written, and why."""

        run_id: UUID
        job_id: UUID
        provider: str
        external_id: str
        external_url: str | None
        synced_at: datetime
        changes: dict[str, dict[str, Any]]
        skipped: list[dict[str, str]]

        def apply(self, aggregate: Any) -> None:
            aggregate.state = refreshed_state(aggregate.state, self)

    Created = Upserted

    def __init__(
        self,
        item_id: UUID,
        library_id: UUID,
        state: dict[str, Any],
        actor: str | None,
        request_id: str | None,
    ) -> None:
        self.item_id = item_id
        self.library_id = library_id
        self.state = state
        self.deleted = False

    @classmethod
    def new(
        cls,
        item_id: UUID,
        library_id: UUID,
        state: dict[str, Any],
        *,
        at: datetime,
        actor: str | None,
        request_id: str | None,
    ) -> Self:
        return cls._create(
            cls.Upserted,
            id=cls.aggregate_id(item_id),
            item_id=item_id,
            library_id=library_id,
            state=state,
            timestamp=at,
            actor=actor,
            request_id=request_id,
        )

    @staticmethod
    def aggregate_id(item_id: UUID) -> UUID:
        """The store id of the item the library server calls `item_id` (each kind has its own)."""
        raise NotImplementedError

    def upsert(
        self,
        library_id: UUID,
        state: dict[str, Any],
        *,
        at: datetime,
        actor: str | None,
        request_id: str | None,
    ) -> bool:
        if state == self.state and library_id == self.library_id and not self.deleted:
            return False
        self.trigger_event(
            self.Changed, library_id=library_id, state=state, timestamp=at, actor=actor, request_id=request_id
        )
        return True

    def delete(self, *, at: datetime, actor: str | None, request_id: str | None) -> None:
        self.trigger_event(self.Deleted, timestamp=at, actor=actor, request_id=request_id)

    @classmethod
    def refreshed_at(
        cls,
        item_id: UUID,
        version: int,
        *,
        run_id: UUID,
        job_id: UUID,
        provider: str,
        external_id: str,
        external_url: str | None,
        changes: dict[str, dict[str, Any]],
        skipped: list[dict[str, str]],
        at: datetime,
        actor: str | None,
        request_id: str | None,
    ) -> CatalogItem.Refreshed:
        """The `Refreshed` that `refresh` would record on the item if it is still at `version`, made
        without loading it: the store refuses it (optimistic concurrency) if the item changed since."""
        event: CatalogItem.Refreshed = cls.Refreshed(  # type: ignore[call-arg]
            originator_id=cls.aggregate_id(item_id),
            originator_version=version + 1,
            timestamp=at,
            run_id=run_id,
            job_id=job_id,
            provider=provider,
            external_id=external_id,
            external_url=external_url,
            synced_at=at,
            changes=changes,
            skipped=skipped,
            actor=actor,
            request_id=request_id,
        )
        return event

    def refresh(
        self,
        *,
        run_id: UUID,
        job_id: UUID,
        provider: str,
        external_id: str,
        external_url: str | None,
        changes: dict[str, dict[str, Any]],
        skipped: list[dict[str, str]],
        at: datetime,
        actor: str | None,
        request_id: str | None,
    ) -> None:
        self.trigger_event(
            self.Refreshed,
            run_id=run_id,
            job_id=job_id,
            provider=provider,
            external_id=external_id,
            external_url=external_url,
            synced_at=at,
            changes=changes,
            skipped=skipped,
            timestamp=at,
            actor=actor,
            request_id=request_id,
        )


def refreshed_state(state: dict[str, Any], refresh: CatalogItem.Refreshed) -> dict[str, Any]:
    """An item's wire state after a refresh: new values, and `lastSyncedAt` on the provider's id."""
    provider, external_id = refresh.provider, refresh.external_id
    metadata = dict(state.get("metadata") or {})
    for name, change in refresh.changes.items():
        metadata[name] = change["after"]
    synced = refresh.synced_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    ids = [dict(entry) for entry in state.get("externalIds") or []]
    for entry in ids:
        if entry.get("source") == provider:
            entry["lastSyncedAt"] = synced
            if entry.get("externalId") != external_id:  # the provider knows it by a new id now
                entry["externalId"] = external_id
            break
    else:
        ids.append(
            {
                "source": provider,
                "externalId": external_id,
                "externalUrl": refresh.external_url,
                "lastSyncedAt": synced,
            }
        )
    return {**state, "metadata": metadata, "externalIds": ids}


class Series(CatalogItem):
    TOPIC = "libjobs:Series"

    class Event(CatalogItem.Event):
        TOPIC = "libjobs:Series.Event"

    class Upserted(Event, CatalogItem.Upserted):
        TOPIC = "libjobs:Series.Upserted"

    class Changed(Event, CatalogItem.Changed):
        TOPIC = "libjobs:Series.Changed"

    class Deleted(Event, CatalogItem.Deleted):
        TOPIC = "libjobs:Series.Deleted"

    class Refreshed(Event, CatalogItem.Refreshed):
        TOPIC = "libjobs:Series.Refreshed"

    Created = Upserted
    aggregate_id = staticmethod(series_aggregate_id)


class Book(CatalogItem):
    TOPIC = "libjobs:Book"

    class Event(CatalogItem.Event):
        TOPIC = "libjobs:Book.Event"

    class Upserted(Event, CatalogItem.Upserted):
        TOPIC = "libjobs:Book.Upserted"

    class Changed(Event, CatalogItem.Changed):
        TOPIC = "libjobs:Book.Changed"

    class Deleted(Event, CatalogItem.Deleted):
        TOPIC = "libjobs:Book.Deleted"

    class Refreshed(Event, CatalogItem.Refreshed):
        TOPIC = "libjobs:Book.Refreshed"

    Created = Upserted
    aggregate_id = staticmethod(book_aggregate_id)
