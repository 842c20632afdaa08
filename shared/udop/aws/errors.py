"""Errors as the state machine sees them.

Lambda reports an exception's ``errorType`` as its class name, and the compiled ``Retry``/``Catch``
match names exactly. The handler re-raises a udop error as an exception whose class name is its
stable name from :func:`udop.errors.classify` (``udop.TaskTimeout``, ``udop.ConnectionFailed``,
``udop.DataQualityError``...): the same name the LocalExecutor records. A foreign exception keeps
its class name (``ValueError``) and is retried by the compiled catch-all rule, as locally.
"""

from __future__ import annotations

import re
import threading

from udop.errors import classify

__all__ = ["FUSED_TASK", "for_fused_task", "for_state_machine", "fused_task_of", "state_machine_name"]

#: how a fused Task state's error names the task it belongs to when that is not the state's own task
#: (the load of a transform fused with it): ``[task publish] <message>``; the run events split on it
FUSED_TASK = re.compile(r"^\[task ([A-Za-z_][A-Za-z0-9_-]*)\] ")


_NAMED: dict[tuple[str, type[BaseException]], type[BaseException]] = {}
_NAMED_LOCK = threading.Lock()


def _named(name: str, base: type[BaseException]) -> type[BaseException]:
    # one class per (name, base): made once, as a warm Lambda raises the same errors again
    with _NAMED_LOCK:
        if (name, base) not in _NAMED:
            _NAMED[(name, base)] = type(name, (base,), {"__module__": "udop.aws.errors"})
        return _NAMED[(name, base)]


def state_machine_name(exc: BaseException) -> str:
    """The ``errorType`` the state machine sees for ``exc``: :func:`udop.errors.error_name`."""
    return classify(exc).name


def for_state_machine(exc: BaseException) -> BaseException:
    """An exception equal to ``exc`` in message whose class name the state machine matches on."""
    name = state_machine_name(exc)
    if type(exc).__name__ == name:
        return exc
    # the named class derives from the original's, so retryability read from it is unchanged
    # (a udop subclass defined elsewhere, e.g. SandboxViolation, keeps its class name in the message)
    message = str(exc) if type(exc).__name__ == name.removeprefix("udop.") else f"{type(exc).__name__}: {exc}"
    try:
        return _named(name, type(exc))(message)
    except TypeError:  # a constructor with other arguments: keep the name only
        return _named(name, Exception)(message)


def for_fused_task(exc: BaseException, task_id: str) -> BaseException:
    """:func:`for_state_machine` of ``exc`` with its message starting ``[task <task_id>] ``: the error of
    a fused chain's second task, which the run events record as that task's attempt."""
    named = for_state_machine(exc)
    name = state_machine_name(exc)
    message = f"[task {task_id}] {named}"
    try:
        return _named(name, type(named))(message)
    except TypeError:
        return _named(name, Exception)(message)


def fused_task_of(message: str | None) -> tuple[str | None, str | None]:
    """(the task a fused state's error names, the message without that mark); (None, message) when
    it names none."""
    found = FUSED_TASK.match(message or "")
    if found is None:
        return None, message
    return found.group(1), (message or "")[found.end():]
