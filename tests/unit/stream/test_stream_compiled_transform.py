"""A stream's transform is compiled once per batch schema and reused by the next batches of that schema
(``udop_transforms._fusion``): a batch of another schema compiles again, and a transform whose query binds
a value of the run (``${run.id}``), or that has a sql step, compiles for each batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from udop.executor.local import LocalExecutor
from udop.spec.loader import load_pipeline
from udop.states import RunState
from udop.store import open_store
from udop.stream.runner import StreamRunner

PIPELINE = """
apiVersion: udop/v1
kind: Pipeline
metadata: {{name: compiled}}
spec:
  connections:
    bus: {{connector: kafka, bootstrap_servers: "127.0.0.1:9"}}
  trigger:
    stream:
      source: {{connection: bus, topic: orders}}
      id: orders
  tasks:
    - id: priced
      type: transform
      depends_on: [orders]
      steps:
        - filter: "amount >= 0"
        - derive: {{total: "amount * 2"{extra}}}
    - id: land
      type: load
      depends_on: [priced]
      target: {{connector: parquet, path: {out}, mode: append}}
"""


def _runner(tmp_path: Path, extra: str = "") -> tuple[StreamRunner, Any]:
    path = tmp_path / "compiled.yaml"
    path.write_text(PIPELINE.format(out=tmp_path / "out", extra=extra))
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    executor = LocalExecutor(store, data_root=str(tmp_path / "data"), services={"base_dir": str(tmp_path)})
    return StreamRunner(load_pipeline(path), store, executor, None), store


def _batch(runner: StreamRunner, store: Any, n: int, table: pa.Table) -> dict[str, Any]:
    run_id = f"batch-{n}"
    assert runner.run_batch(table, run_id=run_id, end={"0": n}) == RunState.SUCCEEDED
    tasks = {t.task_id: t for t in store.get_run(run_id).tasks}
    assert tasks["priced"].result["metrics"]["fused_into"] == "land"
    return dict(tasks["priced"].result)


def test_a_batch_of_another_schema_compiles_the_transform_again(tmp_path: Path) -> None:
    runner, store = _runner(tmp_path)
    ints = pa.table({"id": [1, 2, 3], "amount": [5, -1, 7]})
    first = _batch(runner, store, 1, ints)
    second = _batch(runner, store, 2, pa.table({"id": [4], "amount": [9]}))
    # the same schema: the same query, fingerprint and lineage (over the batch's own file)
    assert second["output"]["schema_fingerprint"] == first["output"]["schema_fingerprint"]
    assert sorted(second["column_lineage"]) == sorted(first["column_lineage"]) == ["amount", "id", "total"]
    assert second["column_lineage"]["total"][0][0].rstrip("/").endswith("batch-2/orders")
    # a new column, and amount now a double: compiled again
    third = _batch(runner, store, 3, pa.table({"id": [5], "amount": [1.5], "note": ["x"]}))
    assert third["output"]["schema_fingerprint"] != first["output"]["schema_fingerprint"]
    assert sorted(third["column_lineage"]) == ["amount", "id", "note", "total"]
    # the next of that schema reuses its own query, not the first one's
    fourth = _batch(runner, store, 4, pa.table({"id": [7], "amount": [-2.0], "note": ["y"]}))
    assert fourth["output"]["schema_fingerprint"] == third["output"]["schema_fingerprint"]
    assert sorted(fourth["column_lineage"]) == ["amount", "id", "note", "total"]
    # and back to the first schema
    fifth = _batch(runner, store, 5, pa.table({"id": [6], "amount": [2]}))
    assert fifth["output"]["schema_fingerprint"] == first["output"]["schema_fingerprint"]
    assert sorted(fifth["column_lineage"]) == ["amount", "id", "total"]
    rows = [r for f in (tmp_path / "out").rglob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert sorted((r["id"], r["total"], r.get("note")) for r in rows) == [
        (1, 10, None), (3, 14, None), (4, 18, None), (5, 3.0, "x"), (6, 4, None)]


def test_a_transform_binding_the_runs_values_compiles_for_each_batch(tmp_path: Path) -> None:
    runner, store = _runner(tmp_path, extra=', batch: "${run.id}"')
    for n in (1, 2):
        _batch(runner, store, n, pa.table({"id": [n], "amount": [n]}))
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert sorted((r["id"], r["batch"]) for r in rows) == [(1, "batch-1"), (2, "batch-2")]


def test_a_transform_with_a_sql_step_compiles_for_each_batch(tmp_path: Path) -> None:
    # a sql step may read a file of its own, whose columns may change between two batches
    lookup = tmp_path / "lookup.parquet"
    pq.write_table(pa.table({"tag": [1]}), lookup)
    runner, store = _runner(tmp_path, extra="}\n        - sql: \"SELECT * FROM this, read_parquet('" + str(lookup)
                            + "')\"\n        - derive: {again: \"amount\"")
    first = _batch(runner, store, 1, pa.table({"id": [1], "amount": [1]}))
    pq.write_table(pa.table({"tag": ["a"], "label": ["b"]}), lookup)
    second = _batch(runner, store, 2, pa.table({"id": [2], "amount": [2]}))
    assert second["output"]["schema_fingerprint"] != first["output"]["schema_fingerprint"]
