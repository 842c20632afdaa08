"""Streams: a batch's durable input and whether a try of it runs, so the stream runner on Lambda resumes a
failed batch of a pipeline with several loads (some of which may have committed) instead of running its
messages again in other groupings.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None

# frozen copies of the types in udop.store.tables at this revision
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("stream_batches", sa.Column("input_uri", sa.Text(), nullable=True))
    op.add_column("stream_batches", sa.Column("running_since", _TS, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stream_batches") as batch:
        batch.drop_column("running_since")
        batch.drop_column("input_uri")
