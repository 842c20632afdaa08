"""Helpers: build a pipeline from a few task dicts and run its tasks in order through ``run_task``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from udop.spec.models import Pipeline
from udop.tasks import TaskContext, TaskResult, run_task


def make_pipeline(tasks: list[dict[str, Any]], params: dict[str, Any] | None = None) -> Pipeline:
    return Pipeline.model_validate({"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": "t"},
                                    "spec": {"params": params or {}, "tasks": tasks}})


def context_for(pipeline: Pipeline, task_id: str, root: Path, params: dict[str, Any] | None = None,
                run_id: str = "r1") -> TaskContext:
    return TaskContext(pipeline=pipeline, task_id=task_id, run_id=run_id, attempt=1,
                       logical_date=datetime(2024, 1, 2, tzinfo=UTC), params=params or {},
                       data_root=str(root / "data"), services={"base_dir": str(root)})


Runner = Callable[..., dict[str, TaskResult]]


@pytest.fixture
def run(tmp_path: Path) -> Runner:
    """``run(tasks, params=..., only=...)`` -> results by task id (tasks run in the order given)."""

    def _run(tasks: list[dict[str, Any]], params: dict[str, Any] | None = None,
             declared: dict[str, Any] | None = None, run_id: str = "r1") -> dict[str, TaskResult]:
        pipeline = make_pipeline(tasks, declared)
        results: dict[str, TaskResult] = {}
        for task in pipeline.spec.tasks:
            ctx = context_for(pipeline, task.id, tmp_path, params, run_id)
            results[task.id] = run_task(ctx, task, {d: results[d] for d in task.depends_on})
        return results

    return _run
