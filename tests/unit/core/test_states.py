"""The lifecycle table: legal moves pass, illegal ones raise."""

import pytest

from udop.errors import TransitionError
from udop.states import AttemptState, RunState, TaskState, check_transition, is_terminal


@pytest.mark.parametrize(
    ("current", "new"),
    [
        ("pending", TaskState.RUNNING),
        ("running", TaskState.RETRYING),
        ("retrying", TaskState.RUNNING),
        ("running", TaskState.SUCCEEDED),
        ("failed", TaskState.PENDING),
        ("pending", TaskState.UPSTREAM_FAILED),
        ("running", TaskState.PENDING),  # resumed after the process died
    ],
)
def test_legal_task_moves(current: str, new: TaskState) -> None:
    assert check_transition(current, new) is new


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (TaskState.SUCCEEDED, TaskState.RUNNING),
        (TaskState.PENDING, TaskState.RETRYING),
        (TaskState.UPSTREAM_FAILED, TaskState.RUNNING),
        (RunState.SUCCEEDED, RunState.RUNNING),
        (AttemptState.FAILED, AttemptState.SUCCEEDED),
        (RunState.FAILED, RunState.SUCCEEDED),
    ],
)
def test_illegal_moves_raise(current: str, new: TaskState) -> None:
    with pytest.raises(TransitionError, match=f"{current} -> {new}"):
        check_transition(current, new)


def test_terminal_states() -> None:
    assert is_terminal(RunState.FAILED) and is_terminal(TaskState.UPSTREAM_FAILED)
    assert not is_terminal(TaskState.RETRYING) and not is_terminal(RunState.RUNNING)
