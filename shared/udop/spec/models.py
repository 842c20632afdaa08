"""Pipeline spec v1: frozen pydantic models of a ``udop/v1`` ``Pipeline`` definition.

These models are the schema (``udop schema`` prints their JSON Schema); loading, locating errors and
checking the DAG live in ``udop.spec.loader`` and ``udop.spec.dag``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from udop.spec.base import ForEach, RetryPolicy, SpecModel, TaskBase
from udop.spec.data_tasks import (
    DATA_TASK_MODELS,
    ExtractTask,
    LoadTask,
    SourceSpec,
    TargetSpec,
    TransformTask,
    ValidateTask,
)
from udop.spec.types import Duration, PipelineName, TaskId

__all__ = ["API_VERSION", "TASK_TYPES", "AlertTarget", "ConnectionSpec", "Defaults", "ForEach", "MaskingSpec",
           "ParamSpec", "Pipeline", "PythonTask", "RetryPolicy", "Schedule", "SpecModel", "StreamTrigger",
           "Task", "TaskBase"]

API_VERSION = "udop/v1"


class Defaults(SpecModel):
    retry: RetryPolicy = RetryPolicy()
    timeout: Duration | None = Field(None, description="per attempt; none means no limit locally")


ParamType = Literal["str", "int", "float", "bool", "date", "datetime"]


class ParamSpec(SpecModel):
    type: ParamType = "str"
    default: Any = None
    description: str | None = None
    required: bool | None = Field(None, description="defaults to true when there is no default")

    @property
    def is_required(self) -> bool:
        return self.required if self.required is not None else self.default is None


class ConnectionSpec(BaseModel):
    """A named connection; its settings are validated by the connector it names.

    Secrets are never written here: use ``{env: NAME}``, ``{file: PATH}`` or
    ``{secret: ARN-or-name}`` references (resolved when the connection is opened).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    connector: str = Field(description="connector name, e.g. postgres, mysql, s3, http")


class Schedule(SpecModel):
    cron: str | None = Field(None, description="five-field cron expression, e.g. '0 6 * * *'")
    rate: str | None = Field(None, description="a fixed rate, e.g. '1 hour', '15 minutes'")
    timezone: str = "UTC"
    enabled: bool = True
    catchup: Literal["none", "latest", "all"] = Field(
        "latest", description="ticks missed while no scheduler ran (local scheduler): start none, only "
        "the latest, or all of them, within catchup_window")
    catchup_window: str = Field("1 day", description="how far back missed ticks count, e.g. '6 hours'")
    jitter: int = Field(0, ge=0, le=3600, description="start up to this many seconds after the tick (a "
                        "fixed offset per pipeline); on AWS, the schedule's flexible time window")

    @model_validator(mode="after")
    def _one_of(self) -> Schedule:
        if (self.cron is None) == (self.rate is None):
            raise ValueError("give exactly one of 'cron' or 'rate'")
        from udop.schedule.expr import check_cron, check_timezone, rate_seconds

        if self.cron is not None:
            check_cron(self.cron)
        if self.rate is not None:
            if not re.fullmatch(r"\d+ (minute|minutes|hour|hours|day|days)", self.rate):
                raise ValueError(f"rate {self.rate!r} must look like '15 minutes', '1 hour' or '2 days'")
            rate_seconds(self.rate)
        if not re.fullmatch(r"\d+ (minute|minutes|hour|hours|day|days)", self.catchup_window):
            raise ValueError(f"catchup_window {self.catchup_window!r} must look like '6 hours' or '1 day'")
        check_timezone(self.timezone)
        return self


class PythonTask(TaskBase):
    """Calls ``package.module:function(context, inputs, **args)``; a user's own code."""

    type: Literal["python"]
    callable: str = Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$", description="'package.module:function'"
    )
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments; ${...} rendered")


#: any task of a pipeline, told apart by its ``type``
Task = Annotated[PythonTask | ExtractTask | TransformTask | ValidateTask | LoadTask,
                 Field(discriminator="type")]


class Metadata(SpecModel):
    name: PipelineName
    description: str | None = None
    owner: str | None = None
    tags: list[str] = Field(default_factory=list)


class MaskingSpec(SpecModel):
    """What the redactor masks for this pipeline besides secrets and the built-in detectors."""

    patterns: list[str] = Field(default_factory=list, description="regular expressions whose matches "
                                "are masked in logs, errors, check samples and responses of this pipeline")
    columns: list[str] = Field(default_factory=list, description="columns whose values are masked in "
                               "check samples (case-insensitive names)")

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for i, pattern in enumerate(value):
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"patterns[{i}] is not a regular expression: {exc}") from None
            if compiled.match(""):
                raise ValueError(f"patterns[{i}] matches the empty string; it would mask nothing useful")
        return value


class AlertTarget(SpecModel):
    """Where a notification goes: a webhook (Slack-compatible JSON) or an SNS topic (AWS)."""

    webhook: str | dict[str, str] | None = Field(
        None, description="an https URL, or a secret reference holding one ({secret: name}, {env: NAME})")
    sns: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:sns:", description="an SNS topic ARN")

    @model_validator(mode="after")
    def _one(self) -> AlertTarget:
        if (self.webhook is None) == (self.sns is None):
            raise ValueError("an alert target is exactly one of {webhook: URL} or {sns: TOPIC_ARN}")
        if isinstance(self.webhook, str) and not re.match(r"^https?://", self.webhook):
            raise ValueError("webhook: give an http(s) URL or a secret reference ({secret: name})")
        if isinstance(self.webhook, dict):
            kinds = [k for k in ("env", "file", "secret") if k in self.webhook]
            if len(kinds) != 1 or set(self.webhook) - {"env", "file", "secret", "key"}:
                raise ValueError("webhook: a secret reference is {secret: name}, {env: NAME} or {file: PATH}")
        return self


class SlaSpec(SpecModel):
    max_duration: Duration = Field(gt=0, description="a run taking longer than this is reported")
    notify: list[AlertTarget] = Field(min_length=1)


AnomalyMetric = Literal["rows", "duration"]
ANOMALY_METRICS: tuple[AnomalyMetric, ...] = ("rows", "duration")


class AnomalySpec(SpecModel):
    """Flag a task whose rows or duration leave median ± k·MAD of its last successful runs."""

    last: int = Field(20, ge=3, le=500, description="how many recent successful runs form the band")
    min_runs: int = Field(5, ge=3, description="no verdict before this many successful runs")
    k: float = Field(5.0, gt=0, description="band width in (scaled) median absolute deviations")
    metrics: list[AnomalyMetric] = Field(default_factory=lambda: list(ANOMALY_METRICS))
    notify: list[AlertTarget] = Field(default_factory=list)


class AlertsSpec(SpecModel):
    on_failure: list[AlertTarget] = Field(default_factory=list, description="notified when a run fails")
    on_success: list[AlertTarget] = Field(default_factory=list, description="notified when a run succeeds")
    sla: SlaSpec | None = None
    anomaly: AnomalySpec | None = None


class FilesTrigger(SpecModel):
    """Start a run per file that lands (or changes) under ``path`` (local scheduler, polled)."""

    path: str = Field(description="folder watched, relative to the scheduler's working directory")
    pattern: str = Field("*", description="glob of the file names that count, e.g. '*.csv'")
    param: str | None = Field(None, description="a declared str parameter that receives the file's path")


class AfterTrigger(SpecModel):
    """Start a run each time a run of another pipeline succeeds (local scheduler; docs/scheduling.md)."""

    pipeline: str = Field(description="the upstream pipeline's name (metadata.name)")
    param: str | None = Field(None, description="a declared str parameter that receives the upstream run id")
    window: str = Field("1 day", description="upstream successes while no scheduler ran that still count, "
                        "e.g. '6 hours'")

    @model_validator(mode="after")
    def _window(self) -> AfterTrigger:
        if not re.fullmatch(r"\d+ (minute|minutes|hour|hours|day|days)", self.window):
            raise ValueError(f"window {self.window!r} must look like '6 hours' or '1 day'")
        return self


class StreamSourceSpec(BaseModel):
    """Where a stream reads: a connector (``kafka``, ``redis``, ...) or a named connection, plus the
    stream source's options (``topic``, ``stream``, ``queue``...), validated when the stream opens."""

    model_config = ConfigDict(extra="allow", frozen=True)

    connector: str | None = Field(None, description="a stream connector's name, e.g. kafka or redis")
    connection: str | None = Field(None, description="a named connection from spec.connections")

    @model_validator(mode="after")
    def _names_one(self) -> StreamSourceSpec:
        if self.connector is None and self.connection is None:
            raise ValueError("a stream source needs 'connection' (a name from spec.connections) or "
                             "'connector'")
        return self


class DeadLetterSpec(SpecModel):
    """Where the messages of a batch that keeps failing go, so the stream moves on."""

    after: int = Field(3, ge=1, le=100, description="tries of one batch (the first and its resumes) before "
                       "its messages go to the target")
    target: TargetSpec = Field(description="any load target: a folder of Parquet files, a table, a topic")


class StreamTrigger(SpecModel):
    """Consume ``source`` continuously (``udop stream FILE``): each micro-batch is a run of this pipeline
    whose task ``id`` (an extract standing in for the source) holds the batch's messages."""

    source: StreamSourceSpec
    id: TaskId = Field("stream", description="the task id the batch goes by: tasks list it in depends_on")
    max_batch_rows: int = Field(10_000, ge=1, le=10_000_000, description="a batch ends at this many messages")
    max_batch_seconds: float = Field(5.0, gt=0, le=3600, description="... or this long after its first one")
    dead_letter: DeadLetterSpec | None = Field(None, description="without it, a failing batch is retried "
                                               "until it passes (the stream waits)")
    retry_delay: float = Field(5.0, ge=0, le=3600, description="seconds between tries of a failed batch")


class Trigger(SpecModel):
    files: FilesTrigger | None = None
    after: AfterTrigger | None = None
    stream: StreamTrigger | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Trigger:
        if sum(x is not None for x in (self.files, self.after, self.stream)) != 1:
            raise ValueError("give exactly one of 'files', 'after' or 'stream'")
        return self


class PipelineBody(SpecModel):
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    defaults: Defaults = Defaults()
    connections: dict[str, ConnectionSpec] = Field(default_factory=dict)
    schedule: Schedule | None = None
    trigger: Trigger | None = None
    max_active_runs: int | None = Field(
        None,
        ge=1,
        le=10000,
        description="runs of this pipeline at the same time; default 1 when an extract is incremental "
        "(two runs would read the same watermark), otherwise no limit",
    )
    tasks: list[Task] = Field(min_length=1)
    masking: MaskingSpec | None = None
    alerts: AlertsSpec | None = None

    @model_validator(mode="after")
    def _trigger_param_declared(self) -> PipelineBody:
        trigger = self.trigger
        for kind, spec in (("files", trigger and trigger.files), ("after", trigger and trigger.after)):
            param = spec.param if spec else None
            if param is not None and param not in self.params:
                raise ValueError(f"trigger.{kind}.param {param!r} is not a declared parameter; declare it "
                                 "under params")
        if trigger is not None and trigger.stream is not None:
            self._add_stream_task(trigger.stream)
        return self

    def _add_stream_task(self, stream: StreamTrigger) -> None:
        """The batch stands in for an extract task named ``stream.id``: append it (unless the definition
        has it, as a stored one does), so the DAG, the executors and lineage see an ordinary extract."""
        source = stream.source
        connector = source.connector
        if source.connection is not None:
            connection = self.connections.get(source.connection)
            if connection is None:
                known = ", ".join(sorted(self.connections)) or "none defined"
                raise ValueError(f"trigger.stream.source.connection {source.connection!r} is not in "
                                 f"spec.connections ({known})")
            connector = connector or connection.connector
        for task in self.tasks:
            if task.id == stream.id:
                if task.type != "extract":
                    raise ValueError(f"trigger.stream.id {stream.id!r} is a {task.type} task; the stream's "
                                     "id names the batch the tasks read: pick another id")
                return
        options = {k: v for k, v in source.model_dump(exclude_unset=True).items() if k != "connector"}
        extract = ExtractTask(id=stream.id, type="extract", source=SourceSpec(connector=connector, **options))
        object.__setattr__(self, "tasks", [*self.tasks, extract])  # frozen: set once, while validating


class Pipeline(SpecModel):
    """A ``udop/v1`` pipeline definition."""

    api_version: Literal["udop/v1"] = Field(alias="apiVersion")
    kind: Literal["Pipeline"]
    metadata: Metadata
    spec: PipelineBody

    @model_validator(mode="after")
    def _not_after_itself(self) -> Pipeline:
        after = self.spec.trigger.after if self.spec.trigger is not None else None
        if after is not None and after.pipeline == self.metadata.name:
            raise ValueError(f"spec.trigger.after.pipeline {after.pipeline!r} is this pipeline: a pipeline "
                             "cannot start after its own runs; name another pipeline")
        return self

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def stream(self) -> StreamTrigger | None:
        """The stream trigger, for a pipeline ``udop stream`` runs."""
        return self.spec.trigger.stream if self.spec.trigger is not None else None

    def task(self, task_id: str) -> Any:
        for task in self.spec.tasks:
            if task.id == task_id:
                return task
        raise KeyError(task_id)

    def retry_for(self, task: TaskBase) -> RetryPolicy:
        """The task's ``retry`` merged field by field over ``spec.defaults.retry``: a field the task
        writes wins, one it leaves out comes from the defaults (not from the built-in default)."""
        defaults = self.spec.defaults.retry
        if task.retry is None:
            return defaults
        return defaults.model_copy(update={k: getattr(task.retry, k) for k in task.retry.model_fields_set})

    def timeout_for(self, task: TaskBase) -> float | None:
        return task.timeout if task.timeout is not None else self.spec.defaults.timeout

    def active_run_limit(self) -> int | None:
        """``spec.max_active_runs``, or its default: 1 with an incremental extract, else no limit."""
        if self.spec.max_active_runs is not None:
            return self.spec.max_active_runs
        return 1 if self.has_incremental_extract() else None

    def has_incremental_extract(self) -> bool:
        for task in self.spec.tasks:
            source = getattr(task, "source", None)
            if source is None:
                continue
            extra = source.model_extra or {}
            connection = self.spec.connections.get(source.connection) if source.connection else None
            settings = (connection.model_extra or {}) if connection is not None else {}
            if extra.get("incremental") or settings.get("incremental"):
                return True
        return False


def _task_types() -> tuple[str, ...]:
    models: tuple[type[TaskBase], ...] = (PythonTask, *DATA_TASK_MODELS)
    return tuple(get_args(m.model_fields["type"].annotation)[0] for m in models)  # each a Literal


TASK_TYPES = _task_types()
