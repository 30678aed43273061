"""Idempotency records in SQLite (embedded) or PostgreSQL, kept for 24 hours."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from service.adapters.store import PostgresTarget
from service.ports import StoredResponse

TTL_S = 24 * 3600


class SqliteIdempotencyStore:
    def __init__(self, path: Path, ttl_s: float = TTL_S) -> None:
        self._ttl_s = ttl_s
        self._local = threading.local()
        self._path = path
        with self._connect() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL,"
                " status INTEGER NOT NULL, body BLOB NOT NULL, headers TEXT NOT NULL, created REAL NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, timeout=10, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def get(self, key: str) -> StoredResponse | None:
        row = (
            self._connect()
            .execute(
                "SELECT fingerprint, status, body, headers FROM idempotency WHERE key = ? AND created > ?",
                (key, time.time() - self._ttl_s),
            )
            .fetchone()
        )
        if row is None:
            return None
        return StoredResponse(row[0], row[1], bytes(row[2]), json.loads(row[3]))

    def put(self, key: str, response: StoredResponse) -> None:
        now = time.time()
        with self._connect() as conn:
            conn.execute("DELETE FROM idempotency WHERE created <= ?", (now - self._ttl_s,))
            conn.execute(
                "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key,
                    response.fingerprint,
                    response.status,
                    response.body,
                    json.dumps(response.headers),
                    now,
                ),
            )


class PostgresIdempotencyStore:
    def __init__(self, target: PostgresTarget, ttl_s: float = TTL_S, pool_size: int = 2) -> None:
        self._ttl_s = ttl_s
        self._table = sql.Identifier(target.schema, "libjobs_idempotency")
        self._pool = ConnectionPool(
            target.conninfo(), min_size=1, max_size=pool_size, kwargs={"autocommit": True}, open=True
        )
        with self._pool.connection() as conn:
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL,"
                    " status INTEGER NOT NULL, body BYTEA NOT NULL, headers JSONB NOT NULL,"
                    " created DOUBLE PRECISION NOT NULL)"
                ).format(self._table)
            )

    def get(self, key: str) -> StoredResponse | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                sql.SQL(
                    "SELECT fingerprint, status, body, headers FROM {} WHERE key = %s AND created > %s"
                ).format(self._table),
                (key, time.time() - self._ttl_s),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(row[0], row[1], bytes(row[2]), dict(row[3]))

    def put(self, key: str, response: StoredResponse) -> None:
        now = time.time()
        with self._pool.connection() as conn:
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE created <= %s").format(self._table), (now - self._ttl_s,)
            )
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET"
                    " fingerprint = EXCLUDED.fingerprint, status = EXCLUDED.status, body = EXCLUDED.body,"
                    " headers = EXCLUDED.headers, created = EXCLUDED.created"
                ).format(self._table),
                (
                    key,
                    response.fingerprint,
                    response.status,
                    response.body,
                    Jsonb(response.headers),
                    now,
                ),
            )

    def close(self) -> None:
        self._pool.close()
