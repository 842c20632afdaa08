"""What every log line says about where it comes from: run, pipeline, task, attempt, logical date and
the correlation id that follows a run from the API request through the executor into each task.

One context variable holding a frozen record: a log line costs one lookup, and a worker thread or a
Lambda invocation sets everything at once.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from udop.observability.tasklogs import AttemptLog

__all__ = ["FIELDS", "LogContext", "bound", "correlation_id", "current", "new_correlation_id"]


@dataclass(frozen=True, slots=True)
class LogContext:
    correlation_id: str | None = None
    run_id: str | None = None
    pipeline: str | None = None
    task_id: str | None = None
    attempt: int | None = None
    logical_date: str | None = None
    #: the Lambda request id of the invocation running the attempt (on AWS)
    request_id: str | None = None
    #: where this attempt's own log lines and output go (None outside an attempt)
    capture: AttemptLog | None = None

    def fields(self) -> dict[str, Any]:
        """The identifying fields that are set, in a stable order (what a log line carries)."""
        return {name: value for name in FIELDS if (value := getattr(self, name)) is not None}


FIELDS = tuple(f.name for f in fields(LogContext) if f.name != "capture")
_EMPTY = LogContext()
_current: contextvars.ContextVar[LogContext] = contextvars.ContextVar("udop_log_context", default=_EMPTY)


def current() -> LogContext:
    return _current.get()


def correlation_id() -> str | None:
    return _current.get().correlation_id


def new_correlation_id() -> str:
    return uuid.uuid4().hex


@contextmanager
def bound(**values: Any) -> Iterator[LogContext]:
    """Add ``values`` to the context for the block (in this thread or task only)."""
    token = _current.set(replace(_current.get(), **values))
    try:
        yield _current.get()
    finally:
        _current.reset(token)
