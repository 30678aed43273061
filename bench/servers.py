"""The processes and stores a benchmark runs against, and a small client of the jobs API.

`libjobs serve` is started exactly as the e2e tests start it (`tests.support.processes.ServeProcess`);
the bare app (`bench.bare_app`) is started the same way, as its own process on a free loopback port.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec

from bench.common import Goal, Result, skipped, stage
from service.adapters.nats.embedded import free_port
from service.adapters.store import store_env
from service.settings import Settings
from tests.support.postgres import base_url, fresh_schema
from tests.support.processes import ServeProcess, environment

API_KEY = "lj_bench_" + "k" * 32
PLUGIN = "bench"
# The plugin is declared with static capabilities, so validation never starts a plugin process.
CONFIG = f"""
[plugins.{PLUGIN}]
command = ["{sys.executable}", "-c", "pass"]
capabilities = ["series", "book"]
"""
CREATE_JOB: dict[str, Any] = {
    "cronSchedule": "0 3 * * *",
    "timezone": "Europe/Paris",
    "enabled": True,
    "config": {
        "type": "metadata_refresh",
        "provider": f"plugin:{PLUGIN}",
        "scope": "series_and_books",
        "fieldGroups": ["descriptive", "genres"],
        "bookFieldGroups": ["descriptive"],
    },
}
CREATE_JOB_BODY = msgspec.json.encode(CREATE_JOB)


class StoreUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class Store:
    """One event store: SQLite in `data_dir`, or a PostgreSQL schema of its own (`database_url`)."""

    kind: str  # "sqlite" | "postgres"
    data_dir: Path
    database_url: str | None

    def eventsourcing_env(self) -> dict[str, str]:
        """The environment `libjobs serve` gives eventsourcing for this store, with its default settings."""
        defaults = Settings()
        return store_env(
            data_dir=self.data_dir,
            database_url=self.database_url,
            pool_size=defaults.store_pool_size,
            lock_timeout_s=defaults.lock_timeout_s,
        )


STORE_KINDS = ("sqlite", "postgres")


def for_each_store(
    name: str, goal: Goal, target: float, unit: str, measure: Callable[[str, str], Result]
) -> list[Result]:
    """`measure(kind, title)` on SQLite and on PostgreSQL; a store that cannot be reached is a SKIP row."""
    results = []
    for kind in STORE_KINDS:
        title = name.format(kind=kind)
        with stage(title):
            try:
                results.append(measure(kind, title))
            except StoreUnavailable as e:
                results.append(skipped(title, goal, target, unit, str(e)))
    return results


@contextmanager
def new_store(kind: str, root: Path) -> Iterator[Store]:
    """A new, empty store; PostgreSQL gets a fresh schema that is dropped afterwards."""
    data_dir = Path(tempfile.mkdtemp(dir=root, prefix=f"{kind}-"))
    if kind == "sqlite":
        yield Store(kind, data_dir, None)
        return
    try:
        import psycopg

        with psycopg.connect(base_url(), connect_timeout=3):
            pass
    except Exception as e:
        raise StoreUnavailable(
            f"PostgreSQL is not reachable at {base_url()}: {str(e).splitlines()[0]}"
        ) from e
    with fresh_schema() as url:
        yield Store(kind, data_dir, url)


@dataclass(frozen=True)
class Running:
    url: str
    pid: int


@contextmanager
def libjobs(store: Store, work_dir: Path, nats_url: str | None = None) -> Iterator[Running]:
    """`libjobs serve` on `store`, with an admin API key and the bench plugin. Several may share a store.

    Without `nats_url` it starts its embedded nats-server."""
    config = work_dir / "libjobs.toml"
    config.write_text(CONFIG)
    values = {"api_key": API_KEY, "config": str(config)}
    if store.database_url is not None:
        values["database_url"] = store.database_url
    if nats_url is not None:
        values["nats_url"] = nats_url
    process = ServeProcess(data_dir=store.data_dir, env=dict(environment(**values)))
    process.start()
    assert process.process is not None
    try:
        yield Running(process.url, process.process.pid)
    finally:
        process.stop()


@contextmanager
def bare_app(job: bytes, jobs: bytes, work_dir: Path, timeout_s: float = 20) -> Iterator[Running]:
    """`bench.bare_app` serving these bytes, as its own process."""
    job_file, list_file = work_dir / "bare-job.json", work_dir / "bare-jobs.json"
    job_file.write_bytes(job)
    list_file.write_bytes(jobs)
    port = free_port()
    command = [
        sys.executable, "-m", "bench.bare_app", "--port", str(port), "--job", str(job_file),
        "--list", str(list_file),
    ]  # fmt: skip
    with (work_dir / f"bare-{port}.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(f"{url}/healthz", process, timeout_s)
        yield Running(url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not become ready in {timeout_s}s")


class Api:
    """The jobs API as a client of SPEC §2 uses it (keep-alive, API key header)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=10)

    def close(self) -> None:
        self.http.close()

    @staticmethod
    def jobs_path(library_id: uuid.UUID) -> str:
        return f"/api/v1/libraries/{library_id}/jobs"

    def new_library(self) -> uuid.UUID:
        library_id = uuid.uuid4()
        self._ok(self.http.put(f"/api/v1/libraries/{library_id}", json={"name": "bench"}))
        return library_id

    def create_job(self, library_id: uuid.UUID) -> tuple[uuid.UUID, str]:
        """Returns the new job's id and ETag."""
        reply = self._ok(
            self.http.post(
                self.jobs_path(library_id),
                content=CREATE_JOB_BODY,
                headers={"Content-Type": "application/json"},
            )
        )
        return uuid.UUID(reply.json()["id"]), reply.headers["ETag"]

    def patch_job(self, library_id: uuid.UUID, job_id: uuid.UUID, changes: dict[str, Any]) -> str:
        """Returns the new ETag."""
        reply = self.http.patch(f"{self.jobs_path(library_id)}/{job_id}", json=changes)
        return self._ok(reply).headers["ETag"]

    def get(self, path: str) -> httpx.Response:
        return self._ok(self.http.get(path))

    @staticmethod
    def _ok(reply: httpx.Response) -> httpx.Response:
        if reply.status_code >= 300:
            raise RuntimeError(
                f"{reply.request.method} {reply.request.url}: {reply.status_code} {reply.text}"
            )
        return reply

    def headers(self) -> dict[str, str]:
        return {"X-API-Key": API_KEY}
