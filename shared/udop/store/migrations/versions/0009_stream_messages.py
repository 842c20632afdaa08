"""Streams: the ids of committed messages where the broker may hand a message over again (SQS, RabbitMQ
classic queues), so one that comes back after its batch committed is acknowledged, not loaded again —
whichever batch it was in, not only the last.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None

# frozen copies of the types in udop.store.tables at this revision
_TS = sa.DateTime(timezone=True)
_JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.add_column("stream_batches", sa.Column("message_ids", _JSON, nullable=True))
    op.create_table(
        "stream_messages",
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("message_id", sa.String(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("settled_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("pipeline", "message_id", name="pk_stream_messages"),
    )
    op.create_index("ix_stream_messages_pipeline_settled_at", "stream_messages", ["pipeline", "settled_at"])


def downgrade() -> None:
    op.drop_index("ix_stream_messages_pipeline_settled_at", table_name="stream_messages")
    op.drop_table("stream_messages")
    with op.batch_alter_table("stream_batches") as batch:
        batch.drop_column("message_ids")
