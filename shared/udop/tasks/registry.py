"""Find the handler of a task type: built in (``python``) or through entry points."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from functools import cache
from typing import Any

from udop.errors import FatalError
from udop.sandbox import active, redactor
from udop.tasks.contract import CheckResult, TaskContext, TaskResult

Handler = Callable[[TaskContext, Any, Mapping[str, TaskResult]], TaskResult]

ENTRY_POINT_GROUP = "udop.task_types"


@cache
def _entry_points() -> dict[str, Any]:
    from udop.plugins import entry_points_of

    return {ep.name: ep for ep in entry_points_of(ENTRY_POINT_GROUP)}


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
    """Run one attempt of ``task``. ``inputs`` maps each dependency's id to its result.

    The attempt runs under ``context.policy`` (what it may touch); its check samples and messages and
    the message of any error it raises pass through the redactor, which is what the store, the API
    and the logs then see.
    """
    masking = getattr(getattr(context.pipeline, "spec", None), "masking", None)
    with active(context.policy), redactor.scope(masking.patterns if masking else (),
                                                masking.columns if masking else ()):
        try:
            result = get_handler(task.type)(context, task, inputs)
        except Exception as exc:
            raise redact_error(exc) from None
        if not result.checks:
            return result
        return replace(result, checks=redact_checks(result.checks))


def redact_checks(checks: Iterable[CheckResult]) -> tuple[CheckResult, ...]:
    return tuple(replace(c, sample=redactor.redact_value(c.sample), message=redactor.redact(c.message))
                 for c in checks)


def redact_error(exc: Exception) -> Exception:
    """The same error (same class, same attributes) with its message redacted."""
    text = str(exc)
    clean = redactor.redact(text)
    checks = getattr(exc, "checks", None)
    if clean == text and not checks:
        return exc
    exc.args = (clean,)
    if hasattr(exc, "message"):
        exc.message = redactor.redact(str(exc.message))
    if checks:
        exc.checks = redact_checks(checks)  # type: ignore[attr-defined]
    return exc
