"""Bring a metadata database to the schema this udop expects.

Checking is cheap (one SELECT of ``alembic_version``); Alembic is imported only when the database is
behind. Concurrent first-time openers are serialised by the database itself: the migration runs in
one transaction that first takes the write lock (``BEGIN IMMEDIATE`` on SQLite,
``pg_advisory_xact_lock`` on PostgreSQL), re-reads the revision, and migrates only if still needed.
Both backends have transactional DDL, so a failed migration leaves the database as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from udop.errors import StoreError
from udop.store.engine import mask_url, transaction

if TYPE_CHECKING:  # imported where used: a run on SQLite reads HEAD without SQLAlchemy
    from sqlalchemy import Connection, Engine

__all__ = ["HEAD", "REVISIONS", "current_revision", "ensure_schema", "upgrade"]

#: every revision in order, oldest first; the last is the schema this code reads and writes
REVISIONS: tuple[str, ...] = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009", "0010")
HEAD = REVISIONS[-1]

MIGRATIONS = Path(__file__).parent / "migrations"

#: pg_advisory_xact_lock key for migrations (any constant; "udop" in ASCII)
_PG_LOCK_KEY = 0x75646F70


def current_revision(conn: Connection) -> str | None:
    """The database's Alembic revision, or None for an empty (never migrated) database."""
    from sqlalchemy import text

    if conn.dialect.name == "sqlite":
        exists = conn.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'").first()
    else:
        exists = conn.execute(text("SELECT to_regclass('alembic_version')")).scalar()
    if not exists:
        return None
    return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def _check_known(revision: str | None, engine: Engine) -> None:
    if revision is not None and revision not in REVISIONS:
        raise StoreError(
            f"metadata database {mask_url(engine.url)} has schema revision {revision!r}, which this udop "
            f"does not know (it knows up to {HEAD!r}); it was written by a newer udop: upgrade udop")


def ensure_schema(engine: Engine) -> str:
    """Upgrade to ``HEAD`` when behind; return the revision. Cheap when already there."""
    with transaction(engine, write=False) as conn:
        revision = current_revision(conn)
    if revision == HEAD:
        return revision
    _check_known(revision, engine)
    return upgrade(engine)


def upgrade(engine: Engine) -> str:
    """Run the pending migrations under the migration lock; return the revision reached."""
    from sqlalchemy import text

    with transaction(engine, write=True) as conn:  # BEGIN IMMEDIATE on SQLite: the write lock
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        revision = current_revision(conn)  # another process may have migrated while we waited
        if revision == HEAD:
            return revision
        _check_known(revision, engine)
        _run_alembic(conn)
        reached = current_revision(conn)
    if reached != HEAD:
        raise StoreError(f"migrating metadata database {mask_url(engine.url)} stopped at {reached!r}, "
                         f"expected {HEAD!r}")
    return reached


def _run_alembic(conn: Connection) -> None:
    # imported only when a migration is due: Alembic costs ~0.3 s to import
    from alembic import command
    from alembic.config import Config
    from sqlalchemy.exc import DBAPIError

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    try:
        command.upgrade(config, "head")
    except DBAPIError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise StoreError(f"migrating metadata database {mask_url(conn.engine.url)} failed: {first}") from None
