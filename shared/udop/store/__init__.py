"""The metadata store: pipelines, versions, runs, task runs, attempts, lineage, check results.

``open_store()`` opens the database named by ``UDOP_DATABASE_URL`` (default: SQLite under
``.udop/``), brings its schema up to date when behind, and returns a ``SqlMetadataStore``.
SQLAlchemy is imported on first use, not by ``import udop.store.api``: a Lambda that only needs the
records does not pay for it. A store on an SQLite file whose schema is up to date opens without it at
all (sqlite3 reads the revision, and every operation of a run has an SQLite path in ``store.sql``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from udop.errors import StoreError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from udop.store.sql import SqlMetadataStore

__all__ = ["SqlMetadataStore", "migrate", "open_store"]


def _run_outputs(data_root: str | None) -> int:
    """How many runs left outputs under a local data root (``<root>/runs/<pipeline>/<run_id>/``)."""
    if not data_root or "://" in data_root:
        return 0
    runs = Path(data_root) / "runs"
    if not runs.is_dir():
        return 0
    return sum(1 for pipeline in runs.iterdir() if pipeline.is_dir() for run in pipeline.iterdir()
               if run.is_dir())


def _history_lost(where: str, missing: str, data_root: str, found: int) -> StoreError:
    return StoreError(
        f"metadata database {where} {missing}, but data root {data_root} holds the outputs of {found} "
        f"run(s): the run history is lost, not new. Restore the database (or point UDOP_DATABASE_URL at "
        f"it); to start over with an empty history, move {Path(data_root) / 'runs'} aside first")


def _engine_for(url: str | None, *, migrating: bool, expect_history_in: str | None = None) -> Engine:
    # lazy: see the module docstring
    from sqlalchemy.exc import DBAPIError

    from udop.settings import get_settings
    from udop.store.engine import (
        create_store_engine,
        is_memory,
        mask_url,
        parse_url,
        sqlite_folder,
        transaction,
    )
    from udop.store.schema import current_revision, ensure_schema, upgrade

    default = get_settings().resolved_database_url
    parsed = parse_url(default if url is None else url)
    folder = sqlite_folder(parsed)
    if folder is not None and not folder.is_dir():
        if url in (None, default):  # the default under UDOP_HOME: ours to create
            folder.mkdir(parents=True, exist_ok=True)
        else:
            raise StoreError(f"metadata database {mask_url(parsed)}: folder {str(folder)!r} does not exist; "
                             "create it or point UDOP_DATABASE_URL elsewhere")
    # outputs are counted only when the database is new, so a long history costs nothing here
    sqlite_file = parsed.get_backend_name() == "sqlite" and not is_memory(parsed) and folder is not None
    if expect_history_in and sqlite_file and parsed.database is not None:
        db = Path(parsed.database)
        if (not db.exists() or db.stat().st_size == 0) and (found := _run_outputs(expect_history_in)):
            raise _history_lost(mask_url(parsed), "does not exist", expect_history_in, found)
    engine = create_store_engine(parsed)
    try:
        if expect_history_in and not sqlite_file:
            with transaction(engine, write=False) as conn:
                fresh = current_revision(conn) is None
            if fresh and (found := _run_outputs(expect_history_in)):
                raise _history_lost(mask_url(parsed), "has no udop tables", expect_history_in, found)
        if migrating:
            upgrade(engine)
        else:
            ensure_schema(engine)
    except DBAPIError as exc:
        engine.dispose()
        orig = exc.orig if exc.orig is not None else exc
        detail = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
        if parsed.password:
            detail = detail.replace(parsed.password, "***")
        raise StoreError(f"cannot open metadata database {mask_url(parsed)}: {detail}") from None
    except BaseException:
        engine.dispose()
        raise
    return engine


def _open_sqlite(url: str | None, expect_history_in: str | None) -> SqlMetadataStore | None:
    """The store on sqlite3 connections, without SQLAlchemy, when the URL names an SQLite file whose
    schema is current; None otherwise (a new or older database, another URL: the engine path)."""
    import sqlite3

    from udop.settings import get_settings
    from udop.store.engine import SqliteConnections, create_private_file, sqlite_file_path, sqlite_revision
    from udop.store.schema import HEAD

    default = get_settings().resolved_database_url
    given = default if url is None else url
    path = sqlite_file_path(given)
    if path is None:
        return None
    db_file = Path(path)
    if not db_file.parent.is_dir() or not db_file.exists() or db_file.stat().st_size == 0:
        return None  # to create: the engine path creates it, migrates it and says what is wrong
    create_private_file(path)
    connections = SqliteConnections(path)
    try:
        db = connections.acquire()
        try:
            revision = sqlite_revision(db)
        finally:
            connections.release(db)
    except sqlite3.Error:
        connections.close()
        return None  # the engine path opens it again and words the error
    if revision != HEAD:
        connections.close()
        return None
    from udop.store.sql import SqlMetadataStore

    return SqlMetadataStore(connections=connections, url=given)


def open_store(url: str | None = None, *, expect_history_in: str | None = None) -> SqlMetadataStore:
    """Open the metadata store at ``url`` (default: the UDOP_DATABASE_URL setting), migrating if behind.

    Concurrent first-time openers are safe: one migrates, the others wait and find it done.
    An unreachable database or a bad URL is a one-line ``StoreError`` (password masked).
    ``expect_history_in``: a data root; when it holds run outputs but the database does not exist
    (SQLite) or has no udop tables (PostgreSQL), the history was lost: a ``StoreError`` says so
    instead of starting an empty database.
    """
    from udop.store.sql import SqlMetadataStore

    if (store := _open_sqlite(url, expect_history_in)) is not None:
        return store
    return SqlMetadataStore(_engine_for(url, migrating=False, expect_history_in=expect_history_in))


def migrate(url: str | None = None) -> str:
    """Upgrade the metadata database at ``url`` to the latest schema; return the revision reached."""
    from udop.store.schema import HEAD

    _engine_for(url, migrating=True).dispose()
    return HEAD


def __getattr__(name: str) -> Any:
    if name == "SqlMetadataStore":
        from udop.store.sql import SqlMetadataStore

        return SqlMetadataStore
    raise AttributeError(f"module 'udop.store' has no attribute {name!r}")
