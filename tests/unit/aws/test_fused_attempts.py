"""How the run events split a fused Task state's invocations into its two tasks' attempts."""

from __future__ import annotations

from datetime import UTC, datetime

from udop.aws.errors import for_fused_task, fused_task_of
from udop.aws.events import ExecutionAttempt, _split_fused
from udop.errors import FatalError, error_name
from udop.states import AttemptState

NOW = datetime(2026, 11, 30, tzinfo=UTC)


def _call(state: AttemptState | None, *, error: str | None = None, message: str | None = None,
          answer: dict[str, object] | None = None) -> ExecutionAttempt:
    return ExecutionAttempt(task_id="t", started_at=NOW, state=state, error_type=error, error_message=message,
                            result={"output": {"rows": 2}} if state is AttemptState.SUCCEEDED else None,
                            fused="l", fused_response=answer)


def _seen(attempts: list[ExecutionAttempt]) -> list[tuple[str, str | None, str | None, str | None]]:
    return [(a.task_id, a.state.value if a.state else None, a.error_type, a.error_message) for a in attempts]


def test_a_load_error_names_the_load_and_loses_its_mark() -> None:
    named = for_fused_task(FatalError("task 'l': target: cannot write /out"), "l")
    assert type(named).__name__ == error_name(FatalError)
    assert str(named) == "[task l] task 'l': target: cannot write /out"
    assert fused_task_of(str(named)) == ("l", "task 'l': target: cannot write /out")
    assert fused_task_of("[task] not a mark") == (None, "[task] not a mark")
    foreign = for_fused_task(ValueError("bad"), "l")
    assert type(foreign).__name__ == "ValueError" and isinstance(foreign, ValueError)


def test_each_invocation_becomes_the_attempts_of_the_task_it_worked_for() -> None:
    done: set[str] = set()
    attempts = [
        _call(AttemptState.FAILED, error="udop.FatalError", message="task 't': bad step"),  # the transform's
        _call(AttemptState.FAILED, error="udop.RetryableError", message="[task l] target busy"),  # the load's
        _call(AttemptState.TIMED_OUT, error="udop.TaskTimeout", message="States.Timeout"),  # the load alone ran
        _call(AttemptState.SUCCEEDED, answer={"task_id": "l", "output": {"rows": 2}, "reused": False}),
    ]
    split = _split_fused(attempts, done)
    assert _seen(split) == [
        ("t", "failed", "udop.FatalError", "task 't': bad step"),
        ("t", "succeeded", None, None), ("l", "failed", "udop.RetryableError", "target busy"),
        ("l", "timed_out", "udop.TaskTimeout", "States.Timeout"),
        ("t", "succeeded", None, None), ("l", "succeeded", None, None),
    ]
    assert split[-1].result == {"output": {"rows": 2}} and split[-1].log_task == "t"
    assert done == {"t"}
    # a later execution (an emulated redrive) whose first invocation fails without a mark: the load's
    assert _seen(_split_fused([_call(None)], done)) == [("l", None, None, None)]
    assert _seen(_split_fused([_call(None)], set())) == [("t", None, None, None)]
