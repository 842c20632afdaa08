"""Sources read in place: a Parquet extract records a snapshot instead of copying, the tasks downstream
read the source files (DuckDB pushes projection and filter into that scan), a changed source is a clear
error (or re-read where the definition says so), ``materialize: true`` keeps the copy, and a reader
that needs Parquet of its own (a python task) still gets a copy."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transform_helpers import context_for, make_pipeline, read_output

from udop.errors import FatalError
from udop.tasks import TaskResult, run_task
from udop.tasks.datasets import schema_fingerprint

ORDERS = pa.table({"id": list(range(1, 7)), "region": ["eu", "us", "eu", "apac", "us", "eu"],
                   "amount": [10.0, 25.0, 5.5, 7.0, 12.0, 3.0], "note": ["x"] * 6})


@pytest.fixture
def orders(tmp_path: Path) -> Path:
    path = tmp_path / "orders.parquet"
    pq.write_table(ORDERS, path)
    return path


def _extract(**extra: object) -> dict:
    return {"id": "e", "type": "extract", "source": {"connector": "parquet", "path": "orders.parquet"}, **extra}


TOTALS = {"id": "t", "type": "transform", "depends_on": "e",
          "steps": [{"filter": "amount > 6"}, {"aggregate": {"by": ["region"], "metrics": {"total": "sum(amount)"}}},
                    {"sort": ["region"]}]}


def _parquet_under(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def test_extract_records_a_snapshot_and_copies_nothing(orders, run, tmp_path):
    results = run([_extract(), TOTALS])
    out = results["e"].output
    assert out.format == "snapshot"
    # the extract's folder holds the snapshot only: no Parquet copy of the source in the run
    assert [p.name for p in Path(out.uri).iterdir()] == ["_snapshot.json"]
    assert _parquet_under(tmp_path / "data" / "runs" / "t" / "r1" / "e") == []
    assert out.rows == 6 and out.files == 1 and out.bytes == orders.stat().st_size
    assert results["e"].inputs == (str(orders),)
    got = read_output(results["t"].output).to_pylist()
    assert got == [{"region": "apac", "total": 7.0}, {"region": "eu", "total": 10.0}, {"region": "us", "total": 37.0}]


def test_materialize_keeps_a_copy_with_the_same_rows_and_schema(orders, run, tmp_path):
    in_place = run([_extract()], run_id="r1")["e"].output
    copied = run([_extract(materialize=True)], run_id="r2")["e"].output
    assert copied.format == "parquet"
    assert [p.name for p in _parquet_under(tmp_path / "data" / "runs" / "t" / "r2" / "e")] == ["part-0.parquet"]
    assert copied.rows == in_place.rows == 6
    # the snapshot's fingerprint is the source's own schema (a copy's may differ in nullability: DuckDB
    # marks a column it wrote without nulls as required)
    assert in_place.schema_fingerprint == schema_fingerprint(pq.read_schema(orders))
    assert read_output(copied).to_pylist() == read_output(in_place).to_pylist() == ORDERS.to_pylist()


def test_projection_and_filter_are_pushed_into_the_source_scan(orders, run, tmp_path):
    from udop_transforms._engine import Session
    from udop_transforms._sql import Params
    from udop_transforms._steps import compile_steps
    from udop_transforms._tasks import _register_inputs

    results = run([_extract()])
    pipeline = make_pipeline([_extract(), TOTALS])
    task = pipeline.task("t")
    ctx = context_for(pipeline, "t", tmp_path)
    with Session(context=ctx) as session:
        columns = _register_inputs(session, ctx, task, results, widen=False)
        # the view reads the source file itself, not a copy under the run's folder
        view = session.con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'e'").fetchall()[0][0]
        assert str(orders) in view and "/runs/" not in view
        plan = compile_steps(session, list(task.steps), task.primary_input, columns, Params({}), verify=False)
        explain = "\n".join(r[1] for r in session.con.execute(f"EXPLAIN {plan.query()}",
                                                              plan.bound_params() or None).fetchall())
    # the scan of the source file is the plan's leaf, and it carries the filter and only two columns
    scan = explain[explain.index("READ_PARQUET"):]
    assert re.search(r"Filters:\s*amount\s*>\s*6", scan), explain
    projected = scan.split("Projections:")[1].split("Filters:")[0]
    assert "region" in projected and "amount" in projected, explain
    assert "note" not in projected and not re.search(r"\bid\b", projected), explain


def test_a_changed_source_is_a_one_line_error(orders, run, tmp_path):
    results = run([_extract()])
    pq.write_table(ORDERS.slice(0, 2), orders)  # rewritten after the extract recorded it
    pipeline = make_pipeline([_extract(), TOTALS])
    with pytest.raises(FatalError) as info:
        run_task(context_for(pipeline, "t", tmp_path), pipeline.task("t"), results)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"task 't': input 'e': the source changed after extract 'e' recorded it: {orders} "
                              "was modified (size")
    assert "on_source_change: resnapshot" in message


def test_a_touched_or_removed_source_is_detected(orders, run, tmp_path):
    results = run([_extract()])
    pipeline = make_pipeline([_extract(), TOTALS])
    st = orders.stat()
    os.utime(orders, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # same size, other content
    with pytest.raises(FatalError, match="was modified"):
        run_task(context_for(pipeline, "t", tmp_path), pipeline.task("t"), results)
    orders.unlink()
    with pytest.raises(FatalError, match=f"{re.escape(str(orders))} was removed"):
        run_task(context_for(pipeline, "t", tmp_path), pipeline.task("t"), results)


def test_resnapshot_reads_the_source_as_it_is_now(orders, run, tmp_path):
    results = run([_extract(on_source_change="resnapshot")])
    pq.write_table(ORDERS.slice(0, 2), orders)
    pipeline = make_pipeline([_extract(on_source_change="resnapshot"), TOTALS])
    out = run_task(context_for(pipeline, "t", tmp_path), pipeline.task("t"), results).output
    assert read_output(out).to_pylist() == [{"region": "eu", "total": 10.0}, {"region": "us", "total": 25.0}]


def test_a_new_file_matching_the_glob_is_not_read(tmp_path, run):
    (tmp_path / "in").mkdir()
    pq.write_table(ORDERS, tmp_path / "in" / "a.parquet")
    extract = {"id": "e", "type": "extract", "source": {"connector": "parquet", "path": "in/*.parquet"}}
    count = {"id": "t", "type": "transform", "depends_on": "e",
             "steps": [{"aggregate": {"metrics": {"n": "count(*)"}}}]}
    results = run([extract])
    pq.write_table(ORDERS, tmp_path / "in" / "b.parquet")  # arrives after the snapshot
    pipeline = make_pipeline([extract, count])
    out = run_task(context_for(pipeline, "t", tmp_path), pipeline.task("t"), results).output
    assert read_output(out).to_pylist() == [{"n": 6}]


def test_validate_passes_the_snapshot_through_and_a_load_reads_the_source(orders, run, tmp_path):
    results = run([
        _extract(),
        {"id": "v", "type": "validate", "depends_on": "e", "rules": [{"not_null": "id"}, {"row_count": {"min": 6}}]},
        {"id": "l", "type": "load", "depends_on": "v", "target": {"connector": "csv", "path": "out/orders.csv"}},
    ])
    assert results["v"].output.format == "snapshot"
    assert all(c.passed for c in results["v"].checks) and len(results["v"].checks) == 2
    assert results["l"].metrics["rows_written"] == 6
    assert (tmp_path / "out" / "orders.csv").read_text().splitlines()[1] == "1,eu,10.0,x"
    assert _parquet_under(tmp_path / "data") == []


def test_a_python_task_reading_the_extract_gets_a_parquet_copy(orders, tmp_path):
    pipeline = make_pipeline([_extract(), {"id": "p", "type": "python", "depends_on": "e",
                                           "callable": "json:dumps"}])
    out = run_task(context_for(pipeline, "e", tmp_path), pipeline.task("e"), {}).output
    assert out.format == "parquet"
    assert pq.read_table(out.uri).num_rows == 6


def test_a_load_through_a_connector_gets_a_parquet_copy(orders, tmp_path):
    pipeline = make_pipeline([_extract(), {"id": "l", "type": "load", "depends_on": "e",
                                           "target": {"connector": "sqlite", "path": "x.db", "table": "t"}}])
    out = run_task(context_for(pipeline, "e", tmp_path), pipeline.task("e"), {}).output
    assert out.format == "parquet"


def test_the_snapshot_is_what_a_retry_reads(orders, run, tmp_path):
    """A retry (or resume) of a downstream task is handed the same upstream result; it reads the files
    that result recorded and nothing the extract did not see."""
    results = run([_extract()])
    pipeline = make_pipeline([_extract(), TOTALS])
    first = run_task(context_for(pipeline, "t", tmp_path), pipeline.task("t"), results)
    again = run_task(context_for(pipeline, "t", tmp_path), pipeline.task("t"), results)
    assert read_output(first.output).to_pylist() == read_output(again.output).to_pylist()
    assert first.inputs == again.inputs == (results["e"].output.uri,)
    assert isinstance(first, TaskResult)
