"""`GET …/jobs/{id}` and `GET …/jobs` (100 jobs) of `libjobs serve` against a bare Litestar app.

Measured: `libjobs serve` as a real process on embedded SQLite, with 100 jobs in one library, answering
`wrk` (CONNECTIONS keep-alive connections, the API key header on every request).

Baseline: `bench.bare_app`, its own process under the same `run_server` (uvicorn, same settings),
answering the same paths with the very bytes libjobs served (checked before measuring). The two
processes run side by side and are measured in alternating rounds.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial

from bench.common import Goal, Options, Result, interleave, median, stage
from bench.load import Load, LoadResult, rps_sampler, run_load, summarize
from bench.servers import Api, Running, bare_app, libjobs, new_store

CONNECTIONS = 16
JOBS = 100


@dataclass(frozen=True)
class Read:
    name: str
    path: str
    target: float


def run(options: Options) -> list[Result]:
    with ExitStack() as stack:
        with stage("setup: libjobs with 100 jobs, bare app"):
            store = stack.enter_context(new_store("sqlite", options.work_dir))
            server = stack.enter_context(libjobs(store, options.work_dir))
            api = Api(server.url)
            stack.callback(api.close)
            library_id = api.new_library()
            job_ids = [api.create_job(library_id)[0] for _ in range(JOBS)]
            reads = [
                Read("GET /jobs/{id}", f"{api.jobs_path(library_id)}/{job_ids[0]}", 0.70),
                Read(f"GET /jobs ({JOBS} jobs)", api.jobs_path(library_id), 0.60),
            ]
            served = [api.get(read.path).content for read in reads]
            job, jobs = served
            bare = stack.enter_context(bare_app(job, jobs, options.work_dir))
            _check_same_bytes(bare, reads, served)
        return [_compare(read, server, bare, api.headers(), options) for read in reads]


def _check_same_bytes(bare: Running, reads: list[Read], served: list[bytes]) -> None:
    bare_api = Api(bare.url)
    try:
        for read, body in zip(reads, served, strict=True):
            if bare_api.get(read.path).content != body:
                raise RuntimeError(f"the bare app does not serve libjobs' bytes for {read.name}")
    finally:
        bare_api.close()


def _compare(read: Read, server: Running, bare: Running, headers: dict[str, str], options: Options) -> Result:
    with stage(read.name):
        loads = {
            name: Load(url=target.url + read.path, headers=headers, connections=CONNECTIONS)
            for name, target in (("libjobs", server), ("bare", bare))
        }
        pids = {"libjobs": server.pid, "bare": bare.pid}
        logs: dict[str, list[LoadResult]] = {"libjobs": [], "bare": []}
        for name, load in loads.items():
            run_load(load, options.warmup_seconds, server_pid=pids[name])
        samples = interleave(
            options.rounds,
            {
                name: partial(rps_sampler, load, options.seconds, pids[name], logs[name])
                for name, load in loads.items()
            },
        )
    mine, theirs = summarize(logs["libjobs"]), summarize(logs["bare"])
    return Result(
        name=read.name,
        unit="req/s",
        value=median(samples["libjobs"]),
        target=read.target,
        goal=Goal.RATIO_AT_LEAST,
        baseline=median(samples["bare"]),
        baseline_name="bench.bare_app (same uvicorn run_server, same path, same bytes)",
        details={"connections": CONNECTIONS, "libjobs": mine, "bare": theirs},
        note=(
            f"{CONNECTIONS} conns, p99 {mine['p99_ms']:.1f}/{theirs['p99_ms']:.1f} ms; server CPU "
            f"{mine['server_cpu_cores']:.2f}/{theirs['server_cpu_cores']:.2f}, "
            f"wrk {mine['client_cpu_cores']:.2f} cores"
        ),
    )
