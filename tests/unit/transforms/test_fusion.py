"""Fusion: a transform whose output only a file load reads runs inside the load's query (no Parquet in
between), while each task keeps its own attempt, rows, schema fingerprint and lineage; a failure is
reported by the task it belongs to; a load run on its own later (retry, resume) reads the view; and
``fuse: false`` / ``UDOP_FUSE=false`` turn it off."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from transform_helpers import context_for, make_pipeline

from udop.errors import FatalError
from udop.executor.local import LocalExecutor
from udop.spec.loader import load_pipeline
from udop.states import RunState, TaskState
from udop.tasks import TaskResult, run_task
from udop.tasks.datasets import schema_fingerprint

ORDERS = pa.table({"id": list(range(1, 9)), "region": ["eu", "us", "eu", "apac", "us", "eu", "us", "eu"],
                   "amount": [10.0, 25.0, 5.5, 7.0, 12.0, 3.0, 8.0, 1.0]})
EXPECTED = [{"region": "apac", "total": "7.0", "n": "1"}, {"region": "eu", "total": "10.0", "n": "1"},
            {"region": "us", "total": "45.0", "n": "3"}]


def _tasks(out: str = "out/totals.csv", **transform: Any) -> list[dict[str, Any]]:
    return [
        {"id": "orders", "type": "extract", "source": {"connector": "parquet", "path": "orders.parquet"}},
        {"id": "totals", "type": "transform", "depends_on": ["orders"], **transform,
         "steps": [{"filter": "amount > ${params.min}"},
                   {"aggregate": {"by": ["region"], "metrics": {"total": "sum(amount)", "n": "count(*)"}}},
                   {"sort": ["region"]}]},
        {"id": "publish", "type": "load", "depends_on": ["totals"],
         "target": {"connector": "csv", "path": out}},
    ]


def _run(tmp_path: Path, store: Any, tasks: list[dict[str, Any]], name: str = "fused") -> Any:
    pq.write_table(ORDERS, tmp_path / "orders.parquet")
    doc = {"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": name},
           "spec": {"params": {"min": {"type": "float", "default": 6.5}},
                    "defaults": {"retry": {"max_attempts": 1}}, "tasks": tasks}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    executor = LocalExecutor(store, data_root=str(tmp_path / "data"), services={"base_dir": str(tmp_path)})
    record = executor.run(load_pipeline(path, import_callables=False))
    return store.get_run(record.id)


def _by_id(run: Any) -> dict[str, Any]:
    return {t.task_id: t for t in run.tasks}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_transform_read_only_by_a_file_load_writes_no_parquet_and_keeps_its_own_record(tmp_path, store):
    run = _run(tmp_path, store, _tasks())
    assert run.state == RunState.SUCCEEDED
    assert _rows(tmp_path / "out" / "totals.csv") == EXPECTED
    tasks = _by_id(run)
    totals, publish = tasks["totals"], tasks["publish"]
    # each task its own attempt and result
    assert [a.state.value for a in totals.attempts] == ["succeeded"]
    assert [a.state.value for a in publish.attempts] == ["succeeded"]
    out = totals.result["output"]
    assert out["format"] == "view" and out["rows"] == 3
    assert totals.result["metrics"]["fused_into"] == "publish"
    assert publish.result["metrics"]["rows_written"] == 3
    # nothing written between the two: the transform's folder holds its view only
    assert sorted(p.name for p in Path(out["uri"]).iterdir()) == ["_view.json"]
    assert not list((tmp_path / "data").rglob("*.parquet"))
    # column lineage of the transform, over the source its extract recorded
    assert {c for c in totals.result["column_lineage"]} == {"region", "total", "n"}


def test_fused_and_unfused_runs_record_the_same_rows_schema_and_output(tmp_path, store):
    fused = _by_id(_run(tmp_path, store, _tasks("out/a.csv"), name="a"))
    unfused = _by_id(_run(tmp_path, store, _tasks("out/b.csv", fuse=False), name="b"))
    assert unfused["totals"].result["output"]["format"] == "parquet"
    assert fused["totals"].result["output"]["rows"] == unfused["totals"].result["output"]["rows"] == 3
    # the same names and types; DuckDB's Parquet writer also marks columns it found free of nulls as
    # required, which a query's result type does not say (docs/data-tasks.md, Fusion)
    written = pq.read_schema(next(Path(unfused["totals"].result["output"]["uri"]).glob("*.parquet")))
    nullable = pa.schema([f.with_nullable(True) for f in written])
    assert fused["totals"].result["output"]["schema_fingerprint"] == schema_fingerprint(nullable)
    assert fused["totals"].result["column_lineage"].keys() == unfused["totals"].result["column_lineage"].keys()
    assert fused["publish"].result["output"]["rows"] == unfused["publish"].result["output"]["rows"] == 3
    assert _rows(tmp_path / "out" / "a.csv") == _rows(tmp_path / "out" / "b.csv") == EXPECTED


def test_the_setting_turns_fusion_off(tmp_path, store, monkeypatch):
    from udop.settings import get_settings

    monkeypatch.setenv("UDOP_FUSE", "false")
    get_settings.cache_clear()
    run = _run(tmp_path, store, _tasks())
    assert _by_id(run)["totals"].result["output"]["format"] == "parquet"
    assert _rows(tmp_path / "out" / "totals.csv") == EXPECTED


def test_an_error_in_the_transforms_query_is_the_transforms_own(tmp_path, store):
    tasks = _tasks()
    tasks[1]["steps"] = [{"derive": {"bad": "CAST(region AS INTEGER)"}}]
    run = _run(tmp_path, store, tasks)
    tasks_ = _by_id(run)
    assert tasks_["totals"].state == TaskState.FAILED
    # the transform's own error, naming its step, as without fusion
    assert tasks_["totals"].error_type == "udop.FatalError"
    assert tasks_["totals"].error_message.startswith("task 'totals': steps[0] (derive): Could not convert")
    assert tasks_["publish"].state == TaskState.UPSTREAM_FAILED
    assert not (tmp_path / "out" / "totals.csv").exists()


def test_a_load_that_fails_fails_alone_after_its_transform_succeeded(tmp_path, store):
    (tmp_path / "out").write_text("a file where the target's folder should be")
    run = _run(tmp_path, store, _tasks())
    tasks = _by_id(run)
    assert run.state == RunState.FAILED
    # the unfused run of the transform succeeded and kept its data; the load failed in its own attempt
    assert tasks["totals"].state == TaskState.SUCCEEDED
    assert tasks["totals"].result["output"]["format"] == "parquet"
    assert tasks["totals"].result["output"]["rows"] == 3
    assert tasks["publish"].state == TaskState.FAILED and len(tasks["publish"].attempts) == 1


def test_a_load_run_on_its_own_reads_the_view_and_checks_the_source(tmp_path):
    """What a retry of the load or a resume after a crash between the two tasks does."""
    from udop_transforms import run_fused

    pq.write_table(ORDERS, tmp_path / "orders.parquet")
    pipeline = make_pipeline(_tasks(), {"min": {"type": "float", "default": 6.5}})
    params = {"min": 6.5}
    extract = run_task(context_for(pipeline, "orders", tmp_path, params), pipeline.task("orders"), {})
    view, loaded = run_fused(context_for(pipeline, "totals", tmp_path, params), pipeline.task("totals"),
                             {"orders": extract}, context_for(pipeline, "publish", tmp_path, params),
                             pipeline.task("publish"))
    assert view.output is not None and view.output.format == "view" and view.output.rows == 3
    target = tmp_path / "out" / "totals.csv"
    target.unlink()
    # another run id: the same one would find its load ledger entry and write nothing (exactly once)
    again = run_task(context_for(pipeline, "publish", tmp_path, params, run_id="r2"), pipeline.task("publish"),
                     {"totals": TaskResult(output=view.output)})
    assert _rows(target) == EXPECTED
    assert again.metrics["rows_written"] == loaded.metrics["rows_written"] == 3
    # the source changed since the extract recorded it: the view's query does not read other data
    pq.write_table(ORDERS.slice(0, 2), tmp_path / "orders.parquet")
    os.utime(tmp_path / "orders.parquet", ns=(1, 1))
    with pytest.raises(FatalError, match="the source changed after extract 'orders'"):
        run_task(context_for(pipeline, "publish", tmp_path, params, run_id="r3"), pipeline.task("publish"),
                 {"totals": TaskResult(output=view.output)})


def _sqlite_rows(path: Path) -> list[tuple[Any, ...]]:
    import sqlite3

    with sqlite3.connect(path) as con:
        return con.execute("SELECT region, total, n FROM totals ORDER BY region").fetchall()


SQL_EXPECTED = [("apac", 7.0, 1), ("eu", 10.0, 1), ("us", 45.0, 3)]


def test_a_transform_read_only_by_a_sql_load_goes_into_it_without_parquet(tmp_path, store):
    """The local executor fuses a load into a SQL database too: the query's result goes as Arrow into
    the connector's one transaction, with the ledger entry; each task keeps its own record."""
    tasks = _tasks()
    tasks[2]["target"] = {"connector": "sqlite", "database": str(tmp_path / "out.db"), "table": "totals"}
    run = _run(tmp_path, store, tasks)
    assert run.state == RunState.SUCCEEDED
    assert _sqlite_rows(tmp_path / "out.db") == SQL_EXPECTED
    totals, publish = _by_id(run)["totals"], _by_id(run)["publish"]
    assert totals.result["output"]["format"] == "view" and totals.result["output"]["rows"] == 3
    assert totals.result["metrics"]["fused_into"] == "publish"
    assert publish.result["metrics"]["rows_written"] == 3
    assert publish.result["metrics"]["ledger"] == "recorded"
    assert not list((tmp_path / "data").rglob("*.parquet"))


def test_a_sql_load_run_on_its_own_reads_the_view_and_a_repeat_writes_nothing(tmp_path):
    from udop_transforms import run_fused

    pq.write_table(ORDERS, tmp_path / "orders.parquet")
    tasks = _tasks()
    tasks[2]["target"] = {"connector": "sqlite", "database": str(tmp_path / "out.db"), "table": "totals",
                          "mode": "overwrite"}
    pipeline = make_pipeline(tasks, {"min": {"type": "float", "default": 6.5}})
    params = {"min": 6.5}
    extract = run_task(context_for(pipeline, "orders", tmp_path, params), pipeline.task("orders"), {})
    view, _ = run_fused(context_for(pipeline, "totals", tmp_path, params), pipeline.task("totals"),
                        {"orders": extract}, context_for(pipeline, "publish", tmp_path, params),
                        pipeline.task("publish"))
    assert view.output is not None and view.output.format == "view"
    again = run_task(context_for(pipeline, "publish", tmp_path, params, run_id="r2"), pipeline.task("publish"),
                     {"totals": TaskResult(output=view.output)})
    assert again.metrics["rows_written"] == 3 and again.metrics["ledger"] == "recorded"
    assert _sqlite_rows(tmp_path / "out.db") == SQL_EXPECTED
    repeat = run_task(context_for(pipeline, "publish", tmp_path, params, run_id="r2"), pipeline.task("publish"),
                      {"totals": TaskResult(output=view.output)})
    assert repeat.metrics["ledger"] == "already loaded"


@pytest.mark.parametrize("change", [
    {"out": "out/totals.csv", "extra": {"type": "validate", "rules": [{"not_null": ["region"]}]}},
    {"out": "out/totals.csv", "check": True},
    {"out": "out/totals.csv", "mode": "append"},
])
def test_chains_that_need_the_table_are_not_fused(tmp_path, store, change):
    tasks = _tasks(change["out"])
    if "extra" in change:  # a second reader of the transform's output
        tasks.append({"id": "v", "depends_on": ["totals"], **change["extra"]})
    if change.get("check"):  # a check step's results come from the data before the load
        tasks[1]["steps"].insert(1, {"check": [{"not_null": ["region"]}]})
    if "mode" in change:  # a single file appended to: the load's rows are not the transform's
        tasks[2]["target"]["mode"] = change["mode"]
    run = _run(tmp_path, store, tasks)
    assert run.state == RunState.SUCCEEDED
    assert _by_id(run)["totals"].result["output"]["format"] == "parquet"


def test_a_transform_reading_a_view_gets_its_rows(tmp_path):
    """A definition edited before a resume (``--on-new-version``) may put another reader after a
    transform that ran fused: the view's query is run into a table for it."""
    from udop_transforms import run_fused

    pq.write_table(ORDERS, tmp_path / "orders.parquet")
    tasks = [*_tasks(), {"id": "top", "type": "transform", "depends_on": ["totals"],
                         "steps": [{"filter": "n > 1"}, {"select": ["region"]}]}]
    pipeline = make_pipeline(tasks, {"min": {"type": "float", "default": 6.5}})
    params = {"min": 6.5}
    extract = run_task(context_for(pipeline, "orders", tmp_path, params), pipeline.task("orders"), {})
    view, _ = run_fused(context_for(pipeline, "totals", tmp_path, params), pipeline.task("totals"),
                        {"orders": extract}, context_for(pipeline, "publish", tmp_path, params),
                        pipeline.task("publish"))
    top = run_task(context_for(pipeline, "top", tmp_path, params), pipeline.task("top"),
                   {"totals": TaskResult(output=view.output)})
    assert top.output is not None and top.output.rows == 1
    assert pq.read_table(top.output.uri).to_pylist() == [{"region": "us"}]


@pytest.mark.parametrize(
    "sql_type",
    ["BOOLEAN", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
     "FLOAT", "DOUBLE", "VARCHAR", "BLOB", "DATE", "TIME", "TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS",
     "TIMESTAMP_NS", "DECIMAL(15,2)", "DECIMAL(38,10)", "DECIMAL(4,0)",
     # not in the table: asked of DuckDB's Arrow export
     "TIMESTAMPTZ", "HUGEINT", "UUID", "INTEGER[]", "STRUCT(a INTEGER, b VARCHAR)", "INTERVAL"],
)
def test_query_fingerprint_is_the_one_of_duckdbs_arrow_export(sql_type: str) -> None:
    """The fingerprint a fused transform and a snapshot record is computed from DESCRIBE without
    pyarrow; it must equal the one of the Arrow schema DuckDB exports for the same query."""
    from udop_transforms._engine import Session, query_fingerprint

    sql = f"SELECT NULL::{sql_type} AS c, 1::BIGINT AS \"odd name\""
    with Session() as session:
        exported = session.con.sql(f"SELECT * FROM ({sql}) LIMIT 0").to_arrow_table().schema
        assert query_fingerprint(session, sql) == schema_fingerprint(exported)
