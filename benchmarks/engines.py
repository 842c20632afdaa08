"""TPC-H Q1, Q3 and Q6 as transform tasks with ``engine: spark`` (PySpark local mode) against the same
tasks with ``engine: duckdb`` (the default), in one process over the same Parquet files.

Both sides are the transform task called through ``run_task`` as an executor calls it: DuckDB compiles
and binds the steps on both sides; the spark side then transpiles the query to Spark SQL (sqlglot),
runs it on the process's SparkSession and writes Parquet; the duckdb side runs it in DuckDB. The
SparkSession is started once before timing (its start is printed on its own). Results must be equal
(sums exactly; an average of decimals is a DOUBLE on DuckDB and a decimal rounded to scale + 4 on
Spark, compared to that many places). Spark is expected to be slower on one machine: the point of
``engine: spark`` is the path that scales out (EMR Serverless), not speed here.

    .venv/bin/python benchmarks/engines.py [--scale 1] [--repeat 3]

Data: benchmarks/.data/tpch-sf<scale>/ (``tpchgen-cli``, generated when missing, as by pipelines_e2e.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from udop.spec.models import Pipeline
from udop.spec.params import coerce_param
from udop.tasks import Manifest, TaskContext, TaskResult, run_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tpch import PARAM_TYPES, QUERIES, generate

HERE = Path(__file__).resolve().parent


def pipeline(name: str, engine: str) -> Pipeline:
    _, steps, inputs, params = QUERIES[name]
    declared = {k: {"type": PARAM_TYPES[k], "default": v} for k, v in params.items()}
    tasks: list[dict[str, Any]] = [{"id": t, "type": "python", "callable": "bench:noop"} for t in inputs]
    tasks.append({"id": "q", "type": "transform", "engine": engine, "depends_on": inputs, "steps": steps})
    return Pipeline.model_validate(
        {
            "apiVersion": "udop/v1",
            "kind": "Pipeline",
            "metadata": {"name": f"{name.lower()}-{engine}"},
            "spec": {"params": declared, "tasks": tasks},
        }
    )


def run(name: str, engine: str, data: Path, work: Path, attempt: int) -> list[dict[str, Any]]:
    _, _, inputs, params = QUERIES[name]
    p = pipeline(name, engine)
    values = {k: coerce_param(k, p.spec.params[k], v) for k, v in params.items()}
    ctx = TaskContext(
        pipeline=p,
        task_id="q",
        run_id=f"bench-{attempt}",
        attempt=1,
        logical_date=datetime.now(UTC),
        params=values,
        data_root=str(work),
    )
    upstream = {t: TaskResult(output=Manifest(uri=str(data / f"{t}.parquet"))) for t in inputs}
    result = run_task(ctx, p.task("q"), upstream)
    assert result.output is not None
    return list(pq.read_table(result.output.uri).to_pylist())


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, Decimal) and isinstance(b, float):
        a, b = b, a
    if isinstance(a, float) and isinstance(b, Decimal):
        places = -int(b.as_tuple().exponent)
        return round(Decimal(repr(a)), places) == b
    return bool(a == b)


def same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    return len(a) == len(b) and all(
        list(x) == list(y) and all(same_value(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per engine, after one warm-up each")
    args = parser.parse_args(argv)
    data = HERE / ".data" / f"tpch-sf{args.scale:g}"
    generate(data, args.scale)
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    from udop_transforms._spark import spark_session

    t0 = time.perf_counter()
    spark_session()
    print(f"SparkSession start (local[*]): {time.perf_counter() - t0:.1f} s (once per process, not below)")
    print(
        f"TPC-H scale {args.scale:g}, transform task only, {args.repeat} runs per engine after a warm-up, "
        "wall seconds. The machine is shared (2 cores, other engineers' tests running): read the best."
    )
    print(
        f"{'query':6} {'duckdb best':>12} {'spark best':>11} {'ratio':>6}   {'duckdb med':>11} "
        f"{'spark med':>10}  result"
    )
    ok = True
    with tempfile.TemporaryDirectory(prefix="udop-engines-") as tmp:
        for name in ("Q1", "Q3", "Q6"):
            times: dict[str, list[float]] = {"duckdb": [], "spark": []}
            rows: dict[str, list[dict[str, Any]]] = {}
            for engine in times:
                run(name, engine, data, Path(tmp), -1)
            for i in range(args.repeat):  # interleaved: drift on a shared machine touches both alike
                for engine, spent in times.items():
                    t0 = time.perf_counter()
                    rows[engine] = run(name, engine, data, Path(tmp) / engine, i)
                    spent.append(time.perf_counter() - t0)
            d, s = min(times["duckdb"]), min(times["spark"])
            equal = same(
                sorted(rows["duckdb"], key=str) if name != "Q3" else rows["duckdb"],
                sorted(rows["spark"], key=str) if name != "Q3" else rows["spark"],
            )
            ok &= equal
            print(
                f"{name:6} {d:12.2f} {s:11.2f} {s / d:5.1f}x   {statistics.median(times['duckdb']):11.2f} "
                f"{statistics.median(times['spark']):10.2f}  {'equal' if equal else 'DIFFERENT'}"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
