"""`/libraries/{libraryId}/jobs`: list, create, get, patch, delete, run-now and the schedule preview
(SPEC §2.2-2.4, §2.6, §3)."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Request, Response, delete, get, patch, post
from litestar.datastructures import ResponseHeader
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT, HTTP_304_NOT_MODIFIED

from contracts.jobs import (
    CreateLibraryJobRequest,
    DryRunRequest,
    DryRunResponse,
    JobScheduleResponse,
    LibraryJobDto,
    ListLibraryJobsResponse,
    PatchLibraryJobRequest,
    RunNowResponse,
)
from service.domain.cron import parse_cron
from service.domain.errors import NotFound, Unavailable, ValidationFailed
from service.domain.schedule import fires as upcoming
from service.domain.timezones import zone
from service.entrypoints.http.common import (
    JSON,
    Reply,
    check_body,
    context,
    error_responses,
    etag,
    idempotent,
    if_match_version,
    none_match,
    services,
)
from service.entrypoints.translate import create_draft, dry_run_input, patch_draft

JOB_PATH = "/libraries/{library_id:uuid}/jobs/{job_id:uuid}"
ETAG_HEADER = [ResponseHeader(name="ETag", description="The job's version, quoted", documentation_only=True)]
SCHEDULE_MAX = 50
Count = Annotated[
    int,
    QueryParameter(  # the range is checked in the handler, for an `out_of_range` code like the body's
        description=f"How many fires (default 5, 1 to {SCHEDULE_MAX})",
        schema_extra={"minimum": 1, "maximum": SCHEDULE_MAX},
    ),
]
From = Annotated[
    str | None,
    QueryParameter(
        name="from",
        description="The fires listed are strictly after this instant: RFC 3339 with an offset, e.g. "
        "`2026-10-31T12:00:00Z` (default: now). Write `+` as `%2B`.",
    ),
]
_encode = msgspec.json.encode


def _json(reply: Reply) -> Response[bytes]:
    return Response(reply.body, status_code=reply.status, media_type=JSON, headers=reply.headers)


def _job(request: Request[Any, Any, Any], library_id: UUID, job_id: UUID) -> tuple[bytes, int]:
    """The job's DTO bytes and version, from the read model."""
    found = services(request).queries.job_json(library_id, job_id)
    if found is None:
        raise NotFound("Job not found")
    return found


def _job_reply(request: Request[Any, Any, Any], library_id: UUID, job_id: UUID, status: int) -> Reply:
    body, version = _job(request, library_id, job_id)
    return Reply(status, body, {"ETag": etag(version)})


@get(
    "/libraries/{library_id:uuid}/jobs",
    operation_id="list_jobs",
    summary="List a library's jobs, oldest first",
    opt={"scope": "jobs:read"},
    responses=error_responses(404),
)
async def list_jobs(
    request: Request[Any, Any, Any], library_id: FromPath[UUID]
) -> Response[ListLibraryJobsResponse]:
    queries = services(request).queries
    if not queries.library_exists(library_id):
        raise NotFound("Library not found")
    return Response(queries.jobs_json(library_id), media_type=JSON)  # type: ignore[arg-type]


@post(
    "/libraries/{library_id:uuid}/jobs",
    before_request=check_body,
    operation_id="create_job",
    summary="Create a job",
    opt={"scope": "jobs:write"},
    status_code=HTTP_201_CREATED,
    response_headers=[
        *ETAG_HEADER,
        ResponseHeader(name="Location", description="The new job's URL", documentation_only=True),
    ],
    responses=error_responses(400, 404, 409, 413, 415),
)
async def create_job(
    request: Request[Any, Any, Any], library_id: FromPath[UUID], data: JSONBody[CreateLibraryJobRequest]
) -> Response[LibraryJobDto]:
    svc = services(request)

    async def handle() -> Reply:
        saved = await svc.create_job(library_id, create_draft(data), context(request))
        await svc.wait_for(saved.position)
        reply = _job_reply(request, library_id, saved.id, HTTP_201_CREATED)
        reply.headers["Location"] = f"/api/v1/libraries/{library_id}/jobs/{saved.id}"
        return reply

    return _json(await idempotent(request, handle))  # type: ignore[return-value]


@get(
    JOB_PATH,
    operation_id="get_job",
    summary="Get a job",
    opt={"scope": "jobs:read"},
    response_headers=ETAG_HEADER,
    responses=error_responses(404),
)
async def get_job(
    request: Request[Any, Any, Any], library_id: FromPath[UUID], job_id: FromPath[UUID]
) -> Response[LibraryJobDto]:
    body, version = _job(request, library_id, job_id)
    headers = {"ETag": etag(version)}
    if none_match(request, version):
        return Response(b"", status_code=HTTP_304_NOT_MODIFIED, headers=headers)  # type: ignore[arg-type]
    return Response(body, media_type=JSON, headers=headers)  # type: ignore[arg-type]


@patch(
    JOB_PATH,
    before_request=check_body,
    operation_id="patch_job",
    summary="Change a job (only the fields sent; `If-Match` for optimistic concurrency)",
    opt={"scope": "jobs:write"},
    response_headers=ETAG_HEADER,
    responses=error_responses(400, 404, 412, 413, 415),
)
async def patch_job(
    request: Request[Any, Any, Any],
    library_id: FromPath[UUID],
    job_id: FromPath[UUID],
    data: JSONBody[PatchLibraryJobRequest],
) -> Response[LibraryJobDto]:
    svc = services(request)
    update = partial(
        svc.commands.update_job,
        library_id,
        job_id,
        patch_draft(data),
        context(request),
        if_match=if_match_version(request),
    )
    saved = await svc.run_sync(update)
    await svc.wait_for(saved.position)
    return _json(_job_reply(request, library_id, job_id, HTTP_200_OK))  # type: ignore[return-value]


@delete(
    JOB_PATH,
    operation_id="delete_job",
    summary="Delete a job (`If-Match` for optimistic concurrency)",
    opt={"scope": "jobs:write"},
    status_code=HTTP_204_NO_CONTENT,
    responses=error_responses(404, 412),
)
async def delete_job(
    request: Request[Any, Any, Any], library_id: FromPath[UUID], job_id: FromPath[UUID]
) -> None:
    svc = services(request)
    remove = partial(
        svc.commands.delete_job, library_id, job_id, context(request), if_match=if_match_version(request)
    )
    saved = await svc.run_sync(remove)
    await svc.wait_for(saved.position)


@post(
    JOB_PATH + "/run-now",
    before_request=check_body,
    operation_id="run_job_now",
    summary="Run a job now, also a disabled one (409 while a run of it is queued or running)",
    description="Queues a `manual` run and answers its run id as `taskId`; the run itself is asynchronous. "
    "409 `A run of this job is already in flight` while a run of this job is queued or running (runs of "
    "other jobs never interfere), or when an `Idempotency-Key` is reused for another request.",
    opt={"scope": "jobs:run"},
    status_code=HTTP_200_OK,
    responses=error_responses(400, 404, 409, 413, 415),
)
async def run_job_now(
    request: Request[Any, Any, Any], library_id: FromPath[UUID], job_id: FromPath[UUID]
) -> Response[RunNowResponse]:
    svc = services(request)

    async def handle() -> Reply:
        saved, run_id = await svc.run_sync(svc.commands.run_now, library_id, job_id, context(request))
        await svc.wait_for(saved.position)
        return Reply(HTTP_200_OK, _encode(RunNowResponse(task_id=run_id)))

    return _json(await idempotent(request, handle))  # type: ignore[return-value]


@post(
    JOB_PATH + "/dry-run",
    before_request=check_body,
    operation_id="dry_run_job",
    summary="What a run would change, with nothing written",
    description="Plans with the saved config, or with `configOverride` (validated like a PATCH of the "
    "config), asks the provider for the first `sampleSize` planned items (0 to 20, default 5) and answers "
    "what a run would write to each. A provider that cannot be asked gives `planFailure`, not an error.",
    opt={"scope": "jobs:read"},
    status_code=HTTP_200_OK,
    responses=error_responses(400, 404, 413, 415, 503),
)
async def dry_run_job(
    request: Request[Any, Any, Any],
    library_id: FromPath[UUID],
    job_id: FromPath[UUID],
    data: JSONBody[DryRunRequest],
) -> Response[DryRunResponse]:
    svc = services(request)
    if svc.dry_run is None:
        raise Unavailable("Dry runs are not available on this process")
    override, size = dry_run_input(data)
    result = await svc.dry_run(library_id, job_id, override, size)
    return Response(_encode(result), media_type=JSON)  # type: ignore[arg-type]


@get(
    JOB_PATH + "/schedule",
    operation_id="get_job_schedule",
    summary="The job's next fires, in UTC and in its time zone",
    description="The next `count` fires strictly after `from`: exactly the instants that will fire (SPEC "
    "§3.2). A fixed wall-clock time in a spring-forward gap fires once, at the first instant after the gap; "
    "one that a fall-back repeats fires once, at its first occurrence; wildcard-hour expressions fire on "
    "every real instant that matches. A disabled job previews the fires it would have once enabled.",
    opt={"scope": "jobs:read"},
    responses=error_responses(400, 404),
)
async def get_job_schedule(
    request: Request[Any, Any, Any],
    library_id: FromPath[UUID],
    job_id: FromPath[UUID],
    count: Count = 5,
    from_: From = None,
) -> Response[JobScheduleResponse]:
    """The preview is the same for a disabled job: the fires it would have once enabled."""
    if not 1 <= count <= SCHEDULE_MAX:
        raise ValidationFailed(
            "count", "out_of_range", f"count must be between 1 and {SCHEDULE_MAX}, got {count}"
        )
    svc = services(request)
    after = _instant(from_, "from") if from_ is not None else svc.commands.clock.now()
    found = svc.queries.job_cron(library_id, job_id)
    if found is None:
        raise NotFound("Job not found")
    cron, timezone = found
    tz = zone(timezone)
    fires = upcoming(parse_cron(cron, min_interval_s=0), tz, after, count)
    body = JobScheduleResponse(
        timezone=timezone, fires=fires, local_fires=[fire.astimezone(tz) for fire in fires]
    )
    return Response(_encode(body), media_type=JSON)  # type: ignore[arg-type]


def _instant(text: str, field: str) -> datetime:
    """An RFC 3339 instant from a query parameter (a `+` that arrived as a space is read as a `+`)."""
    for candidate in (text, text.replace(" ", "+")):
        try:
            instant = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        if instant.utcoffset() is None:
            raise ValidationFailed(
                field, "naive_datetime", f"{field} needs a UTC offset, e.g. 2026-10-31T12:00:00Z"
            )
        return instant
    raise ValidationFailed(
        field, "invalid_datetime", f"{field} must be an RFC 3339 date-time, e.g. 2026-10-31T12:00:00Z"
    )


ROUTES = [list_jobs, create_job, get_job, patch_job, delete_job, run_job_now, dry_run_job, get_job_schedule]
