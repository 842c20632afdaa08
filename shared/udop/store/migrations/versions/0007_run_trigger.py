"""Runs record how they were started (``cli``, ``api``, ``schedule``, ``trigger``, ``backfill``), so the
runs list can show and filter it; runs recorded before this revision have none (NULL).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("trigger", sa.String(16), nullable=True))
    op.create_index("ix_runs_trigger_created_at_id", "runs", ["trigger", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_runs_trigger_created_at_id", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("trigger")
