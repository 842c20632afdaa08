"""The REST API's tables: the audit log and service-account API keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

The API also creates the same tables when they are missing (``udop.api.audit.ensure_api_tables``,
for databases an API process opened before this revision existed), so this step skips a table that
already exists.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

# frozen copies of the types in udop.api.audit / udop.api.keys at this revision
_TS = sa.DateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _exists(name: str) -> bool:
    return sa.inspect(op.get_bind()).has_table(name)


def upgrade() -> None:
    if not _exists("udop_audit_log"):
        op.create_table(
            "udop_audit_log",
            sa.Column("id", _ID, autoincrement=True, nullable=False),
            sa.Column("at", _TS, nullable=False),
            sa.Column("actor", sa.String(255), nullable=False),
            sa.Column("actor_kind", sa.String(16), nullable=False),
            sa.Column("role", sa.String(16), nullable=True),
            sa.Column("action", sa.String(64), nullable=False),
            sa.Column("method", sa.String(8), nullable=False),
            sa.Column("path", sa.String(1024), nullable=False),
            sa.Column("status", sa.Integer(), nullable=False),
            sa.Column("outcome", sa.String(16), nullable=False),
            sa.Column("detail", sa.Text(), nullable=True),
            sa.Column("client", sa.String(64), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_udop_audit_log_at", "udop_audit_log", ["at"])
        op.create_index("ix_udop_audit_log_actor", "udop_audit_log", ["actor"])
    if not _exists("udop_api_keys"):
        op.create_table(
            "udop_api_keys",
            sa.Column("id", sa.String(32), nullable=False),
            sa.Column("name", sa.String(255), nullable=False),
            sa.Column("role", sa.String(16), nullable=False),
            sa.Column("secret_hash", sa.String(64), nullable=False),
            sa.Column("created_at", _TS, nullable=False),
            sa.Column("created_by", sa.String(255), nullable=False),
            sa.Column("revoked_at", _TS, nullable=True),
            sa.PrimaryKeyConstraint("id"),
        )


def downgrade() -> None:
    op.drop_table("udop_api_keys")
    op.drop_index("ix_udop_audit_log_actor", table_name="udop_audit_log")
    op.drop_index("ix_udop_audit_log_at", table_name="udop_audit_log")
    op.drop_table("udop_audit_log")
