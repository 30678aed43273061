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
from projections.rows import ViewRow
from service.ports import LibraryContents


class ReadModels:
    def __init__(self, *, default_timezone: str = "UTC") -> None:
        self._default_timezone = default_timezone
        self.reset()

    def reset(self) -> None:
        """Back to the empty models of position 0."""
        self.jobs = JobsView(default_timezone=self._default_timezone)
        self.catalog = CatalogView()
        self._position = 0
        self._dirty: set[tuple[str, str]] = set()

    def apply(self, batch: Iterable[tuple[int, Any]]) -> int:
        for position, event in batch:
            if position <= self._position:
                continue  # already applied: following is at-least-once, applying is exactly-once
            job_id = self.jobs.apply(event)
            if job_id is not None:
                self._dirty.add(("job", str(job_id)))
            self._dirty.update(self.catalog.apply(event))
            self._position = position
        return self._position

    # --- persistence --------------------------------------------------------------------------------

    def take_changes(self) -> tuple[int, list[ViewRow], list[tuple[str, str]]]:
        """The rows changed since the last call: (position, rows to write, (kind, key) to delete)."""
        upserts, deletes = [], []
        for kind, key in sorted(self._dirty):
            row = self.jobs.row(UUID(key)) if kind == "job" else self.catalog.row(kind, key)
            if row is None:
                deletes.append((kind, key))
            else:
                upserts.append(row)
        self._dirty.clear()
        return self._position, upserts, deletes

    def forget_changes(self) -> None:
        self._dirty.clear()

    def dump(self) -> tuple[int, list[ViewRow]]:
        return self._position, [*self.jobs.dump(), *self.catalog.dump()]

    def restore(self, position: int, rows: Iterable[ViewRow]) -> None:
        """Loads persisted rows (aliases first: other rows' events refer to them)."""
        for row in sorted(rows, key=lambda r: r.kind != "alias"):
            if row.kind == "job":
                self.jobs.restore(row)
            else:
                self.catalog.restore(row)
        self._position = position
        self._dirty.clear()

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
