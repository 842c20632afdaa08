"""Extract and load through a non-file connector (SQLite, a real database file) from data tasks."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

from udop.spec.models import Pipeline
from udop.tasks import TaskContext, TaskResult, run_task


def test_extract_from_and_load_into_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, region TEXT, amount REAL)")
        con.executemany(
            "INSERT INTO orders VALUES (?, ?, ?)", [(1, "eu", 10.0), (2, "us", 5.5), (3, "eu", 2.5)]
        )
    pipeline = Pipeline.model_validate(
        {
            "apiVersion": "udop/v1",
            "kind": "Pipeline",
            "metadata": {"name": "shop"},
            "spec": {
                "tasks": [
                    {
                        "id": "orders",
                        "type": "extract",
                        "source": {"connector": "sqlite", "database": str(db), "table": "orders"},
                    },
                    {
                        "id": "totals",
                        "type": "transform",
                        "depends_on": "orders",
                        "steps": [
                            {
                                "aggregate": {
                                    "by": "region",
                                    "metrics": {"total": {"sum": "amount"}, "n": "count(*)"},
                                }
                            }
                        ],
                    },
                    {
                        "id": "publish",
                        "type": "load",
                        "depends_on": "totals",
                        "target": {
                            "connector": "sqlite",
                            "database": str(db),
                            "table": "region_totals",
                            "mode": "overwrite",
                        },
                    },
                ]
            },
        }
    )
    results: dict[str, TaskResult] = {}
    for task in pipeline.spec.tasks:
        ctx = TaskContext(
            pipeline=pipeline,
            task_id=task.id,
            run_id="r1",
            attempt=1,
            logical_date=datetime(2024, 1, 1, tzinfo=UTC),
            params={},
            data_root=str(tmp_path / "data"),
        )
        results[task.id] = run_task(ctx, task, {d: results[d] for d in task.depends_on})
    extracted = pq.read_table(results["orders"].output.uri)
    assert sorted(extracted["id"].to_pylist()) == [1, 2, 3]
    assert results["publish"].metrics["rows_written"] == 2
    with sqlite3.connect(db) as con:
        got = sorted(con.execute("SELECT region, total, n FROM region_totals").fetchall())
    assert got == [("eu", 12.5, 2), ("us", 5.5, 1)]
