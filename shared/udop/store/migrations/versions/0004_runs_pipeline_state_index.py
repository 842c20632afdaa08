"""``GET /runs?pipeline=...&state=...`` (a UI's "failed runs of this pipeline") reads one index range
newest first instead of walking all of a pipeline's runs to find the few in that state.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_runs_pipeline_state_created_at_id", "runs", ["pipeline", "state", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_runs_pipeline_state_created_at_id", table_name="runs")
