"""The event store: eventsourcing's SQLite (embedded) or PostgreSQL recorder, and reading it in order."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

import psycopg
from eventsourcing.application import Application

log = logging.getLogger("libjobs.store")


@dataclass(frozen=True)
class PostgresTarget:
    host: str
    port: int
    dbname: str
    user: str
    password: str
    schema: str

    @classmethod
    def from_url(cls, url: str) -> PostgresTarget:
        parts = urlsplit(url)
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            dbname=unquote(parts.path.lstrip("/")) or "postgres",
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
            schema=query.get("schema", "public"),
        )

    def params(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "password": self.password,
        }

    def conninfo(self) -> str:
        return psycopg.conninfo.make_conninfo(**self.params())


# Aggregates are cached (copied out, fast-forwarded from the store on every get), so a command loads
# only the events stored since, not a job's whole history.
CACHE_ENV = {"AGGREGATE_CACHE_MAXSIZE": "10000", "AGGREGATE_CACHE_FASTFORWARD": "y"}


def store_env(
    *, data_dir: Path, database_url: str | None, pool_size: int, lock_timeout_s: int
) -> dict[str, str]:
    """The eventsourcing environment for the configured store."""
    if database_url is None:
        data_dir.mkdir(parents=True, exist_ok=True)
        return CACHE_ENV | {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(sqlite_events_file(data_dir)),
            "SQLITE_LOCK_TIMEOUT": str(lock_timeout_s),
        }
    target = PostgresTarget.from_url(database_url)
    ensure_schema(target)
    return CACHE_ENV | {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": target.dbname,
        "POSTGRES_HOST": target.host,
        "POSTGRES_PORT": str(target.port),
        "POSTGRES_USER": target.user,
        "POSTGRES_PASSWORD": target.password,
        "POSTGRES_SCHEMA": target.schema,
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": "0",
        "POSTGRES_LOCK_TIMEOUT": str(lock_timeout_s),
        "POSTGRES_CONNECT_TIMEOUT": "10",
        "POSTGRES_PRE_PING": "y",
        # In 9.5.6 the DB functions drop tracking records (ARCHITECTURE.md): keep them off.
        "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
    }


SETUP_LOCK_KEY = 0x6C69626A6F6271  # one process at a time creates schemas, tables, types, functions


@contextlib.contextmanager
def setup_lock(database_url: str | None) -> Iterator[None]:
    """Serialises store set-up between processes starting together on one PostgreSQL database:
    eventsourcing's CREATE ... IF NOT EXISTS and CREATE OR REPLACE FUNCTION race otherwise."""
    if database_url is None:
        yield
        return
    target = PostgresTarget.from_url(database_url)
    with psycopg.connect(target.conninfo(), autocommit=True, connect_timeout=10) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (SETUP_LOCK_KEY,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK_KEY,))


def ensure_schema(target: PostgresTarget) -> None:
    """eventsourcing creates tables but not the schema they live in."""
    with psycopg.connect(target.conninfo(), autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            psycopg.sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(psycopg.sql.Identifier(target.schema))
        )


class StoreReader:
    """Reads stored events in global order, decoded to domain events."""

    def __init__(self, app: Application[Any]) -> None:
        self._recorder = app.recorder
        self._mapper = app.mapper

    def read(self, after: int, limit: int = 1000) -> list[tuple[int, Any]]:
        notifications = self._recorder.select_notifications(start=after + 1, limit=limit)
        return [(n.id, self._mapper.to_domain_event(n)) for n in notifications]

    def max_position(self) -> int:
        return int(self._recorder.max_notification_id() or 0)

    def first_event(self, aggregate_id: UUID) -> Any:
        """An aggregate's first event (its creation), or None when nothing is stored for it."""
        stored = self._recorder.select_events(aggregate_id, lte=1, limit=1)
        return self._mapper.to_domain_event(stored[0]) if stored else None


def sqlite_events_file(data_dir: Path) -> Path:
    return data_dir / "events.sqlite3"


class SqliteChangeProbe:
    """Whether an SQLite store may have changed since the last call: the sizes and modification times of
    the database and its write-ahead log (two `stat` calls instead of a query). It may say yes for nothing.

    A modification time moves in the kernel's clock ticks (4 ms here), and a WAL, once grown, is rewritten
    in place at the same size: a commit in the same tick as the last look leaves both files as they were.
    So for `RECENT_NS` after the newest modification every call says yes (a few reads of nothing after each
    write); a miss then needs a write in the same tick as a look made `RECENT_NS` after the one before,
    impossible at the follower's pace, and the follower's periodic full read would still find it. (Without
    this, a second process saw about one write in twenty up to a second late.)"""

    RECENT_NS = 100_000_000

    def __init__(self, database: Path) -> None:
        self._files = (database, database.with_name(database.name + "-wal"))
        self._seen: tuple[tuple[int, int], ...] = ()

    def __call__(self) -> bool:
        now = tuple(self._signature(path) for path in self._files)
        changed, self._seen = now != self._seen, now
        newest = max(mtime for mtime, _ in now)
        return changed or time.time_ns() - newest < self.RECENT_NS

    @staticmethod
    def _signature(path: Path) -> tuple[int, int]:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return (0, 0)
        return (stat.st_mtime_ns, stat.st_size)


class PostgresListener:
    """Calls `on_notify` whenever any process stores events (eventsourcing NOTIFYs on insert)."""

    def __init__(self, target: PostgresTarget, channel: str, on_notify: Callable[[], None]) -> None:
        self._target = target
        self._channel = channel
        self._on_notify = on_notify
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Returns once the thread has stopped: no callback comes after this."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._target.conninfo(), autocommit=True, connect_timeout=5) as conn:
                    conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self._channel)))
                    if not self._stopping.is_set():
                        self._on_notify()  # catch anything stored while we were not listening
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            if not self._stopping.is_set():
                                self._on_notify()
            except psycopg.Error as e:
                log.warning("LISTEN connection lost, retrying: %s", e)
                self._stopping.wait(1.0)
