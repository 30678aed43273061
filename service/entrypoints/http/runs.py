"""`/libraries/{libraryId}/jobs/{jobId}/runs`: a job's runs, newest first, and one run (SPEC §2.2, §2.6)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Request, Response, get
from litestar.params import FromPath

from contracts.runs import ListRunsResponse, RunDto
from service.domain.errors import NotFound
from service.entrypoints.http.catalog import Cursor, Limit
from service.entrypoints.http.common import JSON, error_responses, services

RUNS_PATH = "/libraries/{library_id:uuid}/jobs/{job_id:uuid}/runs"
KEPT_NOTE = (
    "The service keeps the latest 100 runs of each job (older finished runs are dropped; the full history "
    "is in the event log)."
)


@get(
    RUNS_PATH,
    operation_id="list_job_runs",
    summary="List a job's runs, newest first",
    description="Pages of `limit` runs (default 50, at most 500), newest first (by `requestedAt`); pass the "
    f"previous page's `nextCursor` as `cursor` for the next page (null on the last one). {KEPT_NOTE}",
    opt={"scope": "jobs:read"},
    responses=error_responses(400, 404),
)
async def list_job_runs(
    request: Request[Any, Any, Any],
    library_id: FromPath[UUID],
    job_id: FromPath[UUID],
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response[ListRunsResponse]:
    body = services(request).queries.runs_page_json(library_id, job_id, cursor, limit)
    if body is None:
        raise NotFound("Job not found")
    return Response(body, media_type=JSON)  # type: ignore[arg-type]


@get(
    RUNS_PATH + "/{run_id:uuid}",
    operation_id="get_job_run",
    summary="Get one run of a job",
    description="404 `Job not found` for a job that is not this library's, `Run not found` for a run that "
    f"is not this job's. {KEPT_NOTE}",
    opt={"scope": "jobs:read"},
    responses=error_responses(404),
)
async def get_job_run(
    request: Request[Any, Any, Any],
    library_id: FromPath[UUID],
    job_id: FromPath[UUID],
    run_id: FromPath[UUID],
) -> Response[RunDto]:
    queries = services(request).queries
    body = queries.run_json(library_id, job_id, run_id)
    if body is None:
        if queries.job_json(library_id, job_id) is None:
            raise NotFound("Job not found")
        raise NotFound("Run not found")
    return Response(body, media_type=JSON)  # type: ignore[arg-type]


ROUTES = [list_job_runs, get_job_run]
