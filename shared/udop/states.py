"""Run, task and attempt lifecycles: the only place that knows which state changes are legal.

Every executor (local or the Step Functions event handler) asks ``transition`` before it persists a
change; an illegal move is a ``TransitionError``, never a silent overwrite.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

from udop.errors import TransitionError

__all__ = ["AttemptState", "RunState", "TaskState", "check_transition", "is_terminal"]


class RunState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"  # an attempt failed; waiting for the backoff before the next one
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UPSTREAM_FAILED = "upstream_failed"
    CANCELLED = "cancelled"


class AttemptState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    ABANDONED = "abandoned"  # the process running it died or the run was cancelled


_RUN = {
    RunState.PENDING: {RunState.RUNNING, RunState.CANCELLED, RunState.FAILED},
    # running -> running: resumed after the process that ran it died (SIGKILL, power loss)
    RunState.RUNNING: {RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.RUNNING},
    RunState.FAILED: {RunState.RUNNING},  # resume / redrive
    RunState.CANCELLED: {RunState.RUNNING},  # resume
    RunState.SUCCEEDED: set(),
}

_TASK = {
    TaskState.PENDING: {
        TaskState.RUNNING,
        TaskState.UPSTREAM_FAILED,
        TaskState.CANCELLED,
        TaskState.SUCCEEDED,
        TaskState.FAILED,
    },  # the last two: reported by AWS events
    TaskState.RUNNING: {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.RETRYING,
        TaskState.CANCELLED,
        TaskState.PENDING,
    },  # -> pending: resumed after the process died
    TaskState.RETRYING: {TaskState.RUNNING, TaskState.CANCELLED, TaskState.PENDING, TaskState.FAILED},
    TaskState.FAILED: {TaskState.PENDING},
    TaskState.UPSTREAM_FAILED: {TaskState.PENDING},
    TaskState.CANCELLED: {TaskState.PENDING},
    TaskState.SUCCEEDED: set(),
}

_ATTEMPT = {
    AttemptState.RUNNING: {
        AttemptState.SUCCEEDED,
        AttemptState.FAILED,
        AttemptState.TIMED_OUT,
        AttemptState.ABANDONED,
    },
    AttemptState.SUCCEEDED: set(),
    AttemptState.FAILED: set(),
    AttemptState.TIMED_OUT: set(),
    AttemptState.ABANDONED: set(),
}

S = TypeVar("S", RunState, TaskState, AttemptState)

_TABLES: dict[type, dict[Any, Any]] = {RunState: _RUN, TaskState: _TASK, AttemptState: _ATTEMPT}

_TERMINAL = {
    RunState.SUCCEEDED,
    RunState.FAILED,
    RunState.CANCELLED,
    TaskState.SUCCEEDED,
    TaskState.FAILED,
    TaskState.UPSTREAM_FAILED,
    TaskState.CANCELLED,
    AttemptState.SUCCEEDED,
    AttemptState.FAILED,
    AttemptState.TIMED_OUT,
    AttemptState.ABANDONED,
}


def check_transition(current: S | str, new: S) -> S:
    """Return ``new`` if ``current -> new`` is a legal move, else raise ``TransitionError``."""
    table = _TABLES[type(new)]
    cur = type(new)(current)
    if new not in table[cur]:
        kind = type(new).__name__.removesuffix("State").lower()
        raise TransitionError(f"illegal {kind} state change {cur.value} -> {new.value}")
    return new


def is_terminal(state: RunState | TaskState | AttemptState) -> bool:
    return state in _TERMINAL
