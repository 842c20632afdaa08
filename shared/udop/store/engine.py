"""Engines for the metadata store: URL checks, SQLite pragmas and transaction control, error wording.

SQLite is set up for several threads and several processes writing one file: WAL journal, a 30 s
busy timeout, foreign keys on, ``synchronous=NORMAL``; sqlite3's own transaction handling is off and
every transaction begins with an explicit ``BEGIN`` (reads) or ``BEGIN IMMEDIATE`` (writes: the
write lock is taken up front, so a writer waits for another instead of failing half-way with
"database is locked"), see ``begin``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import json
import os
import re
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from udop.errors import StoreError

if TYPE_CHECKING:  # SQLAlchemy is imported where an engine is made: a run on SQLite does without it
    from sqlalchemy import Engine
    from sqlalchemy.engine import URL, Connection

__all__ = ["SqliteConnections", "begin", "canonical_json", "create_private_file", "create_store_engine",
           "is_memory", "json_dumps", "mask_url", "parse_url", "sqlite_file_path", "sqlite_revision",
           "sqlite_timestamp", "transaction"]

SQLITE_BUSY_TIMEOUT_MS = 30_000


def sqlite_timestamp(value: dt.datetime) -> str:
    """A timestamp as the store keeps it in SQLite: naive UTC text with microseconds.

    The same text SQLAlchemy writes for ``UTCDateTime`` (a test holds the two together), so rows
    written through the hot path and through SQLAlchemy compare and sort alike.
    """
    v = value.astimezone(dt.UTC) if value.tzinfo is not None else value
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d} "
            f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}")


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"a value of type {type(value).__name__} cannot be stored as JSON")


def json_dumps(value: Any) -> str:
    """JSON as the store writes it: dates as ISO text, decimals as strings."""
    return json.dumps(value, default=_json_default, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> str:
    """Key-sorted, whitespace-free JSON: equal definitions give equal text (what content hashes hash)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


_PASSWORD_IN_URL = re.compile(r"(://[^:/@]*:)[^@]*@")


def mask_url(url: str | URL) -> str:
    """The URL with its password replaced by ``***``, safe to print."""
    if isinstance(url, str) and sqlite_file_path(url) is not None:
        return url  # no password to hide, and no SQLAlchemy to import for it
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError

    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _PASSWORD_IN_URL.sub(r"\1***@", url)


def parse_url(url: str) -> URL:
    """Parse and normalise a database URL; a bad one is a one-line ``StoreError``.

    ``postgresql://`` and ``postgres://`` mean psycopg 3 (the driver udop ships with).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StoreError(
            f"metadata database URL {mask_url(url)!r} is not a valid URL; write e.g. sqlite:///path/udop.db "
            "or postgresql://user:password@host:5432/db (UDOP_DATABASE_URL)") from None
    backend = parsed.get_backend_name()
    if backend == "postgres" or parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(
            f"metadata database URL {mask_url(parsed)!r}: only sqlite:// and postgresql:// are supported "
            "(UDOP_DATABASE_URL)")
    return parsed


def is_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # sqlite3 must not issue BEGIN/COMMIT behind our back: begin() below (and the hot path) does it
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")  # first: the others may wait
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def begin(conn: Connection, *, write: bool) -> None:
    """Start the transaction on a fresh connection: ``BEGIN IMMEDIATE`` for writes on SQLite.

    Not a "begin" event listener: any ConnectionEvents listener makes SQLAlchemy dispatch events
    around every statement, which costs about a fifth of a hot-path call.
    """
    if conn.dialect.name == "sqlite":
        # straight to the driver (a statement through SQLAlchemy costs ~40 us); then tell SQLAlchemy a
        # transaction is open (a no-op for pysqlite) so that commit/rollback reach the driver
        try:
            conn.connection.driver_connection.execute(  # type: ignore[union-attr]
                "BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as exc:  # e.g. still locked after the busy timeout
            raise StoreError(f"metadata database {mask_url(conn.engine.url)}: {exc}") from None
    conn.begin()


@contextmanager
def transaction(engine: Engine, *, write: bool) -> Iterator[Connection]:
    """A connection inside one transaction, committed on success and rolled back on an exception."""
    with engine.connect() as conn:
        begin(conn, write=write)
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def create_private_file(path: str | Path) -> None:
    """Create an SQLite database file readable by its owner only (0600), unless it exists already.

    It holds run records, parameters and audit rows; SQLite gives its -wal and -shm files the mode of
    the database file, so creating this one private makes all three private.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError:
        return  # a folder missing or not writable: sqlite3's own open reports it, in its words
    os.close(fd)


def create_store_engine(url: URL) -> Engine:
    """An engine for ``url`` (already parsed with ``parse_url``), safe to share between threads."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    from sqlalchemy.pool import StaticPool

    try:
        if url.get_backend_name() == "sqlite":
            if not is_memory(url) and url.database and not url.database.startswith("file:"):
                create_private_file(url.database)
            if is_memory(url):
                # one shared connection; SqlMetadataStore serialises access to it with a lock
                engine = create_engine(url, poolclass=StaticPool, json_serializer=json_dumps,
                                       connect_args={"check_same_thread": False})
            else:
                # reset_on_return=None: every transaction is ended by commit or rollback already
                engine = create_engine(url, pool_size=8, max_overflow=56, pool_reset_on_return=None,
                                       json_serializer=json_dumps,
                                       connect_args={"check_same_thread": False})
            event.listen(engine, "connect", _sqlite_on_connect)
        else:
            # pre_ping: a Lambda's pooled connection may have been closed by RDS Proxy while it slept
            engine = create_engine(url, pool_pre_ping=True, pool_recycle=1800, json_serializer=json_dumps,
                                   connect_args={"connect_timeout": 10})
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise StoreError(f"metadata database URL {mask_url(url)!r}: {exc}") from None
    # a forked child must not use its parent's pooled connections (SQLite file locks and sockets are
    # per process): it starts with an empty pool and leaves the parent's connections alone
    os.register_at_fork(after_in_child=functools.partial(_forget_pool, weakref.ref(engine)))
    return engine


def _forget_pool(ref: weakref.ref[Engine]) -> None:
    engine = ref()
    if engine is not None:
        engine.dispose(close=False)


def sqlite_folder(url: URL) -> Path | None:
    """The folder holding a file-backed SQLite database, or None."""
    if url.get_backend_name() != "sqlite" or is_memory(url) or url.database is None:
        return None
    if url.database.startswith("file:"):
        return None
    return Path(url.database).parent


_SQLITE_FILE_URL = re.compile(r"sqlite(?:\+pysqlite)?:///(?P<path>[^?%]+)")


def sqlite_file_path(url: str) -> str | None:
    """The database file of a plain ``sqlite:///path`` URL (no query, no escapes, not ``:memory:`` or
    a ``file:`` URI), as SQLAlchemy's URL would name it; None for any other URL."""
    found = _SQLITE_FILE_URL.fullmatch(url)
    if found is None:
        return None
    path = found["path"]
    if path == ":memory:" or path.startswith("file:"):
        return None
    return path


def _connect_sqlite(path: str) -> sqlite3.Connection:
    # as SQLAlchemy's pysqlite dialect connects (no type detection), then the store's pragmas
    db = sqlite3.connect(path, check_same_thread=False)
    _sqlite_on_connect(db, None)
    return db


class SqliteConnections:
    """sqlite3 connections to one database file, set up as an engine's are (``_sqlite_on_connect``),
    kept for reuse: what the store uses on SQLite until an operation needs SQLAlchemy."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # a forked child must not use its parent's connections (file locks are per process)
        os.register_at_fork(after_in_child=functools.partial(_forget_connections, weakref.ref(self)))

    def acquire(self) -> sqlite3.Connection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return _connect_sqlite(self.path)

    def release(self, db: sqlite3.Connection) -> None:
        if db.in_transaction:
            db.rollback()
        with self._lock:
            self._idle.append(db)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()


def _forget_connections(ref: weakref.ref[SqliteConnections]) -> None:
    connections = ref()
    if connections is not None:
        connections._idle = []  # the parent's, left open for the parent


def sqlite_revision(db: sqlite3.Connection) -> str | None:
    """The database's Alembic revision read with sqlite3 (None: never migrated); what
    ``udop.store.schema.current_revision`` reads through SQLAlchemy."""
    db.execute("BEGIN")
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
                      ).fetchone() is None:
            return None
        row = db.execute("SELECT version_num FROM alembic_version").fetchone()
        return None if row is None else str(row[0])
    finally:
        db.commit()
