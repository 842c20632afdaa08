"""Rows per second of the extract and load TASKS a user runs against PostgreSQL, beside the fastest
Arrow client doing the same work in the same process.

  extract: table -> Parquet file (zstd).   udop: an ``extract`` task through ``run_task`` (postgres
           connector, COPY underneath, Arrow batches, the task's Parquet output and manifest).
           Baseline: ADBC's PostgreSQL driver (binary COPY straight into Arrow) + pyarrow's
           Parquet writer, zstd.
  load:    Parquet file -> table, replacing its rows in one transaction.   udop: a ``load`` task
           with ``mode: overwrite`` through ``run_task``. Baseline: pyarrow reads the file, ADBC
           ``TRUNCATE`` + ``adbc_ingest`` (binary COPY from Arrow), one commit.

Also printed, for reference, work with no Arrow values at the client: COPY of ready-made CSV text in
(the server parses it: slower than binary COPY) and COPY output read without parsing it (a ceiling
for reading).
Prints best and median of ``--repeat`` runs (the machine may be shared: the median says how noisy).

    .venv/bin/python benchmarks/connectors_postgres.py [--rows 1000000] [--repeat 3] [--dsn ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from udop.spec.models import Pipeline
from udop.state import MemoryStateStore
from udop.tasks import Manifest, TaskContext, TaskResult, run_task

COLUMNS = "id bigint, name text, amount numeric(12,2), ts timestamptz, flag boolean"


def make_table(rows: int) -> pa.Table:
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    r = range(rows)
    return pa.table(
        {
            "id": pa.array(r, pa.int64()),
            "name": pa.array([f"customer-{i % 9973}" for i in r]),
            "amount": pa.array([Decimal(i % 100000) / 100 for i in r], pa.decimal128(12, 2)),
            "ts": pa.array([base + dt.timedelta(seconds=i) for i in r], pa.timestamp("us", "UTC")),
            "flag": pa.array([i % 3 == 0 for i in r]),
        }
    )


def timed(fn: Callable[[], int], rows: int, out: list[float]) -> None:
    t0 = time.perf_counter()
    n = fn()
    out.append(time.perf_counter() - t0)
    assert n == rows, (n, rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; best and median are printed")
    args = ap.parse_args()
    rows = args.rows
    suffix = uuid.uuid4().hex[:8]
    src, base_t, udop_t = f"bench_src_{suffix}", f"bench_base_{suffix}", f"bench_udop_{suffix}"
    conn = psycopg.connect(args.dsn, autocommit=True)
    for t in (src, base_t, udop_t):
        conn.execute(f"CREATE TABLE {t} ({COLUMNS})")
    data = make_table(rows)
    ad = adbc.connect(args.dsn)
    with ad.cursor() as cur:
        cur.adbc_ingest(src, data, mode="append")
    ad.commit()
    tmp = Path(tempfile.mkdtemp(prefix="udop-bench-pg-"))
    parquet = tmp / "input.parquet"
    pq.write_table(data, parquet, compression="zstd")
    csv = io.BytesIO()
    pacsv.write_csv(data, csv, pacsv.WriteOptions(include_header=False))

    pipeline = Pipeline.model_validate({
        "apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": "bench"},
        "spec": {"tasks": [
            {"id": "ext", "type": "extract",
             "source": {"connector": "postgres", "url": args.dsn, "table": src}},
            {"id": "load", "type": "load", "depends_on": "ext", "target": {
                "connector": "postgres", "url": args.dsn, "table": udop_t, "mode": "overwrite"}},
        ]},
    })
    state = MemoryStateStore()

    def context(task_id: str, run: int) -> TaskContext:
        return TaskContext(pipeline=pipeline, task_id=task_id, run_id=f"r{run}", attempt=1,
                           logical_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), params={},
                           data_root=str(tmp / "data"), services={"state": state})

    def udop_extract(run: int) -> int:
        result = run_task(context("ext", run), pipeline.task("ext"), {})
        assert result.output is not None
        return int(result.output.rows or 0)

    def udop_load(run: int) -> int:
        given = TaskResult(output=Manifest(uri=str(parquet), rows=rows))
        result = run_task(context("load", run), pipeline.task("load"), {"ext": given})
        return int(result.metrics["rows_written"])

    def adbc_extract(run: int) -> int:
        with ad.cursor() as cur:
            cur.execute(f"SELECT * FROM {src}")
            table = cur.fetch_arrow_table()
        pq.write_table(table, tmp / f"adbc-{run}.parquet", compression="zstd")
        return table.num_rows

    def adbc_load() -> int:
        table = pq.read_table(parquet)
        with ad.cursor() as cur:
            cur.execute(f"TRUNCATE {base_t}")
            cur.adbc_ingest(base_t, table, mode="append")
        ad.commit()
        return table.num_rows

    def wire_write() -> int:
        copy_in = f"COPY {base_t} FROM STDIN (FORMAT csv)"
        with conn.transaction(), conn.cursor() as cur, cur.copy(copy_in) as cp:
            cp.write(csv.getvalue())
        return rows

    def wire_read() -> int:
        with conn.cursor() as cur, cur.copy(f"COPY (SELECT * FROM {src}) TO STDOUT (FORMAT csv)") as cp:
            for _chunk in cp:
                pass
        return rows

    times: dict[str, list[float]] = {k: [] for k in
                                      ("udop_extract", "adbc_extract", "udop_load", "adbc_load", "wire_read",
                                       "wire_write")}
    try:
        for run in range(args.repeat):
            timed(lambda run=run: udop_extract(run), rows, times["udop_extract"])
            timed(lambda run=run: adbc_extract(run), rows, times["adbc_extract"])
            timed(lambda run=run: udop_load(run), rows, times["udop_load"])
            timed(adbc_load, rows, times["adbc_load"])
            conn.execute(f"TRUNCATE {base_t}")
            timed(wire_write, rows, times["wire_write"])
            timed(wire_read, rows, times["wire_read"])
        ((check,),) = conn.execute(f"SELECT count(*) FROM {udop_t}").fetchall()
        assert check == rows
    finally:
        ad.close()
        for t in (src, base_t, udop_t):
            conn.execute(f"DROP TABLE IF EXISTS {t}")
        conn.close()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)

    def rate(key: str, how: Callable[[list[float]], float]) -> float:
        return rows / how(times[key])

    print(f"PostgreSQL, {rows:,} rows ({COLUMNS}); {args.repeat} runs each, rows/s as best (median)")
    print(f"{'task':9}{'udop task':>24}{'ADBC + pyarrow':>24}{'udop/ADBC (best)':>18}")
    for op in ("extract", "load"):
        u = f"{rate(f'udop_{op}', min):,.0f} ({rate(f'udop_{op}', statistics.median):,.0f})"
        b = f"{rate(f'adbc_{op}', min):,.0f} ({rate(f'adbc_{op}', statistics.median):,.0f})"
        print(f"{op:9}{u:>24}{b:>24}{rate(f'udop_{op}', min) / rate(f'adbc_{op}', min):>17.2f}x")
    for op, key in (("read", "wire_read"), ("write", "wire_write")):
        print(f"reference: COPY {op}, CSV text, no client-side values: {rate(key, min):,.0f} rows/s "
              f"({rate(key, statistics.median):,.0f})")


if __name__ == "__main__":
    main()
