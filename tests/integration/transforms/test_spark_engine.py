"""``engine: spark`` on local PySpark under the LocalExecutor: TPC-H Q1, Q3 and Q6 (tiny generated data)
give DuckDB's answers; rows, lineage and checks are recorded as for DuckDB; a timeout cancels the
Spark job group and the task fails as a timeout without publishing its output.

One SparkSession for the module (starting the JVM takes seconds), stopped at the end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from udop.executor.local import LocalExecutor
from udop.spec.loader import load_pipeline
from udop.states import RunState, TaskState
from udop.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from tpch import Q1_STEPS, Q3_STEPS, Q6_STEPS

pytestmark = [
    pytest.mark.slow,
    # PySpark 4.3 warns on import that it does not fully support pandas 3
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

QUERIES: dict[str, tuple[list[Any], list[str], dict[str, Any]]] = {
    "q1": (Q1_STEPS, ["lineitem"], {"delta": {"type": "int", "default": 90}}),
    "q3": (
        Q3_STEPS,
        ["customer", "orders", "lineitem"],
        {"segment": {"type": "str", "default": "BUILDING"}, "day": {"type": "date", "default": "1995-03-15"}},
    ),
    "q6": (Q6_STEPS, ["lineitem"], {"start": {"type": "date", "default": "1994-01-01"}}),
}


@pytest.fixture(scope="module")
def tpch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("tpch")
    tool = Path(sys.executable).parent / "tpchgen-cli"
    subprocess.run(
        [str(tool), "parquet", "-s", "0.01", "--tables", "lineitem,orders,customer", "-o", str(data)],
        check=True,
        capture_output=True,
    )
    return data


@pytest.fixture(scope="module")
def spark() -> Iterator[None]:
    from udop_transforms._spark import spark_session, stop_spark

    spark_session()
    yield
    stop_spark()


def write_pipeline(
    root: Path,
    name: str,
    data: Path,
    engine: str,
    *,
    extra: list[dict[str, Any]] | None = None,
    timeout: str | None = None,
) -> Path:
    steps, tables, params = QUERIES[name]
    tasks: list[dict[str, Any]] = [
        {"id": t, "type": "extract", "source": {"connector": "parquet", "path": str(data / f"{t}.parquet")}}
        for t in tables
    ]
    query: dict[str, Any] = {
        "id": "query",
        "type": "transform",
        "engine": engine,
        "depends_on": tables,
        "steps": steps,
    }
    if timeout:
        query["timeout"] = timeout
    tasks.append(query)
    tasks += extra or []
    doc = {
        "apiVersion": "udop/v1",
        "kind": "Pipeline",
        "metadata": {"name": f"{name}-{engine}"},
        "spec": {"params": params, "tasks": tasks},
    }
    file = root / f"{name}-{engine}.yaml"
    file.write_text(yaml.safe_dump(doc, sort_keys=False))
    return file


def run(root: Path, file: Path) -> Any:
    store = open_store(f"sqlite:///{root / 'meta.db'}")
    try:
        executor = LocalExecutor(
            store, workers=2, data_root=str(root / "data"), services={"base_dir": str(root)}
        )
        record = executor.run(load_pipeline(str(file)))
        return store.get_run(record.id), store.get_lineage(record.id), store.get_checks(record.id)
    finally:
        store.close()


def rows_of(uri: str) -> list[dict[str, Any]]:
    return pq.read_table(uri).to_pylist()


def same(a: Any, b: Any) -> bool:
    """Sums and keys exactly; an average of decimals is a DOUBLE on DuckDB and a decimal rounded to
    scale + 4 on Spark: equal to that many places."""
    if (isinstance(a, Decimal) and isinstance(b, float)) or (isinstance(a, float) and isinstance(b, Decimal)):
        dec = a if isinstance(a, Decimal) else b
        places = -dec.as_tuple().exponent  # type: ignore[operator]
        return round(Decimal(str(a if isinstance(a, float) else b)), places) == dec
    if isinstance(a, date) and isinstance(b, date):
        return a == b
    return bool(a == b)


@pytest.mark.parametrize("name", ["q1", "q3", "q6"])
def test_tpch_on_spark_gives_duckdbs_answer(tmp_path: Path, tpch: Path, spark: None, name: str) -> None:
    answers, records = {}, {}
    for engine in ("duckdb", "spark"):
        record, lineage, _ = run(tmp_path, write_pipeline(tmp_path, name, tpch, engine))
        assert record.state == RunState.SUCCEEDED, [t.error_message for t in record.tasks]
        task = next(t for t in record.tasks if t.task_id == "query")
        records[engine] = (task, {r.task_id: r for r in lineage}["query"])
        output = task.result["output"]
        answers[engine] = rows_of(output["uri"])
        # rows recorded from the output's Parquet footers, lineage to the inputs as for DuckDB
        assert output["rows"] == len(answers[engine]) > 0
        assert output["schema_fingerprint"]
        found = {r.task_id: r for r in lineage}["query"]
        assert found.rows == output["rows"]
        assert len(found.inputs) == len(QUERIES[name][1])
        if engine == "spark":
            assert task.result["metrics"]["engine"] == "spark"
            assert not list(Path(output["uri"]).glob("_SUCCESS")) and not list(
                Path(output["uri"]).glob(".*crc")
            )
    # the same record on both engines (the conformance idea): the task's, its attempts', its lineage's fields
    (d_task, d_lin), (s_task, s_lin) = records["duckdb"], records["spark"]
    assert set(vars(d_task)) == set(vars(s_task)) and set(d_task.result) == set(s_task.result)
    assert set(d_task.result["output"]) == set(s_task.result["output"])
    assert set(d_task.result["metrics"]) | {"engine"} == set(s_task.result["metrics"])
    assert [set(vars(a)) for a in d_task.attempts] == [set(vars(a)) for a in s_task.attempts]
    assert set(vars(d_lin)) == set(vars(s_lin))
    assert set(d_task.result["column_lineage"]) == set(s_task.result["column_lineage"])  # every column
    duck, spk = answers["duckdb"], answers["spark"]
    assert [list(r) for r in duck] == [list(r) for r in spk]  # same columns in the same order
    if name != "q3":  # Q1 is sorted on its keys, Q6 one row; Q3 is sorted on revenue: compare in order too
        duck, spk = sorted(duck, key=str), sorted(spk, key=str)
    for a, b in zip(duck, spk, strict=True):
        assert all(same(a[k], b[k]) for k in a), (a, b)
    if name == "q1":
        assert any(r["sum_charge"] == Decimal("526165934.000839") for r in spk)  # SF0.01, A/F


def test_validate_on_spark_records_checks_and_fails_on_an_error_rule(
    tmp_path: Path, tpch: Path, spark: None
) -> None:
    rules = [
        {"not_null": ["l_returnflag"]},
        {"regex": {"column": "l_linestatus", "pattern": "[OF]"}},
        {"unique": ["l_returnflag", "l_linestatus"]},
        {"range": {"column": "count_order", "min": 20000}, "severity": "warn"},
        {"accepted_values": {"column": "l_returnflag", "values": ["A", "N"]}},
    ]
    checks = {"id": "checks", "type": "validate", "engine": "spark", "depends_on": ["query"], "rules": rules}
    record, _, found = run(tmp_path, write_pipeline(tmp_path, "q1", tpch, "spark", extra=[checks]))
    assert record.state == RunState.FAILED
    task = next(t for t in record.tasks if t.task_id == "checks")
    assert task.state == TaskState.FAILED and task.error_type == "udop.DataQualityError"
    got = {c.rule: (c.passed, c.failing_rows) for c in found if c.task_id == "checks"}
    assert got["not_null(l_returnflag)"] == (True, 0)
    assert got["regex(l_linestatus)"] == (True, 0)
    assert got["unique(l_returnflag, l_linestatus)"] == (True, 0)
    # SF0.01: A/F 14,876 rows, N/F 348, N/O 29,181, R/F 14,902
    assert got["range(count_order)"] == (False, 3)
    assert got["accepted_values(l_returnflag)"] == (False, 1)  # the R group


def test_a_timeout_cancels_the_spark_job(tmp_path: Path, tpch: Path, spark: None) -> None:
    file = write_pipeline(tmp_path, "q1", tpch, "spark", timeout="3s")
    doc = yaml.safe_load(file.read_text())
    query = doc["spec"]["tasks"][-1]
    # far too much work for 3 s: a three-way cross join of 60,000 rows
    query["steps"] = [
        {"sql": "SELECT count(*) AS n FROM this a, this b, this c WHERE a.l_tax + b.l_tax > c.l_tax"}
    ]
    query["retry"] = {"max_attempts": 1}
    file.write_text(yaml.safe_dump(doc, sort_keys=False))
    record, _, _ = run(tmp_path, file)
    task = next(t for t in record.tasks if t.task_id == "query")
    assert record.state == RunState.FAILED
    assert task.error_type == "udop.TaskTimeout", (task.error_type, task.error_message)
    assert not Path(tmp_path / "data" / "runs" / "q1-spark" / record.id / "query").exists()
    from udop_transforms._spark import spark_session

    # the job group was cancelled: nothing of it is still running on the shared context
    tracker = spark_session().sparkContext.statusTracker()
    deadline = time.monotonic() + 60  # cancelling is asynchronous: the executors stop their tasks
    while tracker.getActiveJobsIds() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tracker.getActiveJobsIds() == []


def test_the_shipped_entry_script_runs_a_spec_file(tmp_path: Path, tpch: Path, spark: None) -> None:
    """What EMR Serverless runs: the entry script, given the URI of a job spec (a local path here)."""
    import duckdb

    from udop_transforms import spark_entry
    from udop_transforms._spark import job_spec

    sql = (
        "SELECT `l_returnflag`, count(*) AS `n` FROM `lineitem` WHERE `l_shipdate` <= :p0 "
        "GROUP BY `l_returnflag`"
    )
    spec = job_spec(
        sql, {"p0": date(1995, 6, 17)}, {"lineitem": [str(tpch / "lineitem.parquet")]}, str(tmp_path / "out")
    )
    assert spec["params"] == {"p0": {"type": "date", "value": "1995-06-17"}}
    (tmp_path / "job.json").write_text(json.dumps(spec))
    assert spark_entry.main(["udop_spark_entry.py", str(tmp_path / "job.json")]) == 0
    got = sorted((r["l_returnflag"], r["n"]) for r in pq.read_table(tmp_path / "out").to_pylist())
    want = duckdb.sql(
        f"SELECT l_returnflag, count(*) FROM '{tpch / 'lineitem.parquet'}' "
        "WHERE l_shipdate <= DATE '1995-06-17' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert got == [tuple(r) for r in want]

    # a validate task's spec: the rule queries' rows, typed and masked, as one JSON document
    checks = {
        "queries": [
            {"sql": "SELECT count(*), max(`l_shipdate`) FROM `lineitem`", "params": {}},
            {
                "sql": "SELECT `l_returnflag`, `l_comment` FROM `lineitem` WHERE `l_quantity` > :p0 LIMIT 2",
                "params": spark_entry.encode_params({"p0": 49}),
            },
        ],
        "inputs": {"lineitem": [str(tpch / "lineitem.parquet")]},
        "results": str(tmp_path / "checks"),
        "mask": {"columns": ["l_comment"], "patterns": [], "text": "***"},
    }
    (tmp_path / "checks.json").write_text(json.dumps(checks))
    assert spark_entry.main(["udop_spark_entry.py", str(tmp_path / "checks.json")]) == 0
    (written,) = [f for f in (tmp_path / "checks").iterdir() if f.name.startswith("part-")]
    counted, sampled = json.loads(written.read_text())["results"]
    total, newest = (spark_entry.decode_value(v) for v in counted["rows"][0])
    assert [(total, newest)] == duckdb.execute(
        f"SELECT count(*), max(l_shipdate) FROM '{tpch / 'lineitem.parquet'}'"
    ).fetchall()
    assert sampled["columns"] == ["l_returnflag", "l_comment"] and len(sampled["rows"]) == 2
    assert all(row[1] == {"type": "str", "value": "***"} for row in sampled["rows"])  # masked


def test_a_hive_partitioned_source_read_in_place_keeps_its_partition_columns(
    tmp_path: Path, spark: None
) -> None:
    import pyarrow as pa

    for region, amounts in {"eu": [1.5, 2.5], "us": [4.0]}.items():
        folder = tmp_path / "sales" / f"region={region}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"amount": amounts}), folder / "part.parquet")
    doc = {
        "apiVersion": "udop/v1",
        "kind": "Pipeline",
        "metadata": {"name": "hive"},
        "spec": {
            "tasks": [
                {
                    "id": "sales",
                    "type": "extract",
                    "source": {"connector": "parquet", "path": "sales/*/*.parquet"},
                },
                {
                    "id": "totals",
                    "type": "transform",
                    "engine": "spark",
                    "depends_on": ["sales"],
                    "steps": [
                        {"aggregate": {"by": ["region"], "metrics": {"total": {"sum": "amount"}}}},
                        {"sort": ["region"]},
                    ],
                },
            ]
        },
    }
    file = tmp_path / "hive.yaml"
    file.write_text(yaml.safe_dump(doc, sort_keys=False))
    record, _, _ = run(tmp_path, file)
    assert record.state == RunState.SUCCEEDED, [t.error_message for t in record.tasks]
    task = next(t for t in record.tasks if t.task_id == "totals")
    assert rows_of(task.result["output"]["uri"]) == [
        {"region": "eu", "total": 4.0},
        {"region": "us", "total": 4.0},
    ]
