"""The persisted read models: one table of rows, updated in the same transaction as its tracking position.

Only one projector writes at a time (the leader: a PostgreSQL advisory lock, or a file lock next to the
SQLite file); every process keeps its own in-memory models and loads this table at start instead of
replaying the whole store. `VIEWS_NAME` carries the format: a new projection format is a new name, so an
old table is never read as if it were current (it is rebuilt from the store).

**Generations and the swap.** A view's rows are stored under a table name (`libjobs_view_rows.view`): the
view's own name until its first rebuild, then `<name>.<n>` for the n-th rebuild; `libjobs_view_names`
points from the view to its live generation. A rebuild (`projections.rebuild`) writes the next generation
without holding anything, then `swap`s the pointer and the tracking position in one short transaction, so
a process loading the view reads the old rows or the new ones, never a mix. Every writer of a view takes
its write lock first (SQLite: the database's, by writing before it reads; PostgreSQL: a transaction
advisory lock of the view), so the projector's `write` and a `swap` are serialised. Neither moves the rows
back: a swap behind the rows the projector wrote is refused (the rebuild reads on and swaps again), and
the projector's changes behind swapped-in rows are refused (it keeps them and writes them once it has
caught up past them). Only a full rewrite (`replace_all`, a newly leading projector) may go back: it is
a whole consistent snapshot.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from projections.rows import ViewRow

VIEWS_NAME = "views_v2"
RELAY_NAME = "relay_v1"  # the relay (service.adapters.nats.relay) keeps only its position here
TABLE = "libjobs_view_rows"
NAMES_TABLE = "libjobs_view_names"  # view name → the generation (`view` of its rows) that is live
CHUNK = 20_000  # rows per transaction when a generation that is not live is written
DROP_CHUNK = 50_000  # rows per transaction when one is dropped (SQLite: the database's lock is held)


@dataclass(frozen=True)
class ViewStatus:
    name: str
    table: str  # the live generation: the `view` its rows are stored under
    position: int  # the rows include every event up to here
    rows: dict[str, int]  # kind → how many


@dataclass(frozen=True)
class Swap:
    done: bool  # False: the live rows were ahead of the new ones, nothing changed
    live_position: int  # the live rows' position before the swap
    replaced: str  # the generation that was live before


class RebuildBusy(Exception):
    """Another rebuild of this view is running."""


def next_generation(name: str, live: str) -> str:
    """The table name of the generation after the live one."""
    number = 0 if live == name else int(live.rsplit(".", 1)[1])
    return f"{name}.{number + 1}"


def _generations(name: str) -> tuple[str, str]:
    """Every `<name>.<n>` sorts strictly between these two."""
    return f"{name}.", f"{name}/"


def _lock_key(schema: str, name: str) -> int:
    """The advisory lock of the projector that writes these views. Advisory locks are database-wide:
    the key names the schema, so deployments sharing a database (one schema each) do not exclude
    each other."""
    digest = hashlib.sha256(f"libjobs:{schema}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _flock(path: Path) -> int | None:
    """An exclusive lock on the file, held by the returned descriptor; None when someone holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class SqliteViewStore(SQLiteTrackingRecorder):
    def __init__(self, path: Path, name: str = VIEWS_NAME) -> None:
        super().__init__(SQLiteDatastore(str(path), lock_timeout=10))
        self.name = name
        self._lock_path = path.with_name(f"{path.stem}.{name}.lock")  # one leader per name
        self._rebuild_lock_path = path.with_name(f"{path.stem}.{name}.rebuild.lock")  # one rebuild
        self._lock_fd: int | None = None
        self._rebuild_fd: int | None = None
        self.create_table()

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            "CREATE TABLE IF NOT EXISTS libjobs_view_rows (view TEXT, kind TEXT, key TEXT, library_id TEXT,"
            " payload BLOB NOT NULL, PRIMARY KEY (view, kind, key))",
            "CREATE TABLE IF NOT EXISTS libjobs_view_names (name TEXT PRIMARY KEY, physical TEXT NOT NULL)",
        ]

    def try_lead(self) -> bool:
        if self._lock_fd is None:
            self._lock_fd = _flock(self._lock_path)
        return self._lock_fd is not None

    # --- in a transaction ---------------------------------------------------------------------------

    def _hold(self, c: Any) -> None:
        """The first statement of a writing transaction: a write (of nothing), so that the transaction
        holds the database's write lock before it reads (a transaction that read first cannot write if
        another connection wrote in between: SQLITE_BUSY_SNAPSHOT)."""
        c.execute("UPDATE libjobs_view_names SET physical = physical WHERE name = ?", (self.name,))

    def _live(self, c: Any) -> str:
        c.execute("SELECT physical FROM libjobs_view_names WHERE name = ?", (self.name,))
        found = c.fetchone()
        return self.name if found is None else str(found[0])

    def _position(self, c: Any) -> int:
        return int(self._max_tracking_id(self.name, c) or 0)

    def _put_position(self, c: Any, position: int) -> None:
        c.execute(
            "INSERT INTO tracking VALUES (?, ?) ON CONFLICT (application_name)"
            " DO UPDATE SET notification_id = excluded.notification_id",
            (self.name, position),
        )

    @staticmethod
    def _put_rows(c: Any, table: str, upserts: Sequence[ViewRow], deletes: Sequence[tuple[str, str]]) -> None:
        c.executemany(
            "DELETE FROM libjobs_view_rows WHERE view = ? AND kind = ? AND key = ?",
            [(table, kind, key) for kind, key in deletes],
        )
        c.executemany(
            "INSERT OR REPLACE INTO libjobs_view_rows VALUES (?, ?, ?, ?, ?)",
            [(table, r.kind, r.key, r.library_id, r.payload) for r in upserts],
        )

    # --- the live rows ------------------------------------------------------------------------------

    def load(self) -> tuple[int, list[ViewRow]]:
        with self.datastore.transaction(commit=False) as c:  # one snapshot: rows and position agree
            table = self._live(c)
            position = self._position(c)
            select = "SELECT kind, key, library_id, payload FROM libjobs_view_rows WHERE view = ?"
            c.execute(select, (table,))
            rows = list(map(ViewRow._make, c.fetchall()))  # (a BLOB is read as bytes)
        return position, rows

    def save(
        self,
        position: int,
        upserts: Sequence[ViewRow],
        deletes: Sequence[tuple[str, str]],
        *,
        replace_all: bool = False,
    ) -> None:
        """`write`, for a writer that does not mind a refusal (the relay keeps only its position)."""
        self.write(position, upserts, deletes, replace_all=replace_all)

    def write(
        self,
        position: int,
        upserts: Sequence[ViewRow],
        deletes: Sequence[tuple[str, str]],
        *,
        replace_all: bool = False,
    ) -> bool:
        """Writes the changes up to `position`, or every row (`replace_all`: the position may go back).
        False, and nothing written, when the live rows are past `position` (a rebuild swapped them in)."""
        with self.datastore.transaction(commit=True) as c:
            self._hold(c)
            stored = self._position(c)
            if position < stored and not replace_all:
                return False
            table = self._live(c)
            if replace_all:
                c.execute("DELETE FROM libjobs_view_rows WHERE view = ?", (table,))
            self._put_rows(c, table, upserts, deletes)
            if position != stored:
                self._put_position(c, position)
        return True

    def status(self) -> ViewStatus:
        with self.datastore.transaction(commit=False) as c:
            table = self._live(c)
            position = self._position(c)
            c.execute("SELECT kind, count(*) FROM libjobs_view_rows WHERE view = ? GROUP BY kind", (table,))
            rows = {str(kind): int(count) for kind, count in c.fetchall()}
        return ViewStatus(self.name, table, position, rows)

    # --- rebuilding ---------------------------------------------------------------------------------

    def begin_rebuild(self) -> str:
        """Takes this view's rebuild lock (`RebuildBusy` when another rebuild holds it), drops what an
        unfinished rebuild left, and returns the table name of the next generation."""
        if self._rebuild_fd is None:
            self._rebuild_fd = _flock(self._rebuild_lock_path)
            if self._rebuild_fd is None:
                raise RebuildBusy(f"another rebuild of {self.name} is running")
        low, high = _generations(self.name)
        with self.datastore.transaction(commit=False) as c:
            live = self._live(c)
            c.execute(
                "SELECT DISTINCT view FROM libjobs_view_rows WHERE view = ? OR (view > ? AND view < ?)",
                (self.name, low, high),
            )
            tables = [str(r[0]) for r in c.fetchall()]
        for table in tables:
            if table != live:
                self.drop_rows(table)
        return next_generation(self.name, live)

    def write_staged(
        self,
        table: str,
        upserts: Sequence[ViewRow],
        deletes: Sequence[tuple[str, str]] = (),
        *,
        fresh: bool = False,
    ) -> None:
        """Writes rows of a generation that is not live yet, `CHUNK` per transaction (a projector's write
        waits for one chunk at most). `fresh`: the generation holds none of these rows yet."""
        if table == self.name or not table.startswith(f"{self.name}."):
            raise ValueError(f"{table!r} is not a generation of {self.name}")
        for start in range(0, max(len(upserts), len(deletes)), CHUNK):
            with self.datastore.transaction(commit=True) as c:
                self._put_rows(c, table, upserts[start : start + CHUNK], deletes[start : start + CHUNK])

    def swap(self, table: str, position: int, *, force: bool = False) -> Swap:
        """Makes `table` (complete up to `position`) the live generation, with its position, in one
        transaction; refused when the live rows are past `position`, unless `force`."""
        with self.datastore.transaction(commit=True) as c:
            self._hold(c)
            live_position, live = self._position(c), self._live(c)
            if live_position > position and not force:
                return Swap(False, live_position, live)
            c.execute(
                "INSERT INTO libjobs_view_names VALUES (?, ?) ON CONFLICT (name)"
                " DO UPDATE SET physical = excluded.physical",
                (self.name, table),
            )
            if position != live_position:
                self._put_position(c, position)
        return Swap(True, live_position, live)

    def drop_rows(self, table: str) -> None:
        """Deletes a generation that is not live, `DROP_CHUNK` rows per transaction."""
        while True:
            with self.datastore.transaction(commit=True) as c:
                self._hold(c)
                if table == self._live(c):
                    raise ValueError(f"{table!r} is the live generation of {self.name}")
                c.execute(
                    "DELETE FROM libjobs_view_rows WHERE rowid IN"
                    " (SELECT rowid FROM libjobs_view_rows WHERE view = ? LIMIT ?)",
                    (table, DROP_CHUNK),
                )
                c.execute("SELECT changes()")
                if c.fetchone()[0] < DROP_CHUNK:
                    return

    def end_rebuild(self) -> None:
        if self._rebuild_fd is not None:
            os.close(self._rebuild_fd)
            self._rebuild_fd = None

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self.end_rebuild()
        self.datastore.close()


class PostgresViewStore(PostgresTrackingRecorder):
    def __init__(self, conninfo: dict[str, Any], schema: str, name: str = VIEWS_NAME) -> None:
        datastore = PostgresDatastore(
            dbname=conninfo["dbname"],
            host=conninfo["host"],
            port=str(conninfo["port"]),
            user=conninfo["user"],
            password=conninfo["password"],
            schema=schema,
            pool_size=2,
            lock_timeout=10,
            pre_ping=True,
        )
        super().__init__(datastore, tracking_table_name="libjobs_view_tracking")
        self.name = name
        self._conninfo = conninfo
        self._schema = schema
        self._table = Identifier(schema, TABLE)
        self._names = Identifier(schema, NAMES_TABLE)
        self._tracking = Identifier(schema, self.tracking_table_name)
        self._leader: psycopg.Connection[Any] | None = None
        self._rebuilder: psycopg.Connection[Any] | None = None
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {} (view TEXT, kind TEXT, key TEXT, library_id TEXT,"
                " payload BYTEA NOT NULL, PRIMARY KEY (view, kind, key))"
            ).format(self._table)
        )
        self.sql_create_statements.append(
            SQL("CREATE TABLE IF NOT EXISTS {} (name TEXT PRIMARY KEY, physical TEXT NOT NULL)").format(
                self._names
            )
        )
        self.create_table()

    def try_lead(self) -> bool:
        """Holds a session advisory lock on a connection of its own while this process leads.

        The connection is checked on every call: if it died, the lock died with it and another
        process may lead now, so this one must try again rather than go on writing.
        """
        if self._leader is not None:
            try:
                self._leader.execute("SELECT 1")
                return True
            except psycopg.Error:
                self._leader.close()
                self._leader = None
        self._leader = self._session_lock(self.name)
        return self._leader is not None

    def _session_lock(self, name: str) -> psycopg.Connection[Any] | None:
        """A connection holding the session advisory lock of `name` in this schema; None if it is held."""
        conn = psycopg.connect(autocommit=True, connect_timeout=5, **self._conninfo)
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(self._schema, name),)).fetchone()
        if row is None or not row[0]:
            conn.close()
            return None
        return conn

    # --- in a transaction ---------------------------------------------------------------------------

    def _hold(self, c: Any) -> None:
        """The view's write lock, until the transaction ends."""
        c.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(self._schema, f"{self.name}:write"),))

    @staticmethod
    def _snapshot(c: Any) -> None:
        """Every later statement of this (reading) transaction sees the same committed state."""
        c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")

    def _live(self, c: Any) -> str:
        c.execute(SQL("SELECT physical FROM {} WHERE name = %s").format(self._names), (self.name,))
        found = c.fetchone()
        return self.name if found is None else str(found["physical"])

    def _position(self, c: Any) -> int:
        c.execute(
            SQL("SELECT notification_id FROM {} WHERE application_name = %s").format(self._tracking),
            (self.name,),
        )
        found = c.fetchone()
        return int(found["notification_id"]) if found else 0

    def _put_position(self, c: Any, position: int) -> None:
        c.execute(
            SQL(
                "INSERT INTO {} VALUES (%s, %s) ON CONFLICT (application_name)"
                " DO UPDATE SET notification_id = EXCLUDED.notification_id"
            ).format(self._tracking),
            (self.name, position),
        )

    def _put_rows(
        self, c: Any, table: str, upserts: Sequence[ViewRow], deletes: Sequence[tuple[str, str]]
    ) -> None:
        c.executemany(
            SQL("DELETE FROM {} WHERE view = %s AND kind = %s AND key = %s").format(self._table),
            [(table, kind, key) for kind, key in deletes],
        )
        c.executemany(
            SQL(
                "INSERT INTO {} VALUES (%s, %s, %s, %s, %s) ON CONFLICT (view, kind, key)"
                " DO UPDATE SET library_id = EXCLUDED.library_id, payload = EXCLUDED.payload"
            ).format(self._table),
            [(table, r.kind, r.key, r.library_id, r.payload) for r in upserts],
        )

    # --- the live rows ------------------------------------------------------------------------------

    def load(self) -> tuple[int, list[ViewRow]]:
        with self.datastore.transaction(commit=False) as c:
            self._snapshot(c)
            table = self._live(c)
            position = self._position(c)
            # tuples, made into rows directly; binary: the payloads are not hex-decoded
            with c.connection.cursor(row_factory=tuple_row) as tuples:
                tuples.execute(
                    SQL("SELECT kind, key, library_id, payload FROM {} WHERE view = %s").format(self._table),
                    (table,),
                    binary=True,
                )
                rows = list(map(ViewRow._make, tuples.fetchall()))
        return position, rows

    def save(
        self,
        position: int,
        upserts: Sequence[ViewRow],
        deletes: Sequence[tuple[str, str]],
        *,
        replace_all: bool = False,
    ) -> None:
        """`write`, for a writer that does not mind a refusal (the relay keeps only its position)."""
        self.write(position, upserts, deletes, replace_all=replace_all)

    def write(
        self,
        position: int,
        upserts: Sequence[ViewRow],
        deletes: Sequence[tuple[str, str]],
        *,
        replace_all: bool = False,
    ) -> bool:
        """Writes the changes up to `position`, or every row (`replace_all`: the position may go back).
        False, and nothing written, when the live rows are past `position` (a rebuild swapped them in)."""
        with self.datastore.transaction(commit=True) as c:
            self._hold(c)
            stored = self._position(c)
            if position < stored and not replace_all:
                return False
            table = self._live(c)
            if replace_all:
                c.execute(SQL("DELETE FROM {} WHERE view = %s").format(self._table), (table,))
            self._put_rows(c, table, upserts, deletes)
            if position != stored:
                self._put_position(c, position)
        return True

    def status(self) -> ViewStatus:
        with self.datastore.transaction(commit=False) as c:
            self._snapshot(c)
            table = self._live(c)
            position = self._position(c)
            c.execute(
                SQL("SELECT kind, count(*) AS n FROM {} WHERE view = %s GROUP BY kind").format(self._table),
                (table,),
            )
            rows = {str(r["kind"]): int(r["n"]) for r in c.fetchall()}
        return ViewStatus(self.name, table, position, rows)

    # --- rebuilding ---------------------------------------------------------------------------------

    def begin_rebuild(self) -> str:
        """Takes this view's rebuild lock (`RebuildBusy` when another rebuild holds it), drops what an
        unfinished rebuild left, and returns the table name of the next generation."""
        if self._rebuilder is None:
            self._rebuilder = self._session_lock(f"{self.name}:rebuild")
            if self._rebuilder is None:
                raise RebuildBusy(f"another rebuild of {self.name} is running")
        low, high = _generations(self.name)
        with self.datastore.transaction(commit=False) as c:
            live = self._live(c)
            c.execute(
                SQL("SELECT DISTINCT view FROM {} WHERE view = %s OR (view > %s AND view < %s)").format(
                    self._table
                ),
                (self.name, low, high),
            )
            tables = [str(r["view"]) for r in c.fetchall()]
        for table in tables:
            if table != live:
                self.drop_rows(table)
        return next_generation(self.name, live)

    def write_staged(
        self,
        table: str,
        upserts: Sequence[ViewRow],
        deletes: Sequence[tuple[str, str]] = (),
        *,
        fresh: bool = False,
    ) -> None:
        """Writes rows of a generation that is not live yet, `CHUNK` per transaction. `fresh`: the
        generation holds none of these rows yet (they are copied in: COPY, no conflict to resolve)."""
        if table == self.name or not table.startswith(f"{self.name}."):
            raise ValueError(f"{table!r} is not a generation of {self.name}")
        for start in range(0, max(len(upserts), len(deletes)), CHUNK):
            chunk = upserts[start : start + CHUNK]
            with self.datastore.transaction(commit=True) as c:
                if fresh:  # binary: the payloads go as they are, not hex-encoded
                    copy = SQL("COPY {} (view, kind, key, library_id, payload) FROM STDIN (FORMAT BINARY)")
                    with c.copy(copy.format(self._table)) as rows:
                        rows.set_types(["text", "text", "text", "text", "bytea"])
                        for r in chunk:
                            rows.write_row((table, *r))
                else:
                    self._put_rows(c, table, chunk, deletes[start : start + CHUNK])

    def swap(self, table: str, position: int, *, force: bool = False) -> Swap:
        """Makes `table` (complete up to `position`) the live generation, with its position, in one
        transaction; refused when the live rows are past `position`, unless `force`."""
        with self.datastore.transaction(commit=True) as c:
            self._hold(c)
            live_position, live = self._position(c), self._live(c)
            if live_position > position and not force:
                return Swap(False, live_position, live)
            c.execute(
                SQL(
                    "INSERT INTO {} VALUES (%s, %s) ON CONFLICT (name)"
                    " DO UPDATE SET physical = EXCLUDED.physical"
                ).format(self._names),
                (self.name, table),
            )
            if position != live_position:
                self._put_position(c, position)
        return Swap(True, live_position, live)

    def drop_rows(self, table: str) -> None:
        """Deletes a generation that is not live, in one statement that holds no lock of the view (only
        a rebuild, which holds the rebuild lock, swaps: the live generation cannot change meanwhile)."""
        with self.datastore.transaction(commit=True) as c:
            if table == self._live(c):
                raise ValueError(f"{table!r} is the live generation of {self.name}")
            c.execute(SQL("DELETE FROM {} WHERE view = %s").format(self._table), (table,))

    def end_rebuild(self) -> None:
        if self._rebuilder is not None:
            self._rebuilder.close()
            self._rebuilder = None

    def close(self) -> None:
        if self._leader is not None:
            self._leader.close()
            self._leader = None
        self.end_rebuild()
        self.datastore.close()
