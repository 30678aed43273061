"""The persisted views' generations and the swap (`projections.sqlview`), on SQLite and PostgreSQL: a swap
never moves the rows back, the projector never writes changes older than the rows, a load sees one
generation whole, and the projector of a `Service` writes its refused changes once it has caught up."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import pytest

from projections.readmodels import ReadModels
from projections.rows import ViewRow
from projections.sqlview import VIEWS_NAME, PostgresViewStore, RebuildBusy, SqliteViewStore, next_generation
from service.adapters.store import PostgresTarget, StoreReader, ensure_schema
from service.bootstrap import Service, view_store
from service.domain.jobs import PatchDraft
from service.settings import Settings
from tests.integration.harness import ctx, job_draft

pytestmark = pytest.mark.integration

ViewStore = SqliteViewStore | PostgresViewStore


def row(key: str, payload: bytes = b"{}") -> ViewRow:
    return ViewRow("job", key, "lib", payload)


@pytest.fixture
def views(settings: Settings) -> Iterator[ViewStore]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.database_url is not None:  # a service makes its schema when it opens the store; here first
        ensure_schema(PostgresTarget.from_url(settings.database_url))
    store = view_store(settings, VIEWS_NAME)
    yield store
    store.close()


@pytest.fixture
def other(settings: Settings) -> Iterator[ViewStore]:
    """The same view, as another process opens it."""
    store = view_store(settings, VIEWS_NAME)
    yield store
    store.close()


def keys(rows: list[ViewRow]) -> dict[str, bytes]:
    return {r.key: r.payload for r in rows}


def by_key(rows: list[ViewRow]) -> list[ViewRow]:
    return sorted(rows, key=lambda r: (r.kind, r.key))


def test_generations_are_named_after_the_view() -> None:
    assert next_generation("views_v2", "views_v2") == "views_v2.1"
    assert next_generation("views_v2", "views_v2.9") == "views_v2.10"


def test_a_swap_replaces_the_rows_and_the_position_at_once(views: ViewStore, other: ViewStore) -> None:
    assert views.write(10, [row("a"), row("b")], [], replace_all=True)
    table = views.begin_rebuild()
    assert table == f"{VIEWS_NAME}.1"
    views.write_staged(table, [row("a", b"new"), row("c")], fresh=True)
    views.write_staged(table, [row("d")], [("job", "c")])
    assert other.load() == (10, [row("a"), row("b")])  # not live yet

    swap = views.swap(table, 12)
    assert (swap.done, swap.live_position, swap.replaced) == (True, 10, VIEWS_NAME)
    position, rows = other.load()
    assert (position, keys(rows)) == (12, {"a": b"new", "d": b"{}"})
    views.drop_rows(swap.replaced)
    views.end_rebuild()
    status = other.status()
    assert (status.table, status.position, status.rows) == (table, 12, {"job": 2})

    assert other.write(13, [row("e")], [("job", "a")])  # the projector writes on into the live generation
    assert keys(views.load()[1]) == {"d": b"{}", "e": b"{}"}


def test_a_swap_behind_the_live_rows_is_refused_unless_forced(views: ViewStore, other: ViewStore) -> None:
    assert other.write(20, [row("a")], [], replace_all=True)
    table = views.begin_rebuild()
    views.write_staged(table, [row("old")], fresh=True)
    refused = views.swap(table, 19)
    assert (refused.done, refused.live_position) == (False, 20)
    assert other.load() == (20, [row("a")])
    assert views.swap(table, 19, force=True).done  # the rows claim a position the store never reached
    assert other.load() == (19, [row("old")])


def test_the_projector_never_writes_changes_behind_the_rows(views: ViewStore, other: ViewStore) -> None:
    assert other.write(5, [row("a")], [], replace_all=True)
    table = views.begin_rebuild()
    views.write_staged(table, [row("a", b"rebuilt")], fresh=True)
    assert views.swap(table, 9).done

    assert not other.write(7, [row("a", b"stale")], [])  # behind the swap: nothing written
    assert other.load() == (9, [row("a", b"rebuilt")])
    assert other.write(9, [row("b")], [])
    assert other.write(11, [row("a", b"newer")], [])
    position, rows = other.load()
    assert (position, keys(rows)) == (11, {"a": b"newer", "b": b"{}"})
    assert other.write(3, [row("z")], [], replace_all=True)  # a whole snapshot may go back
    assert other.load() == (3, [row("z")])


def test_one_rebuild_at_a_time_and_leftovers_are_dropped(views: ViewStore, other: ViewStore) -> None:
    assert views.write(1, [row("a")], [], replace_all=True)
    first = views.begin_rebuild()
    views.write_staged(first, [row("half")], fresh=True)
    with pytest.raises(RebuildBusy):
        other.begin_rebuild()
    views.end_rebuild()  # as if that rebuild had died before its swap
    assert other.begin_rebuild() == first  # the same generation again, emptied
    assert other.status().rows == {"job": 1}
    other.write_staged(first, [row("b")], fresh=True)
    assert other.swap(first, 1).done
    assert keys(views.load()[1]) == {"b": b"{}"}
    with pytest.raises(ValueError, match="live generation"):
        other.drop_rows(first)
    with pytest.raises(ValueError, match="not a generation"):
        other.write_staged(VIEWS_NAME, [row("x")])
    other.end_rebuild()


async def test_the_projector_writes_refused_changes_once_it_is_past_the_swapped_rows(
    settings: Settings,
) -> None:
    """`Service.persist_views` against a rebuild that swapped in rows ahead of the process's models."""
    svc = Service(settings)  # not started: this test moves its models by hand
    try:
        library_id = uuid4()
        svc.commands.upsert_library(library_id, "Comics", ctx())
        job_id = svc.commands.create_job(library_id, job_draft(name="first"), ctx()).id
        reader = StoreReader(svc.commands)
        svc.models.apply(reader.read(0, 100))
        await svc.persist_views()  # newly leading: every row
        for name in ("second", "third"):
            svc.commands.update_job(library_id, job_id, PatchDraft(name=name), ctx())
        end = reader.max_position()
        rebuilt = ReadModels()
        rebuilt.apply(reader.read(0, 100))
        table = svc.views.begin_rebuild()
        svc.views.write_staged(table, rebuilt.dump()[1], fresh=True)
        assert svc.views.swap(table, end).done
        svc.views.end_rebuild()

        svc.models.apply(reader.read(svc.models.position(), 1))  # "second": behind the swapped rows
        await svc.persist_views()
        position, rows = svc.views.load()
        assert (position, by_key(rows)) == (end, by_key(rebuilt.dump()[1]))  # refused, kept for later
        svc.commands.update_job(library_id, job_id, PatchDraft(name="fourth"), ctx())
        svc.models.apply(reader.read(svc.models.position(), 100))
        await svc.persist_views()
        position, rows = svc.views.load()
        assert position == reader.max_position()
        assert by_key(rows) == by_key(svc.models.dump()[1])
        assert b'"name":"fourth"' in next(r.payload for r in rows if r.kind == "job")
    finally:
        svc.executor.shutdown()
        svc.views.close()
        svc.relay_tracking.close()
        close = getattr(svc.idempotency, "close", None)
        if close is not None:
            close()
        svc.commands.close()
