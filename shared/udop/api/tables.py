"""The API's own tables (audit log, API keys) and their creation: a leaf the audit log and the key
store both build on."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Column, DateTime, Engine, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.exc import SQLAlchemyError

from udop.errors import StoreError

__all__ = ["API_METADATA", "api_keys_table", "as_utc", "audit_log_table", "ensure_api_tables"]

#: the API's own tables (audit log, API keys); the store's tables live in their own MetaData
API_METADATA = MetaData()

audit_log_table = Table(
    "udop_audit_log",
    API_METADATA,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(255), nullable=False),  # token subject, "apikey:<id>", or "anonymous"
    Column("actor_kind", String(16), nullable=False),  # jwt | api_key | anonymous
    Column("role", String(16), nullable=True),
    Column("action", String(64), nullable=False),  # the endpoint's name, e.g. "trigger_run"
    Column("method", String(8), nullable=False),
    Column("path", String(1024), nullable=False),
    Column("status", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),  # success | denied | unauthenticated | rejected | error
    Column("detail", Text, nullable=True),
    Column("client", String(64), nullable=True),
    Index("ix_udop_audit_log_at", "at"),
    Index("ix_udop_audit_log_actor", "actor"),
)

api_keys_table = Table(
    "udop_api_keys",
    API_METADATA,
    Column("id", String(32), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("role", String(16), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(255), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

def ensure_api_tables(engine: Engine) -> None:
    """Create the API's tables when missing (a database migrated before the API revision existed).

    The Alembic revision does the same with the same checks, so either may run first.
    """
    try:
        API_METADATA.create_all(engine, tables=[audit_log_table, api_keys_table], checkfirst=True)
    except SQLAlchemyError as exc:
        raise StoreError(
            f"could not create the audit log and API key tables: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc


def as_utc(value: object) -> object:
    # SQLite hands datetimes back without a zone; every time udop stores is UTC.
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
