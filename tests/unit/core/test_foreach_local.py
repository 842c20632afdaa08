"""`foreach` on the LocalExecutor: one call per partition or file, outputs read back as one dataset."""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq
import pytest

from udop.executor.local import LocalExecutor
from udop.spec.loader import load_pipeline
from udop.states import RunState


@pytest.mark.parametrize("over", ["partitions", "files"])
def test_foreach_runs_once_per_partition_and_combines_the_outputs(
    project: Any, store: Any, over: str
) -> None:
    path = project.pipeline(
        [
            project.task("parts", "partitioned"),
            project.task(
                "per_part",
                "count_item",
                depends_on=["parts"],
                foreach={"input": "parts", "over": over, "max_concurrency": 2},
            ),
        ]
    )
    executor = LocalExecutor(
        store, data_root=str(project.root / "data"), services={"base_dir": str(project.root)}
    )
    run = executor.run(load_pipeline(path, import_callables=True))
    assert run.state == RunState.SUCCEEDED
    record = {t.task_id: t for t in store.get_run(run.id).tasks}["per_part"]
    output = record.result["output"]
    assert output["rows"] == 3 and output["files"] == 3 and record.result["metrics"] == {"items": 3}
    combined = pq.read_table(output["uri"]).to_pylist()
    assert sorted((r["rows"], r["total"]) for r in combined) == [(10, 45), (10, 145), (10, 245)]
    assert project.count("per_part") == 3
