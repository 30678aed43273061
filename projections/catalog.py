"""The catalog read model: libraries, series and books with their DTO bytes, and sorted pages."""

from __future__ import annotations

import base64
import bisect
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from contracts.catalog import LibraryDto
from projections.rows import ViewRow
from service.domain.catalog import Book, CatalogItem, Library, Series, refreshed_state
from service.domain.errors import ValidationFailed
from service.domain.refresh import CatalogEntry, ExternalRef, ItemKind

_encode = msgspec.json.encode
SortKey = tuple[str, str]


@dataclass
class LibraryRow:
    id: UUID
    name: str
    created_at: datetime
    updated_at: datetime
    json: bytes = b""


@dataclass
class ItemRow:
    """A series or a book; `state` is the wire body the library server sent (camelCase JSON values)."""

    id: UUID
    library_id: UUID
    state: dict[str, Any]
    updated_at: datetime
    json: bytes = b""
    entry: CatalogEntry | None = None  # as runs see it, made when first needed
    # the item's version in the store when this process applied its last event; None for a row loaded
    # from its persisted bytes (they do not hold it): a run then loads the item to refresh it
    version: int | None = None

    @property
    def sort_key(self) -> SortKey:
        return (str(self.state.get("titleSort") or self.state["title"]).casefold(), str(self.id))


def _encode_item(row: ItemRow, is_book: bool) -> bytes:
    """The SeriesDto / BookDto bytes: the stored wire body plus ids, every key present, in DTO order."""
    s = row.state
    dto: dict[str, Any] = {"id": row.id, "libraryId": row.library_id}
    if is_book:
        dto["seriesId"] = s["seriesId"]
    dto |= {
        "title": s["title"],
        "titleSort": s.get("titleSort") or s["title"],
        "metadata": s.get("metadata", {}),
        "locks": s.get("locks", []),
        "externalIds": s.get("externalIds", []),
        "updatedAt": row.updated_at,
    }
    return _encode(dto)


@dataclass
class ItemIndex:
    """Items of one kind, by id and, per library, in (title sort, id) order for paging."""

    is_book: bool
    rows: dict[UUID, ItemRow] = field(default_factory=dict)
    order: dict[UUID, list[SortKey]] = field(default_factory=dict)
    by_key: dict[str, ItemRow] = field(default_factory=dict)  # by the id in `order`'s keys

    def put(self, row: ItemRow) -> None:
        self.remove(row.id)
        row.json = _encode_item(row, self.is_book)
        self.rows[row.id] = row
        key = row.sort_key
        self.by_key[key[1]] = row
        bisect.insort(self.order.setdefault(row.library_id, []), key)

    def remove(self, item_id: UUID) -> None:
        old = self.rows.pop(item_id, None)
        if old is not None:
            del self.by_key[str(item_id)]
            keys = self.order[old.library_id]
            del keys[bisect.bisect_left(keys, old.sort_key)]

    def page_json(self, library_id: UUID, cursor: str | None, limit: int, key: str) -> bytes:
        keys = self.order.get(library_id, [])
        start = bisect.bisect_right(keys, decode_cursor(cursor)) if cursor else 0
        chosen = keys[start : start + limit]
        next_cursor = encode_cursor(chosen[-1]) if start + limit < len(keys) and chosen else None
        items = b",".join(self.rows[UUID(k[1])].json for k in chosen)
        return b'{"%s":[%s],"nextCursor":%s}' % (key.encode(), items, _encode(next_cursor))

    def ids_in(self, library_id: UUID) -> tuple[UUID, ...]:
        return tuple(UUID(k[1]) for k in self.order.get(library_id, []))

    def entries(self, library_id: UUID) -> list[CatalogEntry]:
        """A library's items as a refresh run plans with them, in title order. Each row's entry is made
        once, when first asked for (a row is replaced, not changed, when its item changes)."""
        kind: ItemKind = "book" if self.is_book else "series"
        found = []
        for sort_key, key in self.order.get(library_id, ()):
            row = self.by_key[key]
            if row.entry is None:
                row.entry = _entry(kind, row, sort_key)
            found.append(row.entry)
        return found


def _entry(kind: ItemKind, row: ItemRow, sort_key: str) -> CatalogEntry:
    state = row.state
    refs = {}
    for ref in state.get("externalIds") or ():
        synced = ref.get("lastSyncedAt")
        refs[ref["source"]] = ExternalRef(
            ref["externalId"], datetime.fromisoformat(synced) if synced else None
        )
    return CatalogEntry(
        kind=kind,
        id=row.id,
        title=state["title"],
        sort_key=sort_key,
        metadata=state.get("metadata") or {},
        locks=frozenset(state.get("locks") or ()),
        external_ids=refs,
        version=row.version,
    )


class BadCursor(ValidationFailed):
    """A `cursor` query parameter that this service did not hand out (400)."""

    def __init__(self, message: str) -> None:
        super().__init__("cursor", "invalid_cursor", message)


def encode_cursor(key: SortKey) -> str:
    return base64.urlsafe_b64encode(_encode(key)).decode().rstrip("=")


def decode_cursor(cursor: str) -> SortKey:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        title, item_id = msgspec.json.decode(raw, type=tuple[str, str])
    except (ValueError, msgspec.DecodeError) as e:
        raise BadCursor(f"invalid cursor {cursor!r}") from e
    return title, item_id


_ITEM_EVENTS = (Series.Event, Book.Event)  # a tuple: `Series.Event | Book.Event` is made anew each time


@dataclass
class CatalogView:
    libraries: dict[UUID, LibraryRow] = field(default_factory=dict)
    series: ItemIndex = field(default_factory=lambda: ItemIndex(is_book=False))
    books: ItemIndex = field(default_factory=lambda: ItemIndex(is_book=True))
    # Later events carry only the aggregate id; the first one names the library server's id.
    _known: dict[UUID, tuple[UUID, datetime]] = field(default_factory=dict)
    _libraries_json: bytes | None = None

    def apply(self, event: Any) -> list[tuple[str, str]]:
        """Applies one stored event; returns the (kind, key) rows it touched."""
        if isinstance(event, Library.Event):
            self._apply_library(event)
            kind = "library"
        elif isinstance(event, _ITEM_EVENTS):
            kind = "book" if isinstance(event, Book.Event) else "series"
            self._apply_item(self.books if kind == "book" else self.series, event)
        else:
            return []
        catalog_id, _ = self._known[event.originator_id]
        return [(kind, str(catalog_id)), ("alias", str(event.originator_id))]

    def _apply_library(self, event: Library.Event) -> None:
        self._libraries_json = None
        if isinstance(event, Library.Registered):
            self._known[event.originator_id] = (event.library_id, event.timestamp)
        library_id, created_at = self._known[event.originator_id]
        if isinstance(event, Library.Deleted):
            self.libraries.pop(library_id, None)
            return
        assert isinstance(event, Library.Registered | Library.Renamed)
        if library_id not in self.libraries:  # new, or registered again after a delete
            self._known[event.originator_id] = (library_id, event.timestamp)
            created_at = event.timestamp
        row = LibraryRow(library_id, event.name, created_at, event.timestamp)
        row.json = _encode(
            LibraryDto(id=row.id, name=row.name, created_at=row.created_at, updated_at=row.updated_at)
        )
        self.libraries[library_id] = row

    def _apply_item(self, index: ItemIndex, event: CatalogItem.Event) -> None:
        if isinstance(event, CatalogItem.Upserted):
            self._known[event.originator_id] = (event.item_id, event.timestamp)
        item_id, _ = self._known[event.originator_id]
        if isinstance(event, CatalogItem.Deleted):
            index.remove(item_id)
            return
        version = event.originator_version
        if isinstance(event, CatalogItem.Refreshed):
            known = index.rows.get(item_id)
            if known is not None:
                state = refreshed_state(known.state, event)
                index.put(ItemRow(item_id, known.library_id, state, event.timestamp, version=version))
            return
        assert isinstance(event, CatalogItem.Upserted | CatalogItem.Changed)
        index.put(ItemRow(item_id, event.library_id, event.state, event.timestamp, version=version))

    # --- queries ------------------------------------------------------------------------------------

    def library_exists(self, library_id: UUID) -> bool:
        return library_id in self.libraries

    def libraries_json(self) -> bytes:
        if self._libraries_json is None:
            rows = sorted(self.libraries.values(), key=lambda r: (r.created_at, str(r.id)))
            self._libraries_json = b'{"libraries":[' + b",".join(r.json for r in rows) + b"]}"
        return self._libraries_json

    def item_json(self, index: ItemIndex, library_id: UUID, item_id: UUID) -> bytes | None:
        row = index.rows.get(item_id)
        return row.json if row is not None and row.library_id == library_id else None

    # --- persistence --------------------------------------------------------------------------------

    def row(self, kind: str, key: str) -> ViewRow | None:
        if kind == "alias":
            catalog_id, created_at = self._known[UUID(key)]
            return ViewRow("alias", key, None, _encode((catalog_id, created_at)))
        if kind == "library":
            library = self.libraries.get(UUID(key))
            return None if library is None else ViewRow("library", key, key, library.json)
        item = (self.books if kind == "book" else self.series).rows.get(UUID(key))
        return None if item is None else ViewRow(kind, key, str(item.library_id), item.json)

    def dump(self) -> list[ViewRow]:
        keys = [("alias", str(a)) for a in self._known]
        keys += [("library", str(i)) for i in self.libraries]
        keys += [("series", str(i)) for i in self.series.rows]
        keys += [("book", str(i)) for i in self.books.rows]
        return [row for kind, key in keys if (row := self.row(kind, key)) is not None]

    def restore(self, row: ViewRow) -> None:
        self._libraries_json = None
        if row.kind == "alias":
            self._known[UUID(row.key)] = msgspec.json.decode(row.payload, type=tuple[UUID, datetime])
        elif row.kind == "library":
            dto = msgspec.json.decode(row.payload, type=LibraryDto)
            self.libraries[dto.id] = LibraryRow(dto.id, dto.name, dto.created_at, dto.updated_at, row.payload)
        else:
            state = msgspec.json.decode(row.payload)
            item_id, library_id = UUID(state.pop("id")), UUID(state.pop("libraryId"))
            updated_at = msgspec.convert(state.pop("updatedAt"), datetime)
            index = self.books if row.kind == "book" else self.series
            index.put(ItemRow(item_id, library_id, state, updated_at))
