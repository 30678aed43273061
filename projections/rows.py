"""Read-model rows as they are persisted: a kind, a key, the library and the ready JSON bytes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViewRow:
    kind: str  # "job", "library", "series", "book", or "alias" (an aggregate id's catalog id)
    key: str
    library_id: str | None
    payload: bytes
