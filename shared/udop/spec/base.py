"""The leaf of the spec models: the base class and the fields every task type has, which both
``udop.spec.models`` (the pipeline) and ``udop.spec.data_tasks`` (the data task types) build on."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from udop.spec.types import Duration, TaskId

__all__ = ["ForEach", "RetryPolicy", "SpecModel", "TaskBase"]


class SpecModel(BaseModel):
    """Base of every spec model: frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RetryPolicy(SpecModel):
    """Exponential backoff with full jitter, as Step Functions' ``Retry`` does it.

    Attempt ``n`` (n >= 2) waits ``min(max_delay, base_delay * backoff_rate ** (n - 2))``; with
    ``jitter: full`` a uniformly random part of that.
    """

    max_attempts: int = Field(1, ge=1, le=100, description="attempts in all, the first included")
    base_delay: Duration = Field(1.0, description="wait before the second attempt")
    backoff_rate: float = Field(2.0, ge=1.0, le=10.0, description="factor applied to the wait per attempt")
    max_delay: Duration = Field(300.0, description="the wait between attempts never exceeds this")
    jitter: Literal["full", "none"] = "full"
    retry_on: tuple[str, ...] | None = Field(
        None, description="error names retried (e.g. [udop.ConnectionFailed, ValueError]); default: "
        "every retryable error. A FatalError/InputError name cannot be listed: those are never retried")

    @field_validator("retry_on")
    @classmethod
    def _retryable_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        from udop.errors import NOT_RETRIED

        if value is None:
            return None
        for name in value:
            if name in NOT_RETRIED:
                raise ValueError(f"{name} is never retried (another attempt cannot fix it); remove it")
            if not name or name.startswith(("States.", "Lambda.")):
                raise ValueError(f"{name!r} is not a udop or exception class name; name errors as run "
                                 "records show them, e.g. udop.TaskTimeout or ValueError")
        if not value:
            raise ValueError("an empty list retries nothing; use max_attempts: 1 instead")
        return value

    def retries(self, name: str, retryable: bool) -> bool:
        """Whether this policy retries a failure named ``name`` (see ``udop.errors.classify``)."""
        return retryable and (self.retry_on is None or name in self.retry_on)

    def delay(self, attempt: int) -> float:
        """The un-jittered wait after attempt number ``attempt`` (1-based) failed."""
        return min(self.max_delay, self.base_delay * self.backoff_rate ** max(0, attempt - 1))


class ForEach(SpecModel):
    """Run the task once per file or partition of one input (a Map state on AWS)."""

    input: TaskId = Field(description="the dependency whose output is split")
    over: Literal["files", "partitions"] = "files"
    max_concurrency: int = Field(0, ge=0, le=10000, description="0 means no limit")


class TaskBase(SpecModel):
    """Fields every task type has."""

    id: TaskId
    type: str
    description: str | None = None
    depends_on: list[TaskId] = Field(default_factory=list)
    retry: RetryPolicy | None = Field(None, description="overrides spec.defaults.retry")
    timeout: Duration | None = Field(None, description="overrides spec.defaults.timeout")
    foreach: ForEach | None = None
    queue: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
        description="with --executor celery: the worker queue this task goes to (e.g. gpu, big-memory); "
        "other executors run every task alike",
    )

    @field_validator("depends_on", mode="before")
    @classmethod
    def _single_dependency(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value
