"""The metadata store: pipelines, versions, runs, task runs, attempts, lineage, check results.

``open_store()`` opens the database named by ``UDOP_DATABASE_URL`` (default: SQLite under
``.udop/``), brings its schema up to date when behind, and returns a ``SqlMetadataStore``.
SQLAlchemy is imported on first use, not by ``import udop.store.api``: a Lambda that only needs the
records does not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from udop.errors import StoreError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from udop.store.sql import SqlMetadataStore

__all__ = ["SqlMetadataStore", "migrate", "open_store"]


def _engine_for(url: str | None, *, migrating: bool) -> Engine:
    # lazy: see the module docstring
    from sqlalchemy.exc import DBAPIError

    from udop.settings import get_settings
    from udop.store.engine import create_store_engine, mask_url, parse_url, sqlite_folder
    from udop.store.schema import ensure_schema, upgrade

    default = get_settings().resolved_database_url
    parsed = parse_url(default if url is None else url)
    folder = sqlite_folder(parsed)
    if folder is not None and not folder.is_dir():
        if url in (None, default):  # the default under UDOP_HOME: ours to create
            folder.mkdir(parents=True, exist_ok=True)
        else:
            raise StoreError(f"metadata database {mask_url(parsed)}: folder {str(folder)!r} does not exist; "
                             "create it or point UDOP_DATABASE_URL elsewhere")
    engine = create_store_engine(parsed)
    try:
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


def open_store(url: str | None = None) -> SqlMetadataStore:
    """Open the metadata store at ``url`` (default: the UDOP_DATABASE_URL setting), migrating if behind.

    Concurrent first-time openers are safe: one migrates, the others wait and find it done.
    An unreachable database or a bad URL is a one-line ``StoreError`` (password masked).
    """
    from udop.store.sql import SqlMetadataStore

    return SqlMetadataStore(_engine_for(url, migrating=False))


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
