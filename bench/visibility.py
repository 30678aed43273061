"""How soon a write through one process is visible in the read model of another.

Two `libjobs serve` processes share one store: on PostgreSQL the same schema (B learns of new events by
LISTEN/NOTIFY), on SQLite the same data dir (B polls the store; only A writes). The writes through A
alternate: create a job (POST), then change it (PATCH, a new name), so every write is a new or a
short-lived job and no job's history grows with the run. After each write this client polls B's
`GET …/jobs/{id}` every POLL_S until B answers with the ETag A returned, then writes again.

Measured per write: from sending the write to A until B shows it ("from send": an upper bound, it
includes A's own write) and from A's reply until B shows it ("after A's reply": a lower bound, the
commit happened before the reply). The target is checked against p99 from send.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from functools import partial
from uuid import UUID

from bench.common import Goal, Options, Result, median, percentile
from bench.servers import Api, for_each_store, libjobs, new_store

TARGET_MS = 100.0
POLL_S = 0.001
GIVE_UP_S = 5.0
WARMUP_WRITES = 10  # not counted: the first writes warm both processes up
NAME = "write visible in 2nd process, p99 ({kind})"


def run(options: Options) -> list[Result]:
    return for_each_store(NAME, Goal.AT_MOST, TARGET_MS, "ms", partial(_two_processes, options=options))


def _wait_for_etag(reader: Api, path: str, etag: str) -> float:
    """Polls until `reader` serves `etag` for `path`; returns the perf_counter time it did."""
    deadline = time.perf_counter() + GIVE_UP_S
    while True:
        reply = reader.http.get(path)
        now = time.perf_counter()
        if reply.status_code == 200 and reply.headers.get("ETag") == etag:
            return now
        if now > deadline:
            raise RuntimeError(f"{path}: not visible after {GIVE_UP_S}s (last: {reply.status_code})")
        time.sleep(POLL_S)


def _two_processes(kind: str, name: str, *, options: Options) -> Result:
    with ExitStack() as stack:
        store = stack.enter_context(new_store(kind, options.work_dir))
        writer = Api(stack.enter_context(libjobs(store, options.work_dir)).url)
        reader = Api(stack.enter_context(libjobs(store, options.work_dir)).url)
        stack.callback(writer.close)
        stack.callback(reader.close)
        library_id = writer.new_library()
        from_send: list[float] = []
        from_ack: list[float] = []
        job_id: UUID | None = None
        for i in range(options.visibility_writes + WARMUP_WRITES):
            sent = time.perf_counter()
            if job_id is None:
                job_id, etag = writer.create_job(library_id)
            else:
                etag = writer.patch_job(library_id, job_id, {"name": f"bench {i}"})
            acked = time.perf_counter()
            seen = _wait_for_etag(reader, f"{writer.jobs_path(library_id)}/{job_id}", etag)
            job_id = None if i % 2 else job_id
            if i >= WARMUP_WRITES:
                from_send.append((seen - sent) * 1000)
                from_ack.append((seen - acked) * 1000)
    p50, p99, ack_p99 = median(from_send), percentile(from_send, 99), percentile(from_ack, 99)
    return Result(
        name=name,
        unit="ms",
        value=p99,
        target=TARGET_MS,
        goal=Goal.AT_MOST,
        details={
            "writes": len(from_send),
            "write_mix": "alternating POST (new job) and PATCH (that job)",
            "from_send_p50_ms": round(p50, 2),
            "from_send_p99_ms": round(p99, 2),
            "from_send_max_ms": round(max(from_send), 2),
            "from_ack_p50_ms": round(median(from_ack), 2),
            "from_ack_p99_ms": round(ack_p99, 2),
            "poll_interval_ms": POLL_S * 1000,
        },
        note=f"p50 {p50:.1f} ms, {len(from_send)} writes; after A's reply: p99 {ack_p99:.1f} ms",
    )
