"""The persisted read models: one table of rows, updated in the same transaction as its tracking position.

Only one projector writes at a time (the leader: a PostgreSQL advisory lock, or a file lock next to the
SQLite file); every process keeps its own in-memory models and loads this table at start instead of
replaying the whole store. `VIEWS_NAME` carries the format: a new projection format is a new name, so an
old table is never read as if it were current (it is rebuilt from the store).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from psycopg.sql import SQL, Identifier

from projections.rows import ViewRow

VIEWS_NAME = "views_v2"
RELAY_NAME = "relay_v1"  # the relay (service.adapters.nats.relay) keeps only its position here
TABLE = "libjobs_view_rows"


def _lock_key(schema: str, name: str) -> int:
    """The advisory lock of the projector that writes these views. Advisory locks are database-wide:
    the key names the schema, so deployments sharing a database (one schema each) do not exclude
    each other."""
    digest = hashlib.sha256(f"libjobs:{schema}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class SqliteViewStore(SQLiteTrackingRecorder):
    def __init__(self, path: Path, name: str = VIEWS_NAME) -> None:
        super().__init__(SQLiteDatastore(str(path), lock_timeout=10))
        self.name = name
        self._lock_path = path.with_name(f"{path.stem}.{name}.lock")  # one leader per name
        self._lock_fd: int | None = None
        self.create_table()

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            "CREATE TABLE IF NOT EXISTS libjobs_view_rows (view TEXT, kind TEXT, key TEXT, library_id TEXT,"
            " payload BLOB NOT NULL, PRIMARY KEY (view, kind, key))",
        ]

    def try_lead(self) -> bool:
        if self._lock_fd is None:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._lock_fd = fd
        return True

    def load(self) -> tuple[int, list[ViewRow]]:
        with self.datastore.transaction(commit=False) as c:
            position = self._max_tracking_id(self.name, c) or 0
            select = "SELECT kind, key, library_id, payload FROM libjobs_view_rows WHERE view = ?"
            c.execute(select, (self.name,))
            rows = [ViewRow(r[0], r[1], r[2], bytes(r[3])) for r in c.fetchall()]
        return position, rows

    def save(
        self,
        position: int,
        upserts: Sequence[ViewRow],
        deletes: Sequence[tuple[str, str]],
        *,
        replace_all: bool = False,
    ) -> None:
        with self.datastore.transaction(commit=True) as c:
            if replace_all:
                c.execute("DELETE FROM libjobs_view_rows WHERE view = ?", (self.name,))
            c.executemany(
                "DELETE FROM libjobs_view_rows WHERE view = ? AND kind = ? AND key = ?",
                [(self.name, kind, key) for kind, key in deletes],
            )
            c.executemany(
                "INSERT OR REPLACE INTO libjobs_view_rows VALUES (?, ?, ?, ?, ?)",
                [(self.name, r.kind, r.key, r.library_id, r.payload) for r in upserts],
            )
            if position > (self._max_tracking_id(self.name, c) or 0):
                self._insert_tracking(c, Tracking(self.name, position))

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
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
        self._leader: psycopg.Connection[Any] | None = None
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {} (view TEXT, kind TEXT, key TEXT, library_id TEXT,"
                " payload BYTEA NOT NULL, PRIMARY KEY (view, kind, key))"
            ).format(self._table)
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
        conn = psycopg.connect(autocommit=True, connect_timeout=5, **self._conninfo)
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s)", (_lock_key(self._schema, self.name),)
        ).fetchone()
        if row is None or not row[0]:
            conn.close()
            return False
        self._leader = conn
        return True

    def load(self) -> tuple[int, list[ViewRow]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                SQL("SELECT notification_id FROM {} WHERE application_name = %s").format(
                    Identifier(self.datastore.schema, self.tracking_table_name)
                ),
                (self.name,),
            )
            found = c.fetchone()
            position = int(found["notification_id"]) if found else 0
            c.execute(
                SQL("SELECT kind, key, library_id, payload FROM {} WHERE view = %s").format(self._table),
                (self.name,),
            )
            rows = [ViewRow(r["kind"], r["key"], r["library_id"], bytes(r["payload"])) for r in c.fetchall()]
        return position, rows

    def save(
        self,
        position: int,
        upserts: Sequence[ViewRow],
        deletes: Sequence[tuple[str, str]],
        *,
        replace_all: bool = False,
    ) -> None:
        table = self._table
        with self.datastore.transaction(commit=True) as c:
            if replace_all:
                c.execute(SQL("DELETE FROM {} WHERE view = %s").format(table), (self.name,))
            c.executemany(
                SQL("DELETE FROM {} WHERE view = %s AND kind = %s AND key = %s").format(table),
                [(self.name, kind, key) for kind, key in deletes],
            )
            c.executemany(
                SQL(
                    "INSERT INTO {} VALUES (%s, %s, %s, %s, %s) ON CONFLICT (view, kind, key)"
                    " DO UPDATE SET library_id = EXCLUDED.library_id, payload = EXCLUDED.payload"
                ).format(table),
                [(self.name, r.kind, r.key, r.library_id, r.payload) for r in upserts],
            )
            c.execute(
                SQL("SELECT notification_id FROM {} WHERE application_name = %s").format(
                    Identifier(self.datastore.schema, self.tracking_table_name)
                ),
                (self.name,),
            )
            found = c.fetchone()
            if position > (int(found["notification_id"]) if found else 0):
                self._insert_tracking(c, Tracking(self.name, position))

    def close(self) -> None:
        if self._leader is not None:
            self._leader.close()
            self._leader = None
        self.datastore.close()
