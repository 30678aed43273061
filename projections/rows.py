"""Read-model rows as they are persisted: a kind, a key, the library and the ready JSON bytes."""

from __future__ import annotations

from typing import NamedTuple


class ViewRow(NamedTuple):
    """A tuple: a view has a row per job, run, library, series, book and alias, and a process loads (or a
    rebuild compares and writes) every one of them; a frozen dataclass took three times as long to make."""

    kind: str  # "job", "library", "series", "book", or "alias" (an aggregate id's catalog id)
    key: str
    library_id: str | None
    payload: bytes
