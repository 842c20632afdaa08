"""Backends for the metadata store contract suite: a fresh SQLite file, and a fresh PostgreSQL schema.

PostgreSQL: one database ``udop_test_<uuid>`` per test session (created on first use, dropped at the
end), and inside it one schema per test, selected through the URL's ``search_path`` option, so
tests running in parallel never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from udop.store import open_store

ADMIN_URL = os.environ.get("UDOP_TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin(sql: str, url: str = ADMIN_URL) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def _with_database(url: str, database: str) -> str:
    return (
        make_url(url)
        .set(drivername="postgresql+psycopg", database=database)
        .render_as_string(hide_password=False)
    )


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """URL of a database made for this session (dropped afterwards)."""
    name = f"udop_test_{uuid.uuid4().hex[:12]}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # the server is a precondition of the marked tests, not their subject
        pytest.fail(f"PostgreSQL at {ADMIN_URL} is needed for tests marked 'postgres': {exc}")
    yield _with_database(ADMIN_URL, name)
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_postgres_url(database_url: str) -> str:
    """A fresh, empty schema in the session database; the URL selects it via search_path."""
    schema = f"s_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE SCHEMA "{schema}"', database_url.replace("postgresql+psycopg://", "postgresql://"))
    return f"{database_url}?options=-csearch_path%3D{schema}"


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty metadata database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return new_postgres_url(request.getfixturevalue("postgres_database"))


@pytest.fixture
def open_db(db_url: str) -> Iterator[Callable[[], Any]]:
    """Open (and later close) stores on the test's database."""
    opened: list[Any] = []

    def _open() -> Any:
        s = open_store(db_url)
        opened.append(s)
        return s

    yield _open
    for s in opened:
        s.close()


@pytest.fixture
def store(open_db: Callable[[], Any]) -> Any:
    """A migrated store on an empty database of each backend."""
    return open_db()
