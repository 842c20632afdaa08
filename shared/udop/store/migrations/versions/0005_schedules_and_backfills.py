"""Schedules, backfills and file triggers: the tick claims two schedulers on one database share,
backfills with their logical dates, trigger events (one run per file version), and an index for
listing runs by logical date.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

# frozen copies of the types in udop.store.tables at this revision
_TS = sa.DateTime(timezone=True)
_JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "schedule_ticks",
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("tick", _TS, nullable=False),
        sa.Column("claimed_by", sa.String(), nullable=False),
        sa.Column("claimed_at", _TS, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("pipeline", "tick", name="pk_schedule_ticks"),
    )
    op.create_table(
        "backfills",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("start", _TS, nullable=False),
        sa.Column("end", _TS, nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("max_parallel", sa.Integer(), nullable=False),
        sa.Column("params", _JSON, nullable=False),
        sa.Column("executor", sa.String(32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("ended_at", _TS, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_backfills"),
    )
    op.create_index("ix_backfills_pipeline_created_at", "backfills", ["pipeline", "created_at"])
    op.create_table(
        "backfill_runs",
        sa.Column("backfill_id", sa.String(), nullable=False),
        sa.Column("logical_date", _TS, nullable=False),
        sa.Column("run_id", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("backfill_id", "logical_date", name="pk_backfill_runs"),
        sa.ForeignKeyConstraint(["backfill_id"], ["backfills.id"], name="fk_backfill_runs_backfills",
                                ondelete="CASCADE"),
    )
    op.create_index("ix_runs_logical_date_created_at", "runs", ["logical_date", "created_at"])
    op.create_table(
        "trigger_events",
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("claimed_by", sa.String(), nullable=False),
        sa.Column("claimed_at", _TS, nullable=False),
        sa.Column("run_id", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("pipeline", "event", name="pk_trigger_events"),
    )


def downgrade() -> None:
    op.drop_table("trigger_events")
    op.drop_index("ix_runs_logical_date_created_at", table_name="runs")
    op.drop_table("backfill_runs")
    op.drop_index("ix_backfills_pipeline_created_at", table_name="backfills")
    op.drop_table("backfills")
    op.drop_table("schedule_ticks")
