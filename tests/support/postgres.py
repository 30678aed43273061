"""PostgreSQL for tests: a fresh schema per test in the database named by LIBJOBS_TEST_DATABASE_URL.

Locally, tests that need PostgreSQL skip when it is not reachable. CI sets LIBJOBS_REQUIRE_POSTGRES=1,
which turns that skip into a failure, so a PostgreSQL test can never silently not run there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def base_url() -> str:
    return os.environ.get("LIBJOBS_TEST_DATABASE_URL", DEFAULT_URL)


def require_postgres() -> None:
    try:
        with psycopg.connect(base_url(), connect_timeout=3):
            pass
    except psycopg.OperationalError as e:
        message = f"PostgreSQL is not reachable at {base_url()}: {e}"
        if os.environ.get("LIBJOBS_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def fresh_schema() -> Iterator[str]:
    """Yields a database URL whose `?schema=` is a new, empty schema; drops it afterwards."""
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in base_url() else "?"
    try:
        yield f"{base_url()}{separator}schema={schema}"
    finally:
        with psycopg.connect(base_url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
