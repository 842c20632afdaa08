"""Helpers of the transform tests: a pipeline from a few task dicts, and a context to run one task in."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from udop.spec.models import Pipeline
from udop.tasks import TaskContext


def make_pipeline(tasks: list[dict[str, Any]], params: dict[str, Any] | None = None) -> Pipeline:
    return Pipeline.model_validate(
        {
            "apiVersion": "udop/v1",
            "kind": "Pipeline",
            "metadata": {"name": "t"},
            "spec": {"params": params or {}, "tasks": tasks},
        }
    )


def context_for(
    pipeline: Pipeline, task_id: str, root: Path, params: dict[str, Any] | None = None, run_id: str = "r1"
) -> TaskContext:
    return TaskContext(
        pipeline=pipeline,
        task_id=task_id,
        run_id=run_id,
        attempt=1,
        logical_date=datetime(2024, 1, 2, tzinfo=UTC),
        params=params or {},
        data_root=str(root / "data"),
        services={"base_dir": str(root)},
    )


def read_output(manifest: Any) -> Any:
    """A task's output as a pyarrow Table: its Parquet folder, or the source files an extract read in
    place (through the same reader the tasks downstream use)."""
    import duckdb
    import pyarrow.parquet as pq

    from udop_transforms._files import reader_sql
    from udop_transforms._snapshot import SNAPSHOT_FORMAT, read_snapshot

    if manifest.format != SNAPSHOT_FORMAT:
        return pq.read_table(manifest.uri)
    snap = read_snapshot(manifest)
    return duckdb.connect().sql(f"SELECT * FROM {reader_sql(snap.connector, [f.path for f in snap.files], snap)}"
                                ).to_arrow_table()
