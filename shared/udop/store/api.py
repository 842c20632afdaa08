"""The metadata store contract: records (plain dataclasses) and the ``MetadataStore`` protocol.

Storage models (SQLAlchemy tables) live apart in ``udop.store.tables``; these records are what the
executor, the CLI and the API see. Every state change goes through ``udop.states.check_transition``
inside the store's own transaction, so two writers cannot make an illegal move.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from udop.states import AttemptState, RunState, TaskState

#: how a run can be started, as ``RunRecord.trigger`` records it
RUN_TRIGGERS: tuple[str, ...] = ("cli", "api", "schedule", "trigger", "backfill", "stream")


@dataclass(frozen=True)
class PipelineVersionRecord:
    pipeline: str
    version: int  # 1, 2, ... per pipeline; a new version only when the content hash changes
    content_hash: str  # sha256 of the canonical JSON of the definition
    definition: dict[str, Any]
    created_at: datetime
    state_machine_arn: str | None = None  # set by the deployer for AWS pipelines


@dataclass(frozen=True)
class PipelineRecord:
    name: str
    created_at: datetime
    versions: list[PipelineVersionRecord] = field(default_factory=list)  # oldest first

    @property
    def latest(self) -> PipelineVersionRecord | None:
        return self.versions[-1] if self.versions else None


@dataclass(frozen=True)
class AttemptRecord:
    number: int
    state: AttemptState
    started_at: datetime
    ended_at: datetime | None = None
    error_type: str | None = None
    error_message: str | None = None
    #: where its log lines are (``udop.observability.tasklogs.render_log`` reads it): {"kind": "file",
    #: "path", "key", "bytes", "truncated"} or {"kind": "cloudwatch", "log_group", "log_stream", "request_id"}
    log: dict[str, Any] | None = None


@dataclass(frozen=True)
class TaskRunRecord:
    task_id: str
    state: TaskState
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error_type: str | None = None
    error_message: str | None = None
    result: dict[str, Any] | None = None  # TaskResult.to_dict() of the successful attempt
    attempts: list[AttemptRecord] = field(default_factory=list)


@dataclass(frozen=True)
class LineageRecord:
    task_id: str
    inputs: list[str]  # upstream task ids and/or URIs read
    output_uri: str | None
    rows: int | None
    bytes: int | None
    schema_fingerprint: str | None
    recorded_at: datetime


@dataclass(frozen=True)
class LineageEdge:
    """One lineage row with the run's pipeline: what ``udop lineage`` walks across runs."""

    pipeline: str
    run_id: str
    task_id: str
    inputs: list[str]
    output_uri: str
    recorded_at: datetime


@dataclass(frozen=True)
class CheckRecord:
    task_id: str
    rule: str
    severity: str
    passed: bool
    failing_rows: int
    sample: list[dict[str, Any]]
    message: str


@dataclass(frozen=True)
class RunRecord:
    id: str
    pipeline: str
    pipeline_version: int
    state: RunState
    executor: str  # "local" | "stepfunctions"
    params: dict[str, Any]
    logical_date: datetime
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: str | None = None
    external_id: str | None = None  # the execution ARN on AWS
    owner: str | None = None  # "pid@host" of the local process running it
    lease_expires_at: datetime | None = None  # renewed by the owner while it runs
    #: how the run was started: "cli", "api", "schedule", "trigger" (a file event), "backfill"; None for a
    #: run recorded before udop kept it, or created by a caller that did not say
    trigger: str | None = None
    # filled by get_run, find_run_by_external_id and create_run; empty from list_runs and set_run_state
    tasks: list[TaskRunRecord] = field(default_factory=list)


def _anyone_alive(owner: str | None) -> bool:
    return True


@dataclass(frozen=True)
class RunSlot:
    """Start a run only while fewer than ``max_active`` other runs of its pipeline are live.

    A run is live while its lease (``lease_seconds``, renewed by its owner) has not expired and
    ``alive(owner)`` says its process still exists (a process on this machine can be asked at once;
    elsewhere the lease decides). ``max_active=None`` means no limit; the lease is still taken.
    """

    owner: str
    lease_seconds: float
    max_active: int | None = None
    alive: Callable[[str | None], bool] = _anyone_alive


class MetadataStore(Protocol):
    """Implemented by ``udop.store.sql.SqlMetadataStore`` (SQLite and PostgreSQL)."""

    # pipelines
    def register_pipeline(self, name: str, definition: dict[str, Any],
                          state_machine_arn: str | None = None) -> PipelineVersionRecord: ...
    def get_pipeline(self, name: str) -> PipelineRecord | None: ...
    def list_pipelines(self) -> list[PipelineRecord]: ...
    def delete_pipeline(self, name: str) -> bool: ...

    # runs
    def create_run(self, *, run_id: str, pipeline: str, pipeline_version: int, task_ids: list[str],
                   params: dict[str, Any], logical_date: datetime, executor: str = "local",
                   external_id: str | None = None, slot: RunSlot | None = None,
                   trigger: str | None = None) -> RunRecord: ...
    def get_run(self, run_id: str) -> RunRecord | None: ...
    def find_run_by_external_id(self, external_id: str) -> RunRecord | None: ...
    def attempt_state(self, run_id: str, task_id: str, number: int) -> AttemptState | None: ...
    def list_runs(self, *, pipeline: str | None = None, state: RunState | None = None, limit: int = 50,
                  before: str | None = None, logical_date: datetime | None = None,
                  trigger: str | None = None) -> list[RunRecord]: ...
    def set_run_state(self, run_id: str, state: RunState, *, error: str | None = None,
                      owner: str | None = None) -> RunRecord: ...

    # tasks and attempts (each call is one transaction)
    def start_attempt(self, run_id: str, task_id: str, number: int) -> None: ...
    def finish_attempt(self, run_id: str, task_id: str, number: int, *, attempt_state: AttemptState,
                       task_state: TaskState, error_type: str | None = None,
                       error_message: str | None = None, result: dict[str, Any] | None = None,
                       log: dict[str, Any] | None = None) -> None: ...
    def set_task_states(self, run_id: str, task_ids: list[str], state: TaskState,
                        *, error_message: str | None = None) -> None: ...
    def reset_for_retry(self, run_id: str, task_ids: list[str]) -> list[str]: ...
    def reset_for_resume(self, run_id: str, *, slot: RunSlot | None = None,
                         pipeline_version: int | None = None) -> list[str]: ...
    def renew_lease(self, run_id: str, owner: str, lease_seconds: float) -> bool: ...

    # what the tasks left behind
    def get_lineage(self, run_id: str) -> list[LineageRecord]: ...
    def get_checks(self, run_id: str) -> list[CheckRecord]: ...
    def lineage_edges(self, limit: int = 100_000) -> list[LineageEdge]: ...

    def close(self) -> None: ...
