"""`libjobs projections rebuild` (SPEC §8): a rebuild equals the live read models byte for byte, and a
rebuild while writes go on (and the projector goes on writing) ends consistent.

The histories are written through the real `LibraryJobs` on a real store; the "live" side is what a
running process does with them: read models that follow the store (in batches of any size), write their
changed rows with the projector's rules (`Service.persist_views`), and restart from the persisted rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4, uuid5

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.readmodels import ReadModels
from projections.rebuild import RebuildReport, compare, rebuild, replay
from projections.rows import ViewRow
from projections.sqlview import VIEWS_NAME, PostgresViewStore, SqliteViewStore
from service.adapters.store import StoreReader, store_env
from service.application import ItemRefresh, LibraryJobs, RunCounts
from service.bootstrap import view_store
from service.domain.errors import Conflict, NotFound, PreconditionFailed, ValidationFailed
from service.domain.jobs import ConfigDraft, PatchDraft, ProviderInfo, ValidationPolicy
from service.settings import Settings
from tests.integration.harness import (
    PLUGIN,
    PROVIDER,
    T0,
    StepClock,
    book_state,
    ctx,
    eventually,
    job_draft,
    running,
    series_state,
)

pytestmark = pytest.mark.integration

ViewStore = SqliteViewStore | PostgresViewStore
LIBRARIES = (UUID("aaaaaaaa-0000-4000-8000-000000000001"), UUID("bbbbbbbb-0000-4000-8000-000000000002"))
ITEMS = [uuid5(LIBRARIES[0], f"item {i}") for i in range(6)]
CRONS = ("0 4 * * *", "*/5 * * * *", "0 0 1 * *", "30 2 * * 0", "15 * * * *")
ZONES = (None, "UTC", "Europe/Paris", "America/New_York")
STATUSES = ("success", "partial", "failure", "cancelled")
ERRORS = (Conflict, NotFound, PreconditionFailed, ValidationFailed)


def _providers(name: str) -> ProviderInfo | None:
    known = ProviderInfo(enabled=True, capabilities=frozenset({"series", "book"}))
    return known if name == PLUGIN else None


def store_app(settings: Settings, **kwargs: Any) -> LibraryJobs:
    env = store_env(data_dir=settings.data_dir, database_url=settings.database_url, pool_size=2,
                    lock_timeout_s=settings.lock_timeout_s)  # fmt: skip
    return LibraryJobs(env, providers=_providers, policy=ValidationPolicy(min_interval_s=0), **kwargs)


@contextmanager
def rebuild_tools(settings: Settings) -> Iterator[tuple[ViewStore, StoreReader]]:
    """What `libjobs projections rebuild` opens: the store (read only) and the persisted views."""
    app = store_app(settings, library_contents=lambda _: None)
    views = view_store(settings, VIEWS_NAME)
    try:
        yield views, StoreReader(app)
    finally:
        views.close()
        app.close()


def run_rebuild(views: ViewStore, reader: StoreReader, **kwargs: Any) -> RebuildReport:
    return rebuild(views, reader.read, reader.max_position, batch=7, **kwargs)  # small batches: many steps


def replayed(reader: StoreReader, until: int | None = None) -> tuple[int, list[ViewRow]]:
    models = ReadModels()
    replay(models, reader.read, until=until)
    return models.dump()


def by_key(rows: list[ViewRow]) -> list[ViewRow]:
    return sorted(rows, key=lambda r: (r.kind, r.key))


class World:
    """One store, written by commands, and one process's read models following it and persisting them
    as the projector does (`Service.persist_views`)."""

    def __init__(self, settings: Settings) -> None:
        self.app = store_app(settings, library_contents=self._contents, clock=StepClock())
        self.reader = StoreReader(self.app)
        self.views = view_store(settings, VIEWS_NAME)
        self.live = ReadModels()
        self.leading = False
        self.oracle = ReadModels()  # follows the store fully, for the commands (the live one may lag)
        self.created: list[tuple[UUID, UUID]] = []
        self.fires = 0
        self.rebuilds: list[RebuildReport] = []
        self.refused = 0

    def close(self) -> None:
        self.views.close()
        self.app.close()

    def _contents(self, library_id: UUID) -> Any:
        replay(self.oracle, self.reader.read)
        return self.oracle.library_contents(library_id)

    # --- the live process ---------------------------------------------------------------------------

    def follow(self, limit: int | None = None) -> None:
        replay(self.live, self.reader.read, until=None if limit is None else self.live.position() + limit,
               batch=limit or 1000, keep_changes=True)  # fmt: skip

    def persist(self) -> None:
        if not self.leading:  # newly leading: every row
            position, rows = self.live.dump()
            self.live.forget_changes()
            assert self.views.write(position, rows, [], replace_all=True)
            self.leading = True
            return
        position, upserts, deletes = self.live.take_changes()
        if (upserts or deletes) and not self.views.write(position, upserts, deletes):
            self.refused += 1
            self.live.keep_changes(upserts, deletes)

    def restart(self, graceful: bool) -> None:
        if graceful:
            self.follow()
            self.persist()
        self.live = ReadModels()
        self.live.restore(*self.views.load())
        self.leading = False

    def rebuild(self) -> None:
        self.rebuilds.append(run_rebuild(self.views, self.reader))

    # --- commands -----------------------------------------------------------------------------------

    def step(self, op: str, seed: int) -> None:
        rnd = random.Random(seed)
        with contextlib.suppress(*ERRORS):  # refused as the API would refuse it: nothing stored
            getattr(self, f"_{op}")(rnd)

    def _library(self, rnd: random.Random) -> None:
        self.app.upsert_library(rnd.choice(LIBRARIES), rnd.choice(["Comics", "Manga", "Books"]), ctx())

    def _delete_library(self, rnd: random.Random) -> None:
        self.app.delete_library(rnd.choice(LIBRARIES), ctx())

    def _create(self, rnd: random.Random) -> None:
        draft = job_draft(
            name=rnd.choice([None, "Nightly", "Weekly", "Every five"]),
            cron_schedule=rnd.choice(CRONS),
            timezone=rnd.choice(ZONES),
            enabled=rnd.random() < 0.7,
            config=ConfigDraft(provider=PROVIDER, scope=rnd.choice(["series_only", "series_and_books"])),
        )
        library_id = rnd.choice(LIBRARIES)
        self.created.append((library_id, self.app.create_job(library_id, draft, ctx()).id))

    def _job(self, rnd: random.Random) -> tuple[UUID, UUID]:
        if not self.created:
            raise NotFound("no job yet")
        return rnd.choice(self.created)

    def _patch(self, rnd: random.Random) -> None:
        library_id, job_id = self._job(rnd)
        patch = rnd.choice([
            PatchDraft(name=f"renamed {rnd.randrange(5)}"),
            PatchDraft(enabled=rnd.random() < 0.5),
            PatchDraft(cron_schedule=rnd.choice(CRONS), enabled=True),
            PatchDraft(timezone=rnd.choice(ZONES)),
        ])  # fmt: skip
        self.app.update_job(library_id, job_id, patch, ctx())

    def _delete(self, rnd: random.Random) -> None:
        library_id, job_id = self._job(rnd)
        self.app.delete_job(library_id, job_id, ctx())

    def _fire(self, rnd: random.Random) -> None:
        _, job_id = self._job(rnd)
        self.fires += rnd.randrange(1, 4)
        trigger = rnd.choice(["schedule", "schedule", "catchup", "missed"])
        self.app.request_run(job_id, T0 + timedelta(minutes=5 * self.fires), trigger, ctx(actor="scheduler"),
                             missed_fires=rnd.randrange(3) if trigger != "schedule" else 0)  # fmt: skip

    def _run_now(self, rnd: random.Random) -> None:
        library_id, job_id = self._job(rnd)
        self.app.run_now(library_id, job_id, ctx())

    def _current_run(self, rnd: random.Random) -> tuple[UUID, UUID]:
        _, job_id = self._job(rnd)
        run_id = self.app.repository.get(job_id).current_run_id
        if run_id is None:
            raise NotFound("no run in flight")
        return job_id, run_id

    def _start(self, rnd: random.Random) -> None:
        job_id, run_id = self._current_run(rnd)
        self.app.start_run(job_id, run_id, ctx(actor="executor"), max_attempts=2)

    def _counts(self, rnd: random.Random) -> RunCounts:
        done = rnd.randrange(10)
        progress = {"planned": 10, "done": done, "succeeded": done // 2, "failed": done - done // 2}
        return RunCounts(progress, {"no_match": rnd.randrange(3)}, rnd.randrange(20))

    def _progress(self, rnd: random.Random) -> None:
        job_id, run_id = self._current_run(rnd)
        items = [
            ItemRefresh(kind, item_id, PROVIDER, f"ext-{rnd.randrange(3)}", None,
                        {"summary": {"before": None, "after": f"text {rnd.randrange(5)}"}}, [])
            for kind, item_id in rnd.sample([("series", i) for i in ITEMS] + [("book", i) for i in ITEMS], 2)
        ]  # fmt: skip
        self.app.record_items(job_id, run_id, items, self._counts(rnd), ctx(actor="executor"))

    def _finish(self, rnd: random.Random) -> None:
        job_id, run_id = self._current_run(rnd)
        self.app.finish_run(job_id, run_id, rnd.choice(STATUSES), "done", T0, self._counts(rnd),
                            ctx(actor="executor"))  # fmt: skip

    def _record(self, rnd: random.Random) -> None:
        _, job_id = self._job(rnd)
        started = T0 + timedelta(minutes=rnd.randrange(600))
        self.app.record_run(job_id, uuid4(), rnd.choice(STATUSES), rnd.choice([None, "ok"]), started,
                            started + timedelta(seconds=30), {"planned": 2, "done": 2}, ctx())  # fmt: skip

    def _series(self, rnd: random.Random) -> None:
        title = rnd.choice(["Akira", "Berserk", "Monster"])
        self.app.upsert_series(rnd.choice(LIBRARIES), rnd.choice(ITEMS), series_state(title), ctx())

    def _book(self, rnd: random.Random) -> None:
        state = book_state(rnd.choice(ITEMS), rnd.choice(["Vol. 1", "Vol. 2"]))
        self.app.upsert_book(rnd.choice(LIBRARIES), rnd.choice(ITEMS), state, ctx())

    def _delete_item(self, rnd: random.Random) -> None:
        delete = rnd.choice([self.app.delete_series, self.app.delete_book])
        delete(rnd.choice(LIBRARIES), rnd.choice(ITEMS), ctx())

    def _follow(self, rnd: random.Random) -> None:
        self.follow(rnd.randrange(1, 20))

    def _persist(self, rnd: random.Random) -> None:
        self.follow(rnd.randrange(0, 10))
        self.persist()

    def _restart(self, rnd: random.Random) -> None:
        self.restart(graceful=rnd.random() < 0.7)

    def _rebuild(self, rnd: random.Random) -> None:
        self.rebuild()


OPS = [
    *["create"] * 4, *["patch"] * 3, "delete", *["fire"] * 4, "run_now", *["start"] * 3, *["progress"] * 3,
    *["finish"] * 2, "record", *["library"] * 2, "delete_library", *["series"] * 2, "book", "delete_item",
    *["follow"] * 3, *["persist"] * 3, "restart", "rebuild",
]  # fmt: skip
HISTORY = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 2**32)), min_size=20, max_size=160)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=HISTORY)
def test_a_rebuild_equals_the_live_models_byte_for_byte_after_any_history(
    history: list[tuple[str, int]],
) -> None:
    with tempfile.TemporaryDirectory(prefix="libjobs-rebuild-") as directory:
        world = World(Settings(data_dir=Path(directory)))
        try:
            world.step("library", 0)
            for op, seed in history:
                world.step(op, seed)
            world.follow()
            world.persist()
            end = world.reader.max_position()
            assert world.live.position() == end

            check = run_rebuild(world.views, world.reader, check_only=True)
            assert (check.compared_position, check.differences, check.examples) == (end, 0, [])
            assert check.consistent
            assert not check.swapped
            live_position, live_rows = world.views.load()
            assert live_position == end
            assert by_key(live_rows) == by_key(world.live.dump()[1])  # what a new process loads = memory

            report = run_rebuild(world.views, world.reader)
            assert report.swapped
            assert report.consistent
            assert report.position == end
            position, rows = world.views.load()
            assert position == end
            assert by_key(rows) == by_key(world.live.dump()[1])  # the rebuilt rows, byte for byte
            assert by_key(rows) == by_key(replayed(world.reader)[1])
            assert all(r.consistent for r in world.rebuilds)  # rebuilds in the middle found no difference
        finally:
            world.close()


def test_a_difference_is_found_and_a_rebuild_replaces_it(tmp_path: Path) -> None:
    world = World(Settings(data_dir=tmp_path))
    try:
        world.app.upsert_library(LIBRARIES[0], "Comics", ctx())
        for name in ("one", "two"):
            world.app.create_job(LIBRARIES[0], job_draft(name=name), ctx())
        world.follow()
        world.persist()
        position, rows = world.views.load()
        job = next(r for r in rows if r.kind == "job")
        tampered = ViewRow(
            job.kind, job.key, job.library_id, job.payload.replace(b'"version":1', b'"version":7')
        )
        stray = ViewRow("job", str(uuid4()), job.library_id, job.payload)
        assert world.views.write(position, [tampered, stray], [])
        before = world.views.load()

        check = run_rebuild(world.views, world.reader, check_only=True)
        assert check.differences == 2
        assert not check.consistent
        assert {(d.what, d.kind, d.key) for d in check.examples} == {
            ("different", "job", job.key),
            ("extra", "job", stray.key),
        }
        assert world.views.load() == before  # --check wrote nothing

        report = run_rebuild(world.views, world.reader)
        assert report.differences == 2
        assert report.swapped
        assert by_key(world.views.load()[1]) == by_key(world.live.dump()[1])
        assert run_rebuild(world.views, world.reader, check_only=True).consistent
    finally:
        world.close()


def test_compare_names_missing_extra_and_different_rows() -> None:
    a, b, c = (ViewRow("job", k, "lib", k.encode()) for k in "abc")
    changed = ViewRow("job", "b", "lib", b"other")
    assert [(d.what, d.key) for d in compare([a, changed, c], [a, b])] == [("different", "b"), ("extra", "c")]
    assert [(d.what, d.key) for d in compare([a], [a, b])] == [("missing", "b")]
    assert compare([a, b], [b, a]) == []


# --- a rebuild next to a running service ----------------------------------------------------------------


async def test_a_rebuild_while_writes_continue_ends_consistent(settings: Settings) -> None:
    """The service follows and persists (it leads the projector) while another thread writes and the
    rebuild runs, as the command would, from a process of its own (its own store connections)."""
    async with running(settings) as svc:
        library_id = uuid4()

        def seed() -> list[UUID]:
            svc.commands.upsert_library(library_id, "Comics", ctx())
            jobs = [
                svc.commands.create_job(library_id, job_draft(name=f"job {i}"), ctx()).id for i in range(100)
            ]
            for round_ in range(12):
                for job_id in jobs:
                    svc.commands.update_job(library_id, job_id, PatchDraft(name=f"round {round_}"), ctx())
            return jobs

        jobs = await svc.run_sync(seed)
        await svc.follower.catch_up()
        await svc.persist_views()
        stop = threading.Event()
        written = [0]

        def keep_writing() -> None:
            while not stop.is_set():
                job_id = jobs[written[0] % len(jobs)]
                svc.commands.update_job(library_id, job_id, PatchDraft(enabled=written[0] % 2 == 0), ctx())
                if written[0] % 7 == 0:
                    svc.commands.run_now(library_id, job_id, ctx())
                written[0] += 1

        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            with rebuild_tools(settings) as (views, reader):
                reports = [await asyncio.to_thread(run_rebuild, views, reader) for _ in range(2)]
        finally:
            stop.set()
            writer.join()
        assert written[0] > 0
        assert all(r.swapped and r.consistent for r in reports), reports
        assert reports[1].table == f"{VIEWS_NAME}.2"

        end = svc.reader.max_position()
        await svc.follower.catch_up()
        await eventually(lambda: svc.follower.position >= end)
        live = by_key(svc.models.dump()[1])
        for _ in range(200):  # the projector's own round may be writing the last rows meanwhile
            await svc.persist_views()
            position, rows = await svc.run_sync(svc.views.load)
            if by_key(rows) == live:
                break
            await asyncio.sleep(0.05)
        assert by_key(rows) == live
        assert position <= end
        with rebuild_tools(settings) as (views, reader):
            assert by_key(rows) == by_key(replayed(reader, end)[1])  # the projector wrote on top of the swap
            assert (await asyncio.to_thread(run_rebuild, views, reader, check_only=True)).consistent


async def test_a_new_process_loads_the_rebuilt_rows(settings: Settings) -> None:
    async with running(settings) as svc:
        library_id = uuid4()
        svc.commands.upsert_library(library_id, "Comics", ctx())
        job_id = svc.commands.create_job(library_id, job_draft(name="kept"), ctx()).id
        await svc.follower.catch_up()
        await svc.persist_views()
    with rebuild_tools(settings) as (views, reader):
        report = run_rebuild(views, reader)
    assert report.swapped
    assert report.consistent
    assert report.table == f"{VIEWS_NAME}.1"
    async with running(settings) as svc:
        assert svc.follower.position == report.position  # loaded, nothing to replay
        found = svc.models.job_json(library_id, job_id)
        assert found is not None
        assert b'"name":"kept"' in found[0]
