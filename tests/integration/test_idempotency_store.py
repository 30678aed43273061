"""The idempotency records (SPEC §2.1) in a real SQLite file and in real PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from service.adapters.idempotency import TTL_S, PostgresIdempotencyStore, SqliteIdempotencyStore
from service.adapters.store import PostgresTarget, ensure_schema
from service.ports import IdempotencyStore, StoredResponse

pytestmark = pytest.mark.integration

Open = Callable[..., IdempotencyStore]  # open(ttl_s=...) -> a store on the same place as before
SHORT_TTL_S = 0.5

CREATED = StoredResponse(
    fingerprint="a" * 64,
    status=201,
    body=b'{"id":"1","name":"Nightly \xe2\x80\x94 ratings"}\x00\xff',  # any bytes, kept as they are
    headers={"content-type": "application/json", "location": "/api/v1/libraries/l/jobs/1", "etag": '"1"'},
)


@pytest.fixture
def open_store(tmp_path: Path, database_url: str | None) -> Iterator[Open]:
    """Opens idempotency stores on one SQLite file or one PostgreSQL schema; closes them afterwards."""
    opened: list[IdempotencyStore] = []

    def open_(ttl_s: float = TTL_S) -> IdempotencyStore:
        store: IdempotencyStore
        if database_url is None:
            store = SqliteIdempotencyStore(tmp_path / "state.sqlite3", ttl_s=ttl_s)
        else:
            target = PostgresTarget.from_url(database_url)
            ensure_schema(target)  # as the service's store set-up does before
            store = PostgresIdempotencyStore(target, ttl_s=ttl_s)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        close = getattr(store, "close", None)
        if close is not None:
            close()


def stored_keys(tmp_path: Path, database_url: str | None) -> list[str]:
    """The keys physically in the table, expired or not."""
    if database_url is None:
        with sqlite3.connect(tmp_path / "state.sqlite3") as conn:
            return sorted(row[0] for row in conn.execute("SELECT key FROM idempotency"))
    target = PostgresTarget.from_url(database_url)
    table = sql.Identifier(target.schema, "libjobs_idempotency")
    with psycopg.connect(target.conninfo()) as conn:
        return sorted(row[0] for row in conn.execute(sql.SQL("SELECT key FROM {}").format(table)))


def test_put_then_get_returns_the_first_response(open_store: Open) -> None:
    store = open_store()
    assert store.get("key-1") is None

    store.put("key-1", CREATED)

    assert store.get("key-1") == CREATED
    assert store.get("key-2") is None
    replaced = StoredResponse("b" * 64, 200, b"{}", {})
    store.put("key-1", replaced)
    assert store.get("key-1") == replaced


def test_records_survive_reopening(open_store: Open) -> None:
    open_store().put("key-1", CREATED)
    assert open_store().get("key-1") == CREATED


def test_records_are_shared_by_every_thread(open_store: Open) -> None:
    store = open_store()
    seen: list[StoredResponse | None] = []
    writer = threading.Thread(target=store.put, args=("key-1", CREATED))
    writer.start()
    writer.join()
    reader = threading.Thread(target=lambda: seen.append(store.get("key-1")))
    reader.start()
    reader.join()
    assert seen == [CREATED]


def test_records_older_than_the_ttl_are_gone(
    open_store: Open, tmp_path: Path, database_url: str | None
) -> None:
    store = open_store(ttl_s=SHORT_TTL_S)
    store.put("old", CREATED)
    assert store.get("old") == CREATED

    time.sleep(SHORT_TTL_S + 0.1)

    assert store.get("old") is None
    assert open_store(ttl_s=SHORT_TTL_S).get("old") is None  # also for another process
    store.put("new", CREATED)  # writing clears out what expired
    assert stored_keys(tmp_path, database_url) == ["new"]
    assert store.get("new") == CREATED
    # The TTL is the reader's: with the standard 24 h, the same record is still valid.
    assert open_store().get("new") == CREATED
