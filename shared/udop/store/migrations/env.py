"""Alembic environment of the metadata store.

``udop.store.schema`` runs it with an open connection in ``config.attributes["connection"]``, already
inside a transaction that holds the migration lock; Alembic then migrates within that transaction.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from udop.store.tables import metadata

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through udop.store.migrate(url), which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things in place
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
