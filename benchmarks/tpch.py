"""TPC-H Q1, Q6 and Q3 at SF1: the transform task alone, in-process, against the same SQL in DuckDB.

This times one step of a pipeline, not what a user waits for: no process start, no extract, no load,
no metadata. ``pipelines_e2e.py`` measures whole ``udop run`` processes against a DuckDB script.

Both sides run in this process over the same Parquet files (written by ``tpchgen-cli`` into
benchmarks/.data/, generated when missing). The udop side is a ``transform`` task called through
``run_task`` exactly as an executor calls it, its inputs being the Parquet an upstream task would have
produced: it compiles the steps, binds them, runs ONE DuckDB query and writes the result as Parquet.
Both use the same DuckDB settings (Parquet metadata cache on, insertion order not preserved); the
DuckDB side's time includes fetching its result, the udop side's writing its result as Parquet.
Results must equal DuckDB's (the script fails otherwise). Target: each within 1.3x of DuckDB.

    .venv/bin/python benchmarks/tpch.py [--scale 1] [--repeat 5]
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq

from udop.spec.models import Pipeline
from udop.spec.params import coerce_param
from udop.tasks import Manifest, TaskContext, TaskResult, run_task

HERE = Path(__file__).resolve().parent
TABLES = ("lineitem", "orders", "customer")

Q1_SQL = """
SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty, sum(l_extendedprice) AS sum_base_price,
       sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
       sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge,
       avg(l_quantity) AS avg_qty, avg(l_extendedprice) AS avg_price, avg(l_discount) AS avg_disc,
       count(*) AS count_order
FROM lineitem
WHERE l_shipdate <= DATE '1998-12-01' - INTERVAL '90' DAY
GROUP BY l_returnflag, l_linestatus
ORDER BY l_returnflag, l_linestatus"""

Q1_STEPS = [
    {"filter": "l_shipdate <= DATE '1998-12-01' - INTERVAL (${params.delta}) DAY"},
    {"aggregate": {"by": ["l_returnflag", "l_linestatus"], "metrics": {
        "sum_qty": {"sum": "l_quantity"}, "sum_base_price": {"sum": "l_extendedprice"},
        "sum_disc_price": "sum(l_extendedprice * (1 - l_discount))",
        "sum_charge": "sum(l_extendedprice * (1 - l_discount) * (1 + l_tax))",
        "avg_qty": {"avg": "l_quantity"}, "avg_price": {"avg": "l_extendedprice"},
        "avg_disc": {"avg": "l_discount"}, "count_order": "count(*)"}}},
    {"sort": ["l_returnflag", "l_linestatus"]},
]

Q6_SQL = """
SELECT sum(l_extendedprice * l_discount) AS revenue
FROM lineitem
WHERE l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1994-01-01' + INTERVAL '1' YEAR
  AND l_discount BETWEEN 0.06 - 0.01 AND 0.06 + 0.01 AND l_quantity < 24"""

Q6_STEPS = [
    {"filter": "l_shipdate >= ${params.start} AND l_shipdate < ${params.start} + INTERVAL '1' YEAR "
               "AND l_discount BETWEEN 0.06 - 0.01 AND 0.06 + 0.01 AND l_quantity < 24"},
    {"aggregate": {"metrics": {"revenue": "sum(l_extendedprice * l_discount)"}}},
]

Q3_SQL = """
SELECT l_orderkey, sum(l_extendedprice * (1 - l_discount)) AS revenue, o_orderdate, o_shippriority
FROM customer, orders, lineitem
WHERE c_mktsegment = 'BUILDING' AND c_custkey = o_custkey AND l_orderkey = o_orderkey
  AND o_orderdate < DATE '1995-03-15' AND l_shipdate > DATE '1995-03-15'
GROUP BY l_orderkey, o_orderdate, o_shippriority
ORDER BY revenue DESC, o_orderdate
LIMIT 10"""

Q3_STEPS = [
    {"filter": "c_mktsegment = ${params.segment}"},
    {"join": {"with": "orders", "on": {"c_custkey": "o_custkey"}}},
    {"filter": "o_orderdate < ${params.day}"},
    {"join": {"with": "lineitem", "on": {"o_orderkey": "l_orderkey"}}},
    {"filter": "l_shipdate > ${params.day}"},
    {"aggregate": {"by": ["o_orderkey", "o_orderdate", "o_shippriority"],
                   "metrics": {"revenue": "sum(l_extendedprice * (1 - l_discount))"}}},
    {"rename": {"o_orderkey": "l_orderkey"}},
    {"select": ["l_orderkey", "revenue", "o_orderdate", "o_shippriority"]},
    {"sort": ["revenue desc", "o_orderdate"]},
    {"limit": 10},
]

QUERIES: dict[str, tuple[str, list[dict[str, Any]], list[str], dict[str, Any]]] = {
    "Q1": (Q1_SQL, Q1_STEPS, ["lineitem"], {"delta": 90}),
    "Q6": (Q6_SQL, Q6_STEPS, ["lineitem"], {"start": "1994-01-01"}),
    "Q3": (Q3_SQL, Q3_STEPS, ["customer", "orders", "lineitem"],
           {"segment": "BUILDING", "day": "1995-03-15"}),
}
PARAM_TYPES = {"delta": "int", "start": "date", "segment": "str", "day": "date"}


def generate(data: Path, scale: float) -> None:
    if all((data / f"{t}.parquet").exists() for t in TABLES):
        return
    tool = shutil.which("tpchgen-cli") or str(Path(sys.executable).parent / "tpchgen-cli")
    data.mkdir(parents=True, exist_ok=True)
    print(f"generating TPC-H scale {scale:g} into {data} ...", flush=True)
    subprocess.run([tool, "parquet", "-s", f"{scale:g}", "--tables", ",".join(TABLES), "-o", str(data)],
                   check=True)


def _pipeline(name: str, steps: list[dict[str, Any]], inputs: list[str], params: dict[str, Any]) -> Pipeline:
    declared = {k: {"type": PARAM_TYPES[k], "default": v} for k, v in params.items()}
    tasks: list[dict[str, Any]] = [{"id": t, "type": "python", "callable": "bench:noop"} for t in inputs]
    tasks.append({"id": "q", "type": "transform", "depends_on": inputs, "steps": steps})
    return Pipeline.model_validate({"apiVersion": "udop/v1", "kind": "Pipeline",
                                    "metadata": {"name": name.lower()},
                                    "spec": {"params": declared, "tasks": tasks}})


def run_udop(name: str, data: Path, work: Path, attempt: int) -> str:
    _, steps, inputs, params = QUERIES[name]
    pipeline = _pipeline(name, steps, inputs, params)
    values = {k: coerce_param(k, pipeline.spec.params[k], v) for k, v in params.items()}
    ctx = TaskContext(pipeline=pipeline, task_id="q", run_id=f"bench-{attempt}", attempt=1,
                      logical_date=datetime.now(UTC), params=values, data_root=str(work))
    upstream = {t: TaskResult(output=Manifest(uri=str(data / f"{t}.parquet"))) for t in inputs}
    result = run_task(ctx, pipeline.task("q"), upstream)
    assert result.output is not None
    return result.output.uri


def read_rows(uri: str) -> list[tuple[Any, ...]]:
    """The task's result, read back from its Parquet output (outside the timed part)."""
    return [tuple(r.values()) for r in pq.read_table(uri).to_pylist()]


def run_duckdb(name: str, con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return con.execute(QUERIES[name][0]).fetchall()


def same(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> bool:
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b, strict=True):
        if len(ra) != len(rb):
            return False
        for x, y in zip(ra, rb, strict=True):
            if isinstance(x, float) or isinstance(y, float):
                if not math.isclose(float(x), float(y), rel_tol=1e-12):
                    return False
            elif isinstance(x, Decimal) or isinstance(y, Decimal):
                if Decimal(x) != Decimal(y):
                    return False
            elif x != y:
                return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per side, after one warm-up each")
    parser.add_argument("--target", type=float, default=1.3)
    args = parser.parse_args(argv)
    data = HERE / ".data" / f"tpch-sf{args.scale:g}"
    generate(data, args.scale)

    con = duckdb.connect()
    # the same engine settings the transform layer uses, so only udop's own work differs
    con.execute("SET parquet_metadata_cache = true")
    con.execute("SET preserve_insertion_order = false")
    for t in TABLES:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{data / f'{t}.parquet'}')")
    print(f"TPC-H scale {args.scale:g}: {args.repeat} runs each after a warm-up, seconds (same process, "
          "same files); wall clock best and median, and CPU time (all threads) best")
    head = ("query", "duckdb", "udop", "ratio", "duckdb", "udop", "ratio", "duckdb", "udop", "ratio")
    print("{:6} {:>8} {:>8} {:>6}   {:>8} {:>8} {:>6}   {:>8} {:>8} {:>6}  result".format(*head))
    print("{:6} {:>8} {:>8} {:>6}   {:>8} {:>8} {:>6}   {:>8} {:>8} {:>6}".format(
        "", "best", "best", "", "median", "median", "", "cpu", "cpu", ""))
    ok = True
    with tempfile.TemporaryDirectory(prefix="udop-tpch-") as tmp:
        for name in QUERIES:
            direct, udop, direct_cpu, udop_cpu = [], [], [], []
            expected = got = None
            run_duckdb(name, con)
            run_udop(name, data, Path(tmp), -1)
            for i in range(args.repeat):  # interleaved, so drift affects both sides alike
                t0, c0 = time.perf_counter(), time.process_time()
                expected = run_duckdb(name, con)
                direct.append(time.perf_counter() - t0)
                direct_cpu.append(time.process_time() - c0)
                t0, c0 = time.perf_counter(), time.process_time()
                output = run_udop(name, data, Path(tmp), i)
                udop.append(time.perf_counter() - t0)
                udop_cpu.append(time.process_time() - c0)
                got = read_rows(output)
            assert expected is not None
            assert got is not None
            equal = same(got, expected)
            # the best run is the one least disturbed by other processes on a shared machine
            d, u = min(direct), min(udop)
            ratio = u / d
            dm, um = statistics.median(direct), statistics.median(udop)
            dc, uc = min(direct_cpu), min(udop_cpu)
            ok &= equal and ratio <= args.target
            print(f"{name:6} {d:8.3f} {u:8.3f} {ratio:5.2f}x   {dm:8.3f} {um:8.3f} {um / dm:5.2f}x   "
                  f"{dc:8.3f} {uc:8.3f} {uc / dc:5.2f}x  {'equal' if equal else 'DIFFERENT'}"
                  f"{'' if ratio <= args.target else f'  (best is over the {args.target}x target)'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
