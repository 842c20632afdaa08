"""The initial metadata schema: pipelines, versions, runs, task runs, attempts, lineage, checks.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# frozen copies of the types in udop.store.tables at this revision
_TS = sa.DateTime(timezone=True)
_JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "pipelines",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_pipelines"),
    )
    op.create_table(
        "pipeline_versions",
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("definition", _JSON, nullable=False),
        sa.Column("state_machine_arn", sa.String(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["pipeline"], ["pipelines.name"], ondelete="CASCADE",
                                name="fk_pipeline_versions_pipelines"),
        sa.PrimaryKeyConstraint("pipeline", "version", name="pk_pipeline_versions"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("pipeline_version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("executor", sa.String(32), nullable=False),
        sa.Column("params", _JSON, nullable=False),
        sa.Column("logical_date", _TS, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("ended_at", _TS, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("external_id", sa.String(), nullable=True),
        sa.Column("owner", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(["pipeline", "pipeline_version"],
                                ["pipeline_versions.pipeline", "pipeline_versions.version"],
                                ondelete="CASCADE", name="fk_runs_pipeline_versions"),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.UniqueConstraint("external_id", name="uq_runs_external_id"),
    )
    op.create_index("ix_runs_created_at_id", "runs", ["created_at", "id"])
    op.create_index("ix_runs_pipeline_created_at_id", "runs", ["pipeline", "created_at", "id"])
    op.create_index("ix_runs_state_created_at_id", "runs", ["state", "created_at", "id"])
    op.create_table(
        "task_runs",
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("task_id", sa.String(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("ended_at", _TS, nullable=True),
        sa.Column("error_type", sa.String(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("result", _JSON, nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE", name="fk_task_runs_runs"),
        sa.PrimaryKeyConstraint("run_id", "task_id", name="pk_task_runs"),
    )
    op.create_table(
        "attempts",
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("task_id", sa.String(), nullable=False),
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("ended_at", _TS, nullable=True),
        sa.Column("error_type", sa.String(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id", "task_id"], ["task_runs.run_id", "task_runs.task_id"],
                                ondelete="CASCADE", name="fk_attempts_task_runs"),
        sa.PrimaryKeyConstraint("run_id", "task_id", "number", name="pk_attempts"),
    )
    op.create_table(
        "lineage",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("task_id", sa.String(), nullable=False),
        sa.Column("inputs", _JSON, nullable=False),
        sa.Column("output_uri", sa.String(), nullable=True),
        sa.Column("rows", sa.BigInteger(), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("schema_fingerprint", sa.String(), nullable=True),
        sa.Column("recorded_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["run_id", "task_id"], ["task_runs.run_id", "task_runs.task_id"],
                                ondelete="CASCADE", name="fk_lineage_task_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_lineage"),
    )
    op.create_index("ix_lineage_run_id_task_id", "lineage", ["run_id", "task_id"])
    op.create_table(
        "check_results",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("task_id", sa.String(), nullable=False),
        sa.Column("rule", sa.String(), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("failing_rows", sa.BigInteger(), nullable=False),
        sa.Column("sample", _JSON, nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["run_id", "task_id"], ["task_runs.run_id", "task_runs.task_id"],
                                ondelete="CASCADE", name="fk_check_results_task_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_check_results"),
    )
    op.create_index("ix_check_results_run_id_task_id", "check_results", ["run_id", "task_id"])


def downgrade() -> None:
    for table in ("check_results", "lineage", "attempts", "task_runs", "runs", "pipeline_versions",
                  "pipelines"):
        op.drop_table(table)
