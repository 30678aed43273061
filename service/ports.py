"""Small protocols the application and the entrypoints need; bootstrap supplies the real things."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar
from uuid import UUID

if TYPE_CHECKING:
    from contracts.jobs import DryRunResponse
    from service.domain.jobs import PatchDraft

T = TypeVar("T")


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
    # the job's cron expression and the IANA zone it fires in (its own, else the server default)
    def job_cron(self, library_id: UUID, job_id: UUID) -> tuple[str, str] | None: ...
    def library_exists(self, library_id: UUID) -> bool: ...
    def libraries_json(self) -> bytes: ...
    def library_json(self, library_id: UUID) -> bytes | None: ...
    def series_json(self, library_id: UUID, series_id: UUID) -> bytes | None: ...
    def series_page_json(self, library_id: UUID, cursor: str | None, limit: int) -> bytes: ...
    def book_json(self, library_id: UUID, book_id: UUID) -> bytes | None: ...
    def books_page_json(self, library_id: UUID, cursor: str | None, limit: int) -> bytes: ...
    # a job's runs (`ListRunsResponse`, newest first) and one `RunDto`; None: not a live job of the library
    def runs_page_json(
        self, library_id: UUID, job_id: UUID, cursor: str | None, limit: int
    ) -> bytes | None: ...
    # None also when the run is not one of the job's kept runs
    def run_json(self, library_id: UUID, job_id: UUID, run_id: UUID) -> bytes | None: ...
    def position(self) -> int: ...


WaitForPosition = Callable[[int | None], Awaitable[None]]


class RunSync(Protocol):
    """Runs a blocking call (the event store) in the store's bounded thread pool."""

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]: ...


# (method, path, route template, status, seconds, request id): one log line and the metrics per request
RequestObserver = Callable[[str, str, str, int, float, str], None]


@dataclass(frozen=True)
class StoredResponse:
    """The first response to an `Idempotency-Key`, replayed to retries that send the same request."""

    fingerprint: str  # SHA-256 of the request: method, path and body (HTTP); command and payload (NATS)
    status: int
    body: bytes
    headers: dict[str, str]


class IdempotencyStore(Protocol):
    """Durable: a retry after a restart still gets the first response."""

    def get(self, key: str) -> StoredResponse | None: ...
    def put(self, key: str, response: StoredResponse) -> None: ...


@dataclass(frozen=True, slots=True)
class LiveMessage:
    """One message for live subscribers (`GET /events`), shared by every subscriber it goes to."""

    kind: str  # the SSE event name: job.changed, run.changed, dropped
    data: bytes  # one line of JSON (`contracts.live`)
    id: str | None = None  # the store position of the change
    library_id: UUID | None = None  # what a subscriber's library filter compares


class LiveSubscription(Protocol):
    """One subscriber's feed, open inside `with`. Iterating yields the messages that pass its filter, and
    None after a quiet spell (time for a keep-alive); it ends once the feed closes or drops it."""

    def __enter__(self) -> Self: ...
    def __exit__(self, *exc_info: object) -> None: ...
    def __aiter__(self) -> AsyncIterator[LiveMessage | None]: ...


class LiveFeed(Protocol):
    """The changes this process applies, as they happen (`kinds` None: every kind)."""

    def subscribe(
        self, *, library_id: UUID | None = None, kinds: frozenset[str] | None = None
    ) -> LiveSubscription: ...


# --- provider plugins, as the executor sees them -------------------------------------------------------


class ProviderFailure(Exception):
    """A provider call failed. `reason` is a stable word (`timeout`, `crashed`, `bad_reply`, `error`,
    `not_found`, `not_supported` (no such method), `rate_limited`, or why the plugin is unavailable);
    `retry_after_s` comes with `rate_limited`. Messages never contain credentials."""

    def __init__(self, message: str, *, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


class ProviderUnavailable(ProviderFailure):
    """The plugin cannot be used at all: not configured (`plugin_missing`), disabled (`plugin_disabled`)
    or it cannot start (`plugin_unavailable`). Every later call would fail the same way."""


class Providers(Protocol):
    """Calls provider plugins (`name` without `plugin:`); raises `ProviderFailure` on any failure."""

    def permissions(self, name: str) -> tuple[str, ...] | None: ...  # None: not configured
    def enabled(self, name: str) -> bool: ...
    async def call(self, name: str, method: str, params: dict[str, Any]) -> Any: ...


class DryRun(Protocol):
    """Plans a run of the job without writing (SPEC §2.7); the override replaces the saved config."""

    def __call__(
        self, library_id: UUID, job_id: UUID, override: PatchDraft | None, sample_size: int, /
    ) -> Awaitable[DryRunResponse]: ...


# --- the audit log (SPEC §8), as the audit routes and `libjobs events` read it --------------------------


@dataclass(frozen=True)
class AuditFilter:
    """Which stored events a page holds: all of them, or those of a job, of a library, of some types
    (event type names such as `JobCreated`, `RunFinished`; None: every type). Filters combine (and)."""

    job_id: UUID | None = None
    library_id: UUID | None = None
    types: frozenset[str] | None = None


@dataclass(frozen=True)
class AuditPage:
    """Stored events in global order, each an encoded `EventEnvelope` (one line of JSON).

    `last_position` is where the reading stopped: the next page starts after it. A page may hold fewer
    events than asked for, even none, when the scan stopped at its bound before finding them; `at_end`
    says that nothing matching is stored after `last_position` (the end of the store, as it was read)."""

    events: list[bytes]
    last_position: int
    at_end: bool


class AuditLog(Protocol):
    """The stored events as the world sees them (SPEC §5 envelopes). Blocking: call through `RunSync`."""

    # the known event type names (what `AuditFilter.types` may hold)
    def event_types(self) -> frozenset[str]: ...
    # at most `limit` events stored after position `after` that pass `where`
    def page(self, after: int, limit: int, where: AuditFilter) -> AuditPage: ...
    # the job's events, oldest first, also after it was deleted; NotFound when the job never existed
    # or is another library's
    def job_history(self, library_id: UUID, job_id: UUID) -> list[bytes]: ...
    # the job's `LibraryJobDto` right after the change that made `version`; NotFound when the job never
    # existed here, or had no such version (past the last one, or the deletion's)
    def job_at_version(self, library_id: UUID, job_id: UUID, version: int) -> bytes: ...
