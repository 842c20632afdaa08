"""What an executor reports while it runs: one ``RunEvent`` per state change, for progress displays."""

from __future__ import annotations

from dataclasses import dataclass, field
from time import time


@dataclass(frozen=True, slots=True)
class RunEvent:
    kind: str  # "run" | "task"
    run_id: str
    state: str
    task_id: str | None = None
    attempt: int | None = None
    message: str | None = None
    at: float = field(default_factory=time)
