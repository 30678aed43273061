"""The catalog on the wire (SPEC §6): libraries, series and books as the library server feeds them."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec


class ExternalIdDto(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    source: str
    external_id: str
    external_url: str | None = None
    last_synced_at: datetime | None = None


class UpsertLibraryRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class LibraryDto(msgspec.Struct, rename="camel", kw_only=True):
    id: UUID
    name: str
    created_at: datetime
    updated_at: datetime


class ListLibrariesResponse(msgspec.Struct):
    libraries: list[LibraryDto]


class UpsertSeriesRequest(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """A series as the library server describes it; replaces what libjobs knew of it."""

    title: str
    title_sort: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    locks: list[str] = msgspec.field(default_factory=list)
    external_ids: list[ExternalIdDto] = msgspec.field(default_factory=list)


class UpsertBookRequest(UpsertSeriesRequest, kw_only=True, forbid_unknown_fields=True):
    """A book: the same description, plus the series it belongs to."""

    series_id: UUID


class SeriesDto(msgspec.Struct, rename="camel", kw_only=True):
    id: UUID
    library_id: UUID
    title: str
    title_sort: str
    metadata: dict[str, Any]
    locks: list[str]
    external_ids: list[ExternalIdDto]
    updated_at: datetime


class ListSeriesResponse(msgspec.Struct, rename="camel"):
    series: list[SeriesDto]
    next_cursor: str | None


class BookDto(SeriesDto, kw_only=True):
    series_id: UUID


class ListBooksResponse(msgspec.Struct, rename="camel"):
    books: list[BookDto]
    next_cursor: str | None
