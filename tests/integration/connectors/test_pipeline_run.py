"""Connectors inside a real run: the spec loader, the LocalExecutor and the extract/load task
handlers move rows from SQLite into PostgreSQL incrementally; a second run loads only new rows."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest
from connectors_support import Tables

from udop.executor.local import LocalExecutor
from udop.spec.loader import load_pipeline
from udop.state.sqlite import SQLiteStateStore
from udop.store import open_store

pytestmark = pytest.mark.postgres

PIPELINE = """
apiVersion: udop/v1
kind: Pipeline
metadata: {{name: orders-sync}}
spec:
  connections:
    shop: {{connector: sqlite, database: shop.db}}  # relative to the definition
    warehouse: {{connector: postgres, host: 127.0.0.1, user: postgres, database: test,
                password: {{env: UDOP_TEST_WAREHOUSE_PASSWORD}}}}
  tasks:
    - id: orders
      type: extract
      source: {{connection: shop, connector: sqlite, table: orders, incremental: {{column: id}}}}
    - id: publish
      type: load
      depends_on: [orders]
      target: {{connector: postgres, connection: warehouse, table: {table}, mode: upsert, keys: [id]}}
"""


def test_incremental_sync_through_the_local_executor(
    pg: Tables, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UDOP_TEST_WAREHOUSE_PASSWORD", "unused-with-trust-auth")
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
        conn.executemany("INSERT INTO orders VALUES (?, ?)", [(i, i * 2.5) for i in range(1, 6)])
    table = pg.new("orders")
    pipeline = load_pipeline(PIPELINE.format(table=table), filename="orders.yaml")
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    state = SQLiteStateStore(tmp_path / "state.db")
    executor = LocalExecutor(
        store,
        workers=2,
        data_root=str(tmp_path / "data"),
        services={"state": state, "base_dir": str(tmp_path)},
    )

    first = executor.run(pipeline, run_id=f"r1-{uuid.uuid4().hex[:6]}")
    assert first.state.value == "succeeded", first
    assert pg.execute(f"SELECT count(*), sum(total) FROM {table}") == [(5, 37.5)]

    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO orders VALUES (?, ?)", [(6, 100.0), (7, 200.0)])
    second = executor.run(pipeline, run_id=f"r2-{uuid.uuid4().hex[:6]}")
    assert second.state.value == "succeeded", second
    record = store.get_run(second.id)
    assert record is not None
    extracted = next(t for t in record.tasks if t.task_id == "orders")
    assert extracted.result["output"]["rows"] == 2  # only the new rows
    assert pg.execute(f"SELECT count(*), sum(total) FROM {table}") == [(7, 337.5)]
    state.close()


FILE_PIPELINE = """
apiVersion: udop/v1
kind: Pipeline
metadata: {name: orders-to-files}
spec:
  connections:
    shop: {connector: sqlite, database: shop.db}
  tasks:
    - id: orders
      type: extract
      source: {connection: shop, connector: sqlite, table: orders, incremental: {column: id}}
    - id: publish
      type: load
      depends_on: [orders]
      target: {connector: parquet, path: out/orders, mode: append}
"""


def test_a_file_load_advances_the_watermark_of_its_incremental_extract(tmp_path: Path) -> None:
    import pyarrow.dataset as ds

    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
        conn.executemany("INSERT INTO orders VALUES (?, ?)", [(i, i * 1.0) for i in range(1, 4)])
    pipeline = load_pipeline(FILE_PIPELINE, filename="files.yaml")
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    state = SQLiteStateStore(tmp_path / "state.db")
    executor = LocalExecutor(store, data_root=str(tmp_path / "data"),
                             services={"state": state, "base_dir": str(tmp_path)})
    assert executor.run(pipeline).state.value == "succeeded"
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO orders VALUES (4, 4.0)")
    second = executor.run(pipeline)
    assert second.state.value == "succeeded"
    record = store.get_run(second.id)
    assert record is not None
    assert next(t for t in record.tasks if t.task_id == "orders").result["output"]["rows"] == 1
    ids = sorted(ds.dataset(tmp_path / "out" / "orders", format="parquet").to_table()["id"].to_pylist())
    assert ids == [1, 2, 3, 4]  # nothing lost, nothing loaded twice
    state.close()
    store.close()
