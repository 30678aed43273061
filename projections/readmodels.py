"""All in-memory read models of a process, advanced together in store order.

The position is the notification id of the last applied event; it moves in the same step as the models,
so a reader that sees position P sees every event up to P.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

from projections.catalog import CatalogView
from projections.jobs import JobsView
from service.ports import LibraryContents


class ReadModels:
    def __init__(self, *, default_timezone: str = "UTC") -> None:
        self.jobs = JobsView(default_timezone=default_timezone)
        self.catalog = CatalogView()
        self._position = 0

    def apply(self, batch: Iterable[tuple[int, Any]]) -> int:
        for position, event in batch:
            if position <= self._position:
                continue  # already applied: following is at-least-once, applying is exactly-once
            self.jobs.apply(event)
            self.catalog.apply(event)
            self._position = position
        return self._position

    # --- ReadModelQueries ---------------------------------------------------------------------------

    def position(self) -> int:
        return self._position

    def job_json(self, library_id: UUID, job_id: UUID) -> tuple[bytes, int] | None:
        return self.jobs.job_json(library_id, job_id)

    def jobs_json(self, library_id: UUID) -> bytes:
        return self.jobs.jobs_json(library_id)

    def library_exists(self, library_id: UUID) -> bool:
        return self.catalog.library_exists(library_id)

    def libraries_json(self) -> bytes:
        return self.catalog.libraries_json()

    def library_json(self, library_id: UUID) -> bytes | None:
        row = self.catalog.libraries.get(library_id)
        return row.json if row is not None else None

    def series_json(self, library_id: UUID, series_id: UUID) -> bytes | None:
        return self.catalog.item_json(self.catalog.series, library_id, series_id)

    def series_page_json(self, library_id: UUID, cursor: str | None, limit: int) -> bytes:
        return self.catalog.series.page_json(library_id, cursor, limit, "series")

    def book_json(self, library_id: UUID, book_id: UUID) -> bytes | None:
        return self.catalog.item_json(self.catalog.books, library_id, book_id)

    def books_page_json(self, library_id: UUID, cursor: str | None, limit: int) -> bytes:
        return self.catalog.books.page_json(library_id, cursor, limit, "books")

    def library_contents(self, library_id: UUID) -> LibraryContents:
        return LibraryContents(
            job_ids=self.jobs.job_ids(library_id),
            series_ids=self.catalog.series.ids_in(library_id),
            book_ids=self.catalog.books.ids_in(library_id),
        )
