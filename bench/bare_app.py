"""The baseline of the read benchmarks: a bare Litestar app returning pre-encoded bytes.

It has the same two routes as libjobs (same paths, same UUID path parameters) and answers them with the
bytes libjobs itself served, read from files at start. No auth, no middleware, no read model: what is
left is Litestar and uvicorn. It runs under `service.entrypoints.serve.run_server`, the very function
`libjobs serve` uses, so the server, loop and HTTP implementation and every uvicorn setting are the same.

    python -m bench.bare_app --port 8001 --job job.json --list jobs.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from uuid import UUID

from litestar import Litestar, Response, get

from service.entrypoints.serve import run_server

JSON = "application/json"
JOBS_PATH = "/api/v1/libraries/{library_id:uuid}/jobs"
JOB_PATH = JOBS_PATH + "/{job_id:uuid}"


def create_app(job: bytes, jobs: bytes) -> Litestar:
    @get(JOB_PATH)
    async def get_job(library_id: UUID, job_id: UUID) -> Response[bytes]:
        return Response(job, media_type=JSON)

    @get(JOBS_PATH)
    async def list_jobs(library_id: UUID) -> Response[bytes]:
        return Response(jobs, media_type=JSON)

    @get("/healthz")
    async def healthz() -> Response[bytes]:
        return Response(b'{"status":"ok"}', media_type=JSON)

    return Litestar([get_job, list_jobs, healthz], openapi_config=None, logging_config=None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_app", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--job", type=Path, required=True, help="bytes for GET …/jobs/{id}")
    parser.add_argument("--list", type=Path, required=True, help="bytes for GET …/jobs")
    args = parser.parse_args(argv)
    app = create_app(args.job.read_bytes(), args.list.read_bytes())
    return run_server(app, host=args.host, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
