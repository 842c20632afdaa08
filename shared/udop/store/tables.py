"""SQLAlchemy Core tables of the metadata store (the storage side; records live in ``api.py``).

The initial Alembic revision (``migrations/versions/0001_initial.py``) creates exactly these; a test
compares the migrated database with this metadata, so change both together in a new revision.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.types import TypeEngine

__all__ = [
    "JSONType",
    "UTCDateTime",
    "attempts",
    "backfill_runs",
    "backfills",
    "check_results",
    "lineage",
    "metadata",
    "pipeline_versions",
    "pipelines",
    "runs",
    "schedule_ticks",
    "stream_batches",
    "stream_messages",
    "stream_offsets",
    "task_runs",
    "trigger_events",
]


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    SQLite has no time zones: values are stored as naive UTC text and come back with ``UTC`` attached.
    A naive value handed in is taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


class JSONType(TypeDecorator[Any]):
    """JSON documents; JSONB on PostgreSQL. ``None`` is SQL NULL, not the JSON ``null``.

    A decorator rather than ``JSON().with_variant(JSONB(), "postgresql")``: the variant needs the
    PostgreSQL dialect imported when this module is (~35 ms of every ``udop run`` on SQLite)."""

    impl = JSON(none_as_null=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(JSON(none_as_null=True))

#: surrogate keys: INTEGER on SQLite (the rowid), BIGINT elsewhere
_Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

pipelines = Table(
    "pipelines", metadata,
    Column("name", String(), primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

pipeline_versions = Table(
    "pipeline_versions", metadata,
    Column("pipeline", String(), primary_key=True),
    Column("version", Integer(), primary_key=True, autoincrement=False),
    Column("content_hash", String(64), nullable=False),
    Column("definition", JSONType, nullable=False),
    Column("state_machine_arn", String()),
    Column("created_at", UTCDateTime(), nullable=False),
    ForeignKeyConstraint(["pipeline"], ["pipelines.name"], ondelete="CASCADE"),
)

runs = Table(
    "runs", metadata,
    Column("id", String(), primary_key=True),
    Column("pipeline", String(), nullable=False),
    Column("pipeline_version", Integer(), nullable=False),
    Column("state", String(16), nullable=False),
    Column("executor", String(32), nullable=False),
    Column("params", JSONType, nullable=False),
    Column("logical_date", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime()),
    Column("ended_at", UTCDateTime()),
    Column("error", Text()),
    Column("external_id", String(), unique=True),  # the execution ARN on AWS
    Column("owner", String()),  # "pid@host" of the local process running it
    # renewed by that process while it runs; a run whose lease expired counts as dead (max_active_runs)
    Column("lease_expires_at", UTCDateTime()),
    # how the run was started: cli, api, schedule, trigger (a file event), backfill; NULL before 0007
    Column("trigger", String(16)),
    # deleting a pipeline deletes its runs and everything under them
    ForeignKeyConstraint(["pipeline", "pipeline_version"],
                         ["pipeline_versions.pipeline", "pipeline_versions.version"], ondelete="CASCADE"),
    # list_runs: newest first, optionally by pipeline or state, with (created_at, id) as the cursor
    Index(None, "created_at", "id"),
    Index(None, "pipeline", "created_at", "id"),
    Index(None, "state", "created_at", "id"),
    Index(None, "pipeline", "state", "created_at", "id"),  # both filters at once (revision 0004)
    Index(None, "logical_date", "created_at"),  # runs list --logical-date (revision 0005)
    Index(None, "trigger", "created_at", "id"),  # GET /runs?trigger= (revision 0007)
)

task_runs = Table(
    "task_runs", metadata,
    Column("run_id", String(), primary_key=True),
    Column("task_id", String(), primary_key=True),
    Column("position", Integer(), nullable=False),  # the order create_run was given
    Column("state", String(16), nullable=False),
    Column("started_at", UTCDateTime()),
    Column("ended_at", UTCDateTime()),
    Column("error_type", String()),
    Column("error_message", Text()),
    Column("result", JSONType),
    ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
)

attempts = Table(
    "attempts", metadata,
    Column("run_id", String(), primary_key=True),
    Column("task_id", String(), primary_key=True),
    Column("number", Integer(), primary_key=True, autoincrement=False),
    Column("state", String(16), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("ended_at", UTCDateTime()),
    Column("error_type", String()),
    Column("error_message", Text()),
    # where the attempt's own log lines are: a local file and the attempt's tag in it, or a CloudWatch
    # log group/stream/request id; with their size and whether they were cut (revision 0006)
    Column("log", JSONType),
    ForeignKeyConstraint(["run_id", "task_id"], ["task_runs.run_id", "task_runs.task_id"],
                         ondelete="CASCADE"),
)

lineage = Table(
    "lineage", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("run_id", String(), nullable=False),
    Column("task_id", String(), nullable=False),
    Column("inputs", JSONType, nullable=False),
    Column("output_uri", String()),
    Column("rows", BigInteger()),
    Column("bytes", BigInteger()),
    Column("schema_fingerprint", String()),
    Column("recorded_at", UTCDateTime(), nullable=False),
    ForeignKeyConstraint(["run_id", "task_id"], ["task_runs.run_id", "task_runs.task_id"],
                         ondelete="CASCADE"),
    Index(None, "run_id", "task_id"),
)

check_results = Table(
    "check_results", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("run_id", String(), nullable=False),
    Column("task_id", String(), nullable=False),
    Column("rule", String(), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("passed", Boolean(), nullable=False),
    Column("failing_rows", BigInteger(), nullable=False),
    Column("sample", JSONType, nullable=False),
    Column("message", Text(), nullable=False),
    ForeignKeyConstraint(["run_id", "task_id"], ["task_runs.run_id", "task_runs.task_id"],
                         ondelete="CASCADE"),
    Index(None, "run_id", "task_id"),
)

# --- schedules and backfills (revision 0005; udop.schedule.store reads and writes these) ---------------

#: one row per (pipeline, tick) a scheduler fired: the primary key is the claim, so of two schedulers on
#: one database only the one whose INSERT lands starts a run for that tick
schedule_ticks = Table(
    "schedule_ticks", metadata,
    Column("pipeline", String(), primary_key=True),
    Column("tick", UTCDateTime(), primary_key=True),
    Column("claimed_by", String(), nullable=False),  # "pid@host" of the scheduler
    Column("claimed_at", UTCDateTime(), nullable=False),
    Column("outcome", String(16), nullable=False),  # claimed | started | skipped | failed
    Column("run_id", String()),
    Column("detail", Text()),
)

backfills = Table(
    "backfills", metadata,
    Column("id", String(), primary_key=True),
    Column("pipeline", String(), nullable=False),
    Column("state", String(16), nullable=False),  # running | succeeded | failed | cancelled
    Column("start", UTCDateTime(), nullable=False),
    Column("end", UTCDateTime(), nullable=False),
    Column("step", String(16), nullable=False),
    Column("max_parallel", Integer(), nullable=False),
    Column("params", JSONType, nullable=False),
    Column("executor", String(32), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("ended_at", UTCDateTime()),
    Column("error", Text()),
    Index(None, "pipeline", "created_at"),
)

#: the logical dates of a backfill and the run each has (none yet: not started)
backfill_runs = Table(
    "backfill_runs", metadata,
    Column("backfill_id", String(), primary_key=True),
    Column("logical_date", UTCDateTime(), primary_key=True),
    Column("run_id", String()),
    ForeignKeyConstraint(["backfill_id"], ["backfills.id"], ondelete="CASCADE"),
)

#: one row per (pipeline, event) a trigger fired: a file version (path, mtime, size); the primary key
#: de-duplicates, so one run per object version whatever the number of schedulers
trigger_events = Table(
    "trigger_events", metadata,
    Column("pipeline", String(), primary_key=True),
    Column("event", String(), primary_key=True),
    Column("claimed_by", String(), nullable=False),
    Column("claimed_at", UTCDateTime(), nullable=False),
    Column("run_id", String()),
)

# --- streams (revision 0008; udop.stream.store reads and writes these) ---------------------------

#: where each stream pipeline's source stands: the positions after the last committed batch
#: (Kafka ``{"topic:partition": next offset}``, a Redis stream's last id, ...), JSON
stream_offsets = Table(
    "stream_offsets", metadata,
    Column("pipeline", String(), primary_key=True),
    Column("positions", JSONType, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("batches", BigInteger(), nullable=False),
    Column("messages", BigInteger(), nullable=False),
)

#: one row per micro-batch: its run, the positions it starts at and ends after, and what became of it
#: (pending: its loads may or may not have committed, a restart resumes its run; committed; dead_letter)
stream_batches = Table(
    "stream_batches", metadata,
    Column("pipeline", String(), primary_key=True),
    Column("run_id", String(), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("start_positions", JSONType, nullable=False),
    Column("end_positions", JSONType, nullable=False),
    Column("acks", JSONType),
    Column("messages", Integer(), nullable=False),
    Column("tries", Integer(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("ended_at", UTCDateTime()),
    Column("error", Text()),
    #: the ids of the batch's messages where the broker may hand one over again (SQS message ids,
    #: RabbitMQ message_id), JSON; kept in ``stream_messages`` when the batch settles (revision 0009)
    Column("message_ids", JSONType),
    #: where the batch's input (its messages as Parquet) is kept durably, for a batch whose run may fail
    #: after one of its loads committed (the stream runner on Lambda, a pipeline with several loads):
    #: such a batch is resumed, not run again regrouped; ``running_since``: when its current try
    #: started (None: no try runs; a later delivery of any of its messages resumes it) (revision 0010)
    Column("input_uri", Text()),
    Column("running_since", UTCDateTime()),
    Index(None, "pipeline", "state"),
)

#: the ids of messages in committed (or dead-lettered) batches, kept as long as the broker may hand the
#: same message over again: one that comes back is acknowledged, not loaded (revision 0009)
stream_messages = Table(
    "stream_messages", metadata,
    Column("pipeline", String(), primary_key=True),
    Column("message_id", String(), primary_key=True),
    Column("run_id", String(), nullable=False),
    Column("settled_at", UTCDateTime(), nullable=False),
    Index(None, "pipeline", "settled_at"),
)
