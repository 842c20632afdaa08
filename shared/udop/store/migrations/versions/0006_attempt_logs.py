"""Attempts keep where their log lines are (a local file and the attempt's tag in it, or a CloudWatch
log group, stream and request id) with the size kept and whether it was cut, so ``udop logs``, ``runs
show`` and the API read them from the store instead of guessing paths.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("attempts", sa.Column("log", sa.JSON(none_as_null=True).with_variant(
        JSONB(none_as_null=True), "postgresql"), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("log")
