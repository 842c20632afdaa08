"""Fixture ``run``: run a few data tasks in order through ``run_task``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transform_helpers import context_for, make_pipeline

from udop.tasks import TaskResult, run_task

Runner = Callable[..., dict[str, TaskResult]]


@pytest.fixture
def run(tmp_path: Path) -> Runner:
    """``run(tasks, params=..., only=...)`` -> results by task id (tasks run in the order given)."""

    def _run(
        tasks: list[dict[str, Any]],
        params: dict[str, Any] | None = None,
        declared: dict[str, Any] | None = None,
        run_id: str = "r1",
    ) -> dict[str, TaskResult]:
        pipeline = make_pipeline(tasks, declared)
        results: dict[str, TaskResult] = {}
        for task in pipeline.spec.tasks:
            ctx = context_for(pipeline, task.id, tmp_path, params, run_id)
            results[task.id] = run_task(ctx, task, {d: results[d] for d in task.depends_on})
        return results

    return _run
