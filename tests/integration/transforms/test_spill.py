"""A transform over more data than its memory limit spills to disk instead of failing: the task's
DuckDB runs under the task's ``memory_limit`` (not the process's) and reports that it spilled."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from udop.spec.models import Pipeline
from udop.tasks import Manifest, TaskContext, TaskResult, run_task

pytestmark = pytest.mark.slow

ROWS = 1_500_000
LIMIT = "100MB"


def test_sort_bigger_than_the_memory_limit_spills(tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.mkdir()
    data = src / "part.parquet"
    duckdb.sql(
        f"COPY (SELECT range AS id, md5(range::varchar) || md5((range * 7)::varchar) AS payload "
        f"FROM range({ROWS})) TO '{data}' (FORMAT parquet)"
    )
    # the same sort in plain DuckDB with spilling switched off does not fit in the limit
    plain = duckdb.connect()
    plain.execute(f"SET memory_limit = '{LIMIT}'")
    plain.execute("SET temp_directory = ''")
    plain.execute("SET preserve_insertion_order = false")
    with pytest.raises(duckdb.OutOfMemoryException):
        plain.execute(f"COPY (SELECT * FROM '{data}' ORDER BY payload DESC) TO '{tmp_path / 'x.parquet'}'")

    pipeline = Pipeline.model_validate(
        {
            "apiVersion": "udop/v1",
            "kind": "Pipeline",
            "metadata": {"name": "spill"},
            "spec": {
                "tasks": [
                    {"id": "big", "type": "python", "callable": "x:y"},
                    {
                        "id": "t",
                        "type": "transform",
                        "depends_on": "big",
                        "memory_limit": LIMIT,
                        "steps": [{"sort": ["payload desc"]}],
                    },
                ]
            },
        }
    )
    ctx = TaskContext(
        pipeline=pipeline,
        task_id="t",
        run_id="r1",
        attempt=1,
        logical_date=datetime(2024, 1, 1, tzinfo=UTC),
        params={},
        data_root=str(tmp_path / "data"),
    )
    result = run_task(ctx, pipeline.task("t"), {"big": TaskResult(output=Manifest(uri=str(src)))})
    assert result.output.rows == ROWS
    # the task's own limit was the one DuckDB applied, and the sort did not fit in it: it spilled
    assert result.metrics["memory_limit"] == "95.3 MiB"  # DuckDB's rendering of 100MB
    assert result.metrics["spilled"] is True
    out = pq.ParquetFile(Path(result.output.uri) / "part-0.parquet")
    head = out.read_row_group(0)["payload"].to_pylist()
    assert head == sorted(head, reverse=True)
    ((largest,),) = duckdb.sql(f"SELECT max(payload) FROM '{data}'").fetchall()
    assert head[0] == largest
