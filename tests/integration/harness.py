"""Helpers for the store-backed integration tests: settings, services, commands and the stored log.

Everything here drives the real `Service` (real SQLite files, real PostgreSQL); nothing is faked.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec
import uvicorn
from eventsourcing.persistence import IntegrityError

from contracts.catalog import UpsertBookRequest, UpsertSeriesRequest
from service.adapters.live import LiveEvents
from service.adapters.nats.embedded import free_port
from service.adapters.store import StoreReader
from service.application import Saved
from service.bootstrap import Service
from service.domain.errors import Conflict
from service.domain.jobs import ConfigDraft, CreateDraft, PatchDraft
from service.entrypoints.http.auth import Authenticator
from service.ports import CommandContext
from service.settings import PluginSpec, Settings

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)  # 11:00 in Paris
PLUGIN = "mangabaka"
PROVIDER = f"plugin:{PLUGIN}"
STOP_TIMEOUT_S = 30
# Declared capabilities: validation never has to start the plugin (it is never called in these tests).
PLUGINS = (PluginSpec(name=PLUGIN, command=("false",), capabilities=("series", "book")),)


# Without the scheduler: these tests write jobs with clocks of their own, whose fires must not be claimed
# by the real clock meanwhile. Scheduler tests ask for it (`roles=WITH_SCHEDULER`).
QUIET_ROLES = frozenset({"api", "projector"})
WITH_SCHEDULER = QUIET_ROLES | {"scheduler"}


def make_settings(tmp_path: Path, database_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"roles": QUIET_ROLES, "plugins": PLUGINS, **overrides}
    return Settings(data_dir=tmp_path / "data", database_url=database_url, **values)


@dataclass
class StepClock:
    """A deterministic clock: every reading is one second after the previous one. Thread-safe."""

    start: datetime = T0
    step: timedelta = timedelta(seconds=1)
    _readings: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> datetime:
        with self._lock:
            reading = self.start + self._readings * self.step
            self._readings += 1
            return reading


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test runner keeps its own signal handlers


@asynccontextmanager
async def served_over_http(
    settings: Settings, *, wait_s: float = 10
) -> AsyncIterator[tuple[str, Service, LiveEvents]]:
    """A `Service` behind a real uvicorn on a free port: its URL, the service and its live events, wired as
    bootstrap wires them but with a short keep-alive (0.2 s), so that a test can wait past one."""
    service = Service(settings)
    app = service.http_app(Authenticator(settings.api_keys, None))
    live = LiveEvents(idle_s=0.2)
    service.models.on_change = live.job_changed
    service.models.on_run_change = live.run_changed
    app.state["services"].live = live
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on", loop="asyncio"
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve())
    for _ in range(int(wait_s * 100)):
        if server.started or serving.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}", service, live
    finally:
        live.close()  # open streams end, so the server stops without waiting for them
        server.should_exit = True
        await asyncio.wait_for(serving, STOP_TIMEOUT_S)


@asynccontextmanager
async def running(settings: Settings, **kwargs: Any) -> AsyncIterator[Service]:
    """A started `Service`, stopped on exit (a stop that hangs fails the test instead of hanging it)."""
    svc = Service(settings, **kwargs)
    await svc.start()
    try:
        yield svc
    finally:
        await asyncio.wait_for(svc.stop(), STOP_TIMEOUT_S)


def ctx(request_id: str | None = None, actor: str = "key:test") -> CommandContext:
    return CommandContext(actor=actor, request_id=request_id or f"req-{uuid4().hex[:8]}")


def job_draft(name: str | None = "Nightly", **overrides: Any) -> CreateDraft:
    values: dict[str, Any] = {
        "name": name,
        "cron_schedule": "0 4 * * *",
        "timezone": "Europe/Paris",
        "config": ConfigDraft(provider=PROVIDER),
    }
    return CreateDraft(**(values | overrides))


def series_state(title: str, **overrides: Any) -> dict[str, Any]:
    """A series body exactly as the HTTP layer hands it to the application."""
    return msgspec.to_builtins(UpsertSeriesRequest(title=title, **overrides))  # type: ignore[no-any-return]


def book_state(series_id: UUID, title: str, **overrides: Any) -> dict[str, Any]:
    return msgspec.to_builtins(UpsertBookRequest(series_id=series_id, title=title, **overrides))  # type: ignore[no-any-return]


async def write(svc: Service, command: Callable[..., Saved], *args: Any, **kwargs: Any) -> Saved:
    """Runs a command as the HTTP layer does (in the store's pool) and waits until it is readable."""
    saved = await svc.run_sync(lambda: command(*args, **kwargs))
    await svc.follower.wait_for(saved.position)
    return saved


async def new_library(svc: Service, name: str = "Manga") -> UUID:
    library_id = uuid4()
    await write(svc, svc.commands.upsert_library, library_id, name, ctx())
    return library_id


async def new_job(svc: Service, library_id: UUID, **draft: Any) -> UUID:
    saved = await write(svc, svc.commands.create_job, library_id, job_draft(**draft), ctx())
    return saved.id


def rename(svc: Service, library_id: UUID, job_id: UUID, name: str, **kwargs: Any) -> Saved:
    """One user change of a job (synchronous: for threads and processes)."""
    return svc.commands.update_job(library_id, job_id, PatchDraft(name=name), ctx(), **kwargs)


def stored(svc: Service, after: int = 0) -> list[tuple[int, Any]]:
    """Every stored event after `after`, decoded, with its global position."""
    return StoreReader(svc.commands).read(after, 100_000)


def stored_topics(svc: Service, after: int = 0) -> list[str]:
    """The topics as they are written in the store (a public format)."""
    notifications = svc.commands.recorder.select_notifications(start=after + 1, limit=100_000)
    return [n.topic for n in notifications]


async def eventually(probe: Callable[[], bool], timeout_s: float = 5.0, every_s: float = 0.002) -> float:
    """Polls `probe` until it is true; returns how long that took (fails after `timeout_s`)."""
    started = time.perf_counter()
    while True:
        if probe():
            return time.perf_counter() - started
        elapsed = time.perf_counter() - started
        assert elapsed < timeout_s, f"not true within {timeout_s} s"
        await asyncio.sleep(every_s)


def race(*workers: Callable[[], Any]) -> list[Any]:
    """Runs the workers in threads released together; returns each one's result or exception, in order."""
    barrier = threading.Barrier(len(workers))

    def run(worker: Callable[[], Any]) -> Any:
        barrier.wait()
        try:
            return worker()
        except Exception as e:
            return e

    with ThreadPoolExecutor(len(workers)) as pool:
        return list(pool.map(run, workers))


def renames(tag: str, count: int) -> list[str]:
    return [f"{tag} {i}" for i in range(count)]


def rename_all(svc: Service, library_id: UUID, job_id: UUID, names: list[str]) -> list[str]:
    """Renames the job to each name in turn; returns the names whose rename was acknowledged.

    A rename whose optimistic-concurrency attempts all lose raises Conflict (the store's IntegrityError,
    before that was mapped): its caller hears of it, so it is no lost update, and it is left out here.
    `test_concurrency.py::test_racing_writers_all_succeed` checks that it does not happen in a plain race.
    """
    acknowledged = []
    for name in names:
        try:
            rename(svc, library_id, job_id, name)
        except (Conflict, IntegrityError):
            continue
        acknowledged.append(name)
    return acknowledged


READY = "ready"


def rename_in_a_process(
    settings: Settings, library_id: UUID, job_id: UUID, names: list[str], start: Any, results: Any
) -> None:
    """The body of a separate OS process: its own service on the same store, renaming the job.

    Puts `READY` on `results` once its service runs, then, after `start` is set, the acknowledged names;
    or the traceback of what went wrong.
    """

    async def main() -> list[str]:
        async with running(settings) as svc:
            results.put(READY)
            await asyncio.to_thread(start.wait, 60)
            return await svc.run_sync(rename_all, svc, library_id, job_id, names)

    try:
        results.put(asyncio.run(main()))
    except BaseException:
        results.put(traceback.format_exc())
        raise
