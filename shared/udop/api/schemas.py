"""Request and response bodies of the REST API: pydantic models apart from the store's records.

The ``from_record`` helpers are the one small mapping between storage records and what callers see.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import to_json

try:
    import orjson as _orjson
except ImportError:  # the API Lambda layer ships without it: pydantic-core writes the same bytes
    _orjson = None  # type: ignore[assignment]

from udop.api.audit import AuditEntry
from udop.api.keys import ApiKeyRecord
from udop.states import AttemptState, RunState, TaskState
from udop.store.api import (
    AttemptRecord,
    CheckRecord,
    LineageRecord,
    PipelineRecord,
    PipelineVersionRecord,
    RunRecord,
    TaskRunRecord,
)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(Body):
    """Every error answer: a one-line message and, for invalid definitions, each error located."""

    detail: str
    errors: list[SpecErrorItem] | None = None


class SpecErrorItem(Body):
    path: str | None = Field(None, description="where in the definition, e.g. spec.tasks[2].depends_on[0]")
    line: int | None = None
    message: str


Problem.model_rebuild()


class Health(Body):
    status: Literal["ok", "unavailable"]
    store: str
    executor: str


class PipelineVersion(Body):
    version: int
    content_hash: str
    created_at: datetime
    state_machine_arn: str | None = None
    definition: dict[str, Any] | None = None

    @classmethod
    def from_record(cls, rec: PipelineVersionRecord, *, with_definition: bool) -> PipelineVersion:
        return cls(
            version=rec.version,
            content_hash=rec.content_hash,
            created_at=rec.created_at,
            state_machine_arn=rec.state_machine_arn,
            definition=rec.definition if with_definition else None,
        )


class PipelineSummary(Body):
    name: str
    created_at: datetime
    latest_version: int | None

    @classmethod
    def from_record(cls, rec: PipelineRecord) -> PipelineSummary:
        return cls(
            name=rec.name,
            created_at=rec.created_at,
            latest_version=rec.latest.version if rec.latest else None,
        )


class PipelineDetail(PipelineSummary):
    versions: list[PipelineVersion] = Field(description="oldest first, each with its definition")

    @classmethod
    def from_record(cls, rec: PipelineRecord) -> PipelineDetail:
        return cls(
            name=rec.name,
            created_at=rec.created_at,
            latest_version=rec.latest.version if rec.latest else None,
            versions=[PipelineVersion.from_record(v, with_definition=True) for v in rec.versions],
        )


class PipelineRegistered(Body):
    name: str
    version: int
    content_hash: str
    created: bool = Field(description="false when the definition equals the latest version")


class RunRequest(Body):
    params: dict[str, Any] = Field(default_factory=dict, description="values for the pipeline's params")
    logical_date: datetime | None = Field(None, description="the run's logical date; default now (UTC)")

    @field_validator("params")
    @classmethod
    def _storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        # the run's params are stored: PostgreSQL refuses NUL in JSON text and no driver encodes a lone
        # surrogate, so such a value is the caller's error (422), not an unavailable store (503)
        from udop.spec.loader import unstorable_text

        if (where := unstorable_text(value)) is not None:
            raise ValueError(f"{where or 'a value'} holds a NUL character or a lone surrogate")
        return value


class Attempt(Body):
    number: int
    state: AttemptState
    started_at: datetime
    ended_at: datetime | None = None
    error_type: str | None = None
    error_message: str | None = None
    log: dict[str, Any] | None = Field(
        None, description="where the attempt's log lines are: CloudWatch log group, stream and request id "
        "on AWS; locally their size (read them at /runs/{id}/tasks/{task}/logs)")

    @classmethod
    def from_record(cls, rec: AttemptRecord) -> Attempt:
        from udop.observability.tasklogs import public_log

        return cls(
            number=rec.number,
            state=rec.state,
            started_at=rec.started_at,
            ended_at=rec.ended_at,
            error_type=rec.error_type,
            error_message=rec.error_message,
            log=public_log(rec.log),
        )


class TaskRun(Body):
    task_id: str
    state: TaskState
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error_type: str | None = None
    error_message: str | None = None
    result: dict[str, Any] | None = None
    attempts: list[Attempt] = Field(default_factory=list)

    @classmethod
    def from_record(cls, rec: TaskRunRecord) -> TaskRun:
        return cls(
            task_id=rec.task_id,
            state=rec.state,
            started_at=rec.started_at,
            ended_at=rec.ended_at,
            error_type=rec.error_type,
            error_message=rec.error_message,
            result=rec.result,
            attempts=[Attempt.from_record(a) for a in rec.attempts],
        )


class RunSummary(Body):
    id: str
    pipeline: str
    pipeline_version: int
    state: RunState
    executor: str
    params: dict[str, Any]
    logical_date: datetime
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: str | None = None
    external_id: str | None = None
    trigger: str | None = Field(
        None,
        description="how the run was started: cli, api, schedule, trigger (a file event) or backfill; "
        "null for runs recorded before udop kept it",
    )

    @classmethod
    def fields_of(cls, rec: RunRecord) -> dict[str, Any]:
        return {
            "id": rec.id,
            "pipeline": rec.pipeline,
            "pipeline_version": rec.pipeline_version,
            # the value, not the enum: pydantic-core's to_json infers an enum's type slowly (~3 us a value)
            "state": rec.state.value,
            "executor": rec.executor,
            "params": rec.params,
            "logical_date": rec.logical_date,
            "created_at": rec.created_at,
            "started_at": rec.started_at,
            "ended_at": rec.ended_at,
            "error": rec.error,
            "external_id": rec.external_id,
            "trigger": rec.trigger,
        }

    @classmethod
    def from_record(cls, rec: RunRecord) -> RunSummary:
        return cls(**cls.fields_of(rec))


class RunDetail(RunSummary):
    tasks: list[TaskRun]

    @classmethod
    def from_record(cls, rec: RunRecord) -> RunDetail:
        return cls(**cls.fields_of(rec), tasks=[TaskRun.from_record(t) for t in rec.tasks])

    @classmethod
    def json_of(cls, rec: RunRecord) -> bytes:
        """The JSON of ``from_record(rec)``, written straight from the record (see ``run_page_json``)."""
        from udop.observability.tasklogs import public_log

        fields = cls.fields_of(rec)
        fields["tasks"] = [
            {
                "task_id": t.task_id,
                "state": t.state.value,
                "started_at": t.started_at,
                "ended_at": t.ended_at,
                "error_type": t.error_type,
                "error_message": t.error_message,
                "result": t.result,
                "attempts": [
                    {
                        "number": a.number,
                        "state": a.state.value,
                        "started_at": a.started_at,
                        "ended_at": a.ended_at,
                        "error_type": a.error_type,
                        "error_message": a.error_message,
                        "log": public_log(a.log),
                    }
                    for a in t.attempts
                ],
            }
            for t in rec.tasks
        ]
        return _dumps(fields)


class RunAccepted(Body):
    run_id: str
    pipeline: str
    state: RunState
    href: str = Field(description="where to follow the run")


class RunPage(Body):
    items: list[RunSummary]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null at the end")


def run_page_json(records: list[RunRecord], next_cursor: str | None) -> bytes:
    """The JSON of a ``RunPage`` of ``records``, written by pydantic-core straight from the records.

    Store records need no validation, and building 50 models only to dump them again was half the
    CPU of a ``GET /runs``; the bytes are the same as the models' (a test holds the two together).
    """
    page = {"items": [RunSummary.fields_of(r) for r in records], "next_cursor": next_cursor}
    return _dumps(page)


def _dumps(value: Any) -> bytes:
    """JSON as pydantic-core writes it (UTC as ``Z``, NaN/inf as null), by orjson when it can: it writes
    a page's timestamps several times faster. What orjson refuses (an integer past 64 bits, a key that
    is not a string) goes to pydantic-core (``tests/integration/api/test_http_fast_reads.py``)."""
    if _orjson is not None:
        try:
            return _orjson.dumps(value, option=_orjson.OPT_UTC_Z)
        except TypeError:  # orjson.JSONEncodeError
            pass
    return to_json(value, inf_nan_mode="null")


class Lineage(Body):
    task_id: str
    inputs: list[str]
    output_uri: str | None
    rows: int | None
    bytes: int | None
    schema_fingerprint: str | None
    recorded_at: datetime
    #: column lineage of transform/validate tasks: output column -> [[input dataset, input column]]
    columns: dict[str, list[list[str]]] = Field(default_factory=dict)

    @classmethod
    def from_record(cls, rec: LineageRecord, columns: dict[str, list[list[str]]] | None = None) -> Lineage:
        found = cls.model_validate(rec, from_attributes=True)  # the same fields, by name
        if columns:
            found.columns = columns
        return found


class Check(Body):
    task_id: str
    rule: str
    severity: str
    passed: bool
    failing_rows: int
    sample: list[dict[str, Any]]
    message: str

    @classmethod
    def from_record(cls, rec: CheckRecord) -> Check:
        return cls.model_validate(rec, from_attributes=True)  # the same fields, by name


class Identity(Body):
    subject: str
    role: str | None
    kind: str


class ApiKeyRequest(Body):
    name: str = Field(
        min_length=1,
        max_length=255,
        pattern=r"^[\w .@:-]+$",
        description="what the service account is, e.g. 'airflow-prod'",
    )
    role: Literal["viewer", "operator", "admin"]


class ApiKey(Body):
    id: str
    name: str
    role: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None

    @classmethod
    def from_record(cls, rec: ApiKeyRecord) -> ApiKey:
        return cls(
            id=rec.id,
            name=rec.name,
            role=rec.role,
            created_at=rec.created_at,
            created_by=rec.created_by,
            revoked_at=rec.revoked_at,
        )


class ApiKeyCreated(ApiKey):
    key: str = Field(description="the secret key: shown this once, stored only as a hash")


class AuditItem(Body):
    id: int
    at: datetime
    actor: str
    actor_kind: str
    role: str | None
    action: str
    method: str
    path: str
    status: int
    outcome: str
    detail: str | None
    client: str | None

    @classmethod
    def from_record(cls, rec: AuditEntry) -> AuditItem:
        return cls(**rec.__dict__)


class AuditPage(Body):
    items: list[AuditItem]
    next_cursor: str | None = None
