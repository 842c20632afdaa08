"""The legal predecessors of a state, as the store's guarded UPDATEs name them (no SQLAlchemy here)."""

from __future__ import annotations

from functools import cache
from typing import TypeVar

from udop.errors import TransitionError
from udop.states import AttemptState, RunState, TaskState, check_transition

__all__ = ["predecessors"]

S = TypeVar("S", RunState, TaskState, AttemptState)


def predecessors(target: S) -> tuple[str, ...]:
    """The states from which ``udop.states.check_transition`` allows a move to ``target``."""
    # The cache is keyed by the enum type too: RunState.RUNNING == TaskState.RUNNING == "running".
    return _predecessors(type(target), target.value)


@cache
def _predecessors(kind: type, value: str) -> tuple[str, ...]:
    target = kind(value)
    legal = []
    for state in type(target):
        try:
            check_transition(state, target)
        except TransitionError:
            continue
        legal.append(state.value)
    return tuple(legal)
