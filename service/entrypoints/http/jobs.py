"""`/libraries/{libraryId}/jobs`: list, create, get, patch, delete (SPEC §2.2-2.4)."""

from __future__ import annotations

from functools import partial
from typing import Any
from uuid import UUID

from litestar import Request, Response, delete, get, patch, post
from litestar.datastructures import ResponseHeader
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT, HTTP_304_NOT_MODIFIED

from contracts.jobs import (
    CreateLibraryJobRequest,
    LibraryJobDto,
    ListLibraryJobsResponse,
    PatchLibraryJobRequest,
)
from service.domain.errors import NotFound
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
from service.entrypoints.translate import create_draft, patch_draft

JOB_PATH = "/libraries/{library_id:uuid}/jobs/{job_id:uuid}"
ETAG_HEADER = [ResponseHeader(name="ETag", description="The job's version, quoted", documentation_only=True)]


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
        saved = await svc.run_sync(svc.commands.create_job, library_id, create_draft(data), context(request))
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


ROUTES = [list_jobs, create_job, get_job, patch_job, delete_job]
