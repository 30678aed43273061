"""Small protocols the application and the entrypoints need; bootstrap supplies the real things."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from uuid import UUID


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass(frozen=True)
class CommandContext:
    """Who asked, for the audit log: an API key id, a JWT subject, a NATS caller, `scheduler`, ..."""

    actor: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class LibraryContents:
    job_ids: tuple[UUID, ...]
    series_ids: tuple[UUID, ...]
    book_ids: tuple[UUID, ...]


class ReadModelQueries(Protocol):
    """The in-memory read models, as the HTTP layer sees them: ready-encoded JSON bytes."""

    def job_json(self, library_id: UUID, job_id: UUID) -> tuple[bytes, int] | None: ...
    def jobs_json(self, library_id: UUID) -> bytes: ...
    def library_exists(self, library_id: UUID) -> bool: ...
    def libraries_json(self) -> bytes: ...
    def library_json(self, library_id: UUID) -> bytes | None: ...
    def series_json(self, library_id: UUID, series_id: UUID) -> bytes | None: ...
    def series_page_json(self, library_id: UUID, cursor: str | None, limit: int) -> bytes: ...
    def book_json(self, library_id: UUID, book_id: UUID) -> bytes | None: ...
    def books_page_json(self, library_id: UUID, cursor: str | None, limit: int) -> bytes: ...
    def position(self) -> int: ...


WaitForPosition = Callable[[int | None], Awaitable[None]]
# (method, path, route template, status, seconds, request id): one log line and the metrics per request
RequestObserver = Callable[[str, str, str, int, float, str], None]


@dataclass(frozen=True)
class StoredResponse:
    """The first response to an `Idempotency-Key`, replayed to retries that send the same request."""

    fingerprint: str  # SHA-256 of method, path and body
    status: int
    body: bytes
    headers: dict[str, str]


class IdempotencyStore(Protocol):
    """Durable: a retry after a restart still gets the first response."""

    def get(self, key: str) -> StoredResponse | None: ...
    def put(self, key: str, response: StoredResponse) -> None: ...
