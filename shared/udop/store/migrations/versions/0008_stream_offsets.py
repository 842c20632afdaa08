"""Streams: each stream pipeline's committed source positions, and one row per micro-batch (its run,
the positions it starts at and ends after, pending until its loads committed), so offsets advance
only with the batch's loads and a restart resumes a pending batch instead of reading it again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None

# frozen copies of the types in udop.store.tables at this revision
_TS = sa.DateTime(timezone=True)
_JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "stream_offsets",
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("positions", _JSON, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("batches", sa.BigInteger(), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("pipeline", name="pk_stream_offsets"),
    )
    op.create_table(
        "stream_batches",
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("start_positions", _JSON, nullable=False),
        sa.Column("end_positions", _JSON, nullable=False),
        sa.Column("acks", _JSON, nullable=True),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("ended_at", _TS, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("pipeline", "run_id", name="pk_stream_batches"),
    )
    op.create_index("ix_stream_batches_pipeline_state", "stream_batches", ["pipeline", "state"])


def downgrade() -> None:
    op.drop_index("ix_stream_batches_pipeline_state", table_name="stream_batches")
    op.drop_table("stream_batches")
    op.drop_table("stream_offsets")
