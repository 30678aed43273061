"""The audit log over HTTP (SPEC §8): every stored event in global order, a job's history, and a job as it
was at one of its versions. Scope `audit:read`."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Request, Response, get
from litestar.params import FromPath, QueryParameter

from contracts.audit import AuditEventsResponse, JobHistoryResponse
from contracts.jobs import LibraryJobDto
from service.domain.errors import Unavailable, ValidationFailed
from service.entrypoints.http.common import JSON, error_responses, services
from service.entrypoints.http.jobs import JOB_PATH
from service.ports import AuditFilter, AuditLog

_encode = msgspec.json.encode
_CURSOR_PREFIX = b"after:"
PAGE_NOTE = (
    "A page looks at no more than 10,000 positions of the store: when the filters pass few events, it may "
    "hold fewer than `limit` events (even none) while `nextCursor` is not null; keep following `nextCursor` "
    "until it is null, which happens only at the end of the store."
)

Limit = Annotated[int, QueryParameter(ge=1, le=500, description="Page size (default 50, at most 500)")]
Cursor = Annotated[
    str | None, QueryParameter(description="Opaque cursor from the previous page's nextCursor")
]
After = Annotated[
    int | None,
    QueryParameter(
        ge=0,
        description="Start after this position of the global order (default 0: the beginning)",
        schema_extra={"minimum": 0},
    ),
]
# ids are read in the handler, so that a bad one is a 400 naming `jobId`, not the Python name
JobFilter = Annotated[
    str | None,
    QueryParameter(name="jobId", description="Only this job's events", schema_extra={"format": "uuid"}),
]
LibraryFilter = Annotated[
    str | None,
    QueryParameter(
        name="libraryId",
        description="Only the events of this library: of the library itself, its jobs, series and books",
        schema_extra={"format": "uuid"},
    ),
]
TypeFilter = Annotated[
    str | None,
    QueryParameter(
        name="type",
        description="Only events of these types, comma-separated (e.g. `JobCreated,RunFinished`)",
    ),
]


def _audit(request: Request[Any, Any, Any]) -> AuditLog:
    audit = services(request).audit
    if audit is None:
        raise Unavailable("The audit log is not available on this process")
    return audit


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(_CURSOR_PREFIX + str(position).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (ValueError, binascii.Error):
        raw = b""
    digits = raw.removeprefix(_CURSOR_PREFIX)
    if not raw.startswith(_CURSOR_PREFIX) or not digits.isdigit():
        raise ValidationFailed("cursor", "invalid_cursor", f"invalid cursor {cursor!r}")
    return int(digits)


def _uuid(text: str | None, field: str) -> UUID | None:
    if text is None:
        return None
    try:
        return UUID(text)
    except ValueError:
        raise ValidationFailed(field, "invalid_value", f"{field} must be a UUID, got {text!r}") from None


def _types(text: str | None, known: frozenset[str]) -> frozenset[str] | None:
    if text is None:
        return None
    names = frozenset(name.strip() for name in text.split(","))
    unknown = sorted(names - known)
    if unknown:
        raise ValidationFailed(
            "type",
            "invalid_value",
            f"type: unknown event type(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}",
        )
    return names


@get(
    "/audit/events",
    operation_id="list_audit_events",
    summary="Every stored event in global order (the audit log), filterable by job, library and type",
    description="Pages of at most `limit` events (default 50, at most 500) in the store's global order, each "
    "the envelope the relay publishes to NATS. Start after a position with `after`, or continue with the "
    f"previous page's `nextCursor` as `cursor` (not both). {PAGE_NOTE}",
    opt={"scope": "audit:read"},
    responses=error_responses(400, 503),
)
async def list_audit_events(
    request: Request[Any, Any, Any],
    limit: Limit = 50,
    after: After = None,
    cursor: Cursor = None,
    job_id: JobFilter = None,
    library_id: LibraryFilter = None,
    types: TypeFilter = None,
) -> Response[AuditEventsResponse]:
    audit = _audit(request)
    if after is not None and cursor is not None:
        raise ValidationFailed("cursor", "mutually_exclusive", "Send either `after` or `cursor`, not both")
    start = decode_cursor(cursor) if cursor is not None else after or 0
    where = AuditFilter(
        job_id=_uuid(job_id, "jobId"),
        library_id=_uuid(library_id, "libraryId"),
        types=_types(types, audit.event_types()),
    )
    page = await services(request).run_sync(audit.page, start, limit, where)
    next_cursor = None if page.at_end else encode_cursor(page.last_position)
    body = b'{"events":[' + b",".join(page.events) + b'],"nextCursor":' + _encode(next_cursor) + b"}"
    return Response(body, media_type=JSON)  # type: ignore[arg-type]


@get(
    JOB_PATH + "/history",
    operation_id="get_job_history",
    summary="A job's events, oldest first (also after it was deleted)",
    description="Every stored event of the job, oldest first, as in the audit log. A deleted job's history "
    "is still served (its last event is `JobDeleted`); 404 when the job never existed or is another "
    "library's.",
    opt={"scope": "audit:read"},
    responses=error_responses(404, 503),
)
async def get_job_history(
    request: Request[Any, Any, Any], library_id: FromPath[UUID], job_id: FromPath[UUID]
) -> Response[JobHistoryResponse]:
    audit = _audit(request)
    events = await services(request).run_sync(audit.job_history, library_id, job_id)
    return Response(b'{"events":[' + b",".join(events) + b"]}", media_type=JSON)  # type: ignore[arg-type]


@get(
    JOB_PATH + "/versions/{version:int}",
    operation_id="get_job_version",
    summary="A job as it was at one of its versions",
    description="The `LibraryJobDto` exactly as `GET …/jobs/{jobId}` served it right after the change that "
    "made this `version` (runs recorded before that change included; later ones not). Also for a deleted "
    "job's earlier versions. 404 when the job never existed (or is another library's), and for versions it "
    "never had: past the last one, or the one its deletion made.",
    opt={"scope": "audit:read"},
    responses=error_responses(404, 503),
)
async def get_job_version(
    request: Request[Any, Any, Any],
    library_id: FromPath[UUID],
    job_id: FromPath[UUID],
    version: FromPath[int],
) -> Response[LibraryJobDto]:
    audit = _audit(request)
    body = await services(request).run_sync(audit.job_at_version, library_id, job_id, version)
    return Response(body, media_type=JSON)  # type: ignore[arg-type]


ROUTES = [list_audit_events, get_job_history, get_job_version]
