"""Find the handler of a task type: built in (``python``) or through entry points."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from udop.errors import FatalError
from udop.tasks.contract import TaskContext, TaskResult

Handler = Callable[[TaskContext, Any, Mapping[str, TaskResult]], TaskResult]

ENTRY_POINT_GROUP = "udop.task_types"


@cache
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


@cache
def get_handler(task_type: str) -> Handler:
    if task_type == "python":
        from udop.tasks.python import run_python_task

        return run_python_task
    ep = _entry_points().get(task_type)
    if ep is None:
        raise FatalError(
            f"no handler for task type {task_type!r} is installed "
            f"(entry point group {ENTRY_POINT_GROUP!r}); is the udop package complete?"
        )
    handler: Handler = ep.load()
    return handler


def run_task(context: TaskContext, task: Any, inputs: Mapping[str, TaskResult]) -> TaskResult:
    """Run one attempt of ``task``. ``inputs`` maps each dependency's id to its result."""
    return get_handler(task.type)(context, task, inputs)
