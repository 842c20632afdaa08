"""Rows per second reading and writing 1M rows from/to PostgreSQL: udop's postgres connector
(Arrow batches, COPY underneath) against plain psycopg COPY (binary, rows as Python tuples) in the
same process, on the same table shape. Target: udop >= 0.7x the baseline.

Also printed, for reference: the wire-only ceiling (COPY of ready-made CSV bytes / reading COPY
output without parsing it), which no client that produces or consumes values can reach.

    .venv/bin/python benchmarks/connectors_postgres.py [--rows 1000000] [--dsn postgresql://...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
import uuid
from decimal import Decimal

import psycopg
import pyarrow as pa

from udop.connectors import get_connector

COLUMNS = "id bigint, name text, amount numeric(12,2), ts timestamptz, flag boolean"


def make_batches(rows: int, batch: int = 50_000) -> list[pa.RecordBatch]:
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    out = []
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        ids = pa.array(range(start, start + n), pa.int64())
        out.append(
            pa.RecordBatch.from_pydict(
                {
                    "id": ids,
                    "name": pa.array([f"customer-{i % 9973}" for i in range(start, start + n)]),
                    "amount": pa.array(
                        [Decimal(i % 100000) / 100 for i in range(start, start + n)], pa.decimal128(12, 2)
                    ),
                    "ts": pa.array(
                        [base + dt.timedelta(seconds=i) for i in range(start, start + n)],
                        pa.timestamp("us", "UTC"),
                    ),
                    "flag": pa.array([i % 3 == 0 for i in range(start, start + n)]),
                }
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--repeat", type=int, default=2, help="best of N")
    args = ap.parse_args()
    batches = make_batches(args.rows)
    tuples = [row for b in batches for row in zip(*(c.to_pylist() for c in b.columns), strict=True)]
    suffix = uuid.uuid4().hex[:8]
    base_t, udop_t = f"bench_base_{suffix}", f"bench_udop_{suffix}"
    conn = psycopg.connect(args.dsn, autocommit=True)
    for t in (base_t, udop_t):
        conn.execute(f"CREATE TABLE {t} ({COLUMNS})")
    target = {"connector": "postgres", "url": args.dsn, "table": udop_t}
    results: dict[str, list[float]] = {
        "base_write": [],
        "udop_write": [],
        "base_read": [],
        "udop_read": [],
        "raw_write": [],
        "raw_read": [],
    }
    import io

    import pyarrow.csv as pacsv

    csv_chunks = []
    for b in batches:
        sink = io.BytesIO()
        pacsv.write_csv(b, sink, pacsv.WriteOptions(include_header=False))
        csv_chunks.append(sink.getvalue())
    try:
        for _ in range(args.repeat):
            conn.execute(f"TRUNCATE {base_t}")
            t0 = time.perf_counter()
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(f"COPY {base_t} FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.set_types(["int8", "text", "numeric", "timestamptz", "bool"])
                for row in tuples:
                    copy.write_row(row)
            results["base_write"].append(time.perf_counter() - t0)

            conn.execute(f"TRUNCATE {base_t}")
            t0 = time.perf_counter()
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(f"COPY {base_t} FROM STDIN (FORMAT csv)") as copy,
            ):
                for chunk in csv_chunks:
                    copy.write(chunk)
            results["raw_write"].append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY (SELECT * FROM {base_t}) TO STDOUT (FORMAT csv)") as copy,
            ):
                for _chunk in copy:
                    pass
            results["raw_read"].append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            with get_connector(target) as c:
                written = c.write(iter(batches), "overwrite", [])
            results["udop_write"].append(time.perf_counter() - t0)
            assert written == args.rows

            t0 = time.perf_counter()
            n = 0
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY (SELECT * FROM {base_t}) TO STDOUT (FORMAT BINARY)") as copy,
            ):
                copy.set_types(["int8", "text", "numeric", "timestamptz", "bool"])
                for _row in copy.rows():
                    n += 1
            results["base_read"].append(time.perf_counter() - t0)
            assert n == args.rows

            t0 = time.perf_counter()
            n = 0
            with get_connector(target) as c:
                for b in c.read():
                    n += b.num_rows
            results["udop_read"].append(time.perf_counter() - t0)
            assert n == args.rows
    finally:
        for t in (base_t, udop_t):
            conn.execute(f"DROP TABLE IF EXISTS {t}")
        conn.close()
    best = {k: min(v) for k, v in results.items()}
    print(f"PostgreSQL, {args.rows:,} rows ({COLUMNS}); best of {args.repeat}")
    print(f"{'':8}{'psycopg COPY rows/s':>22}{'udop rows/s':>16}{'udop/baseline':>16}")
    for op in ("write", "read"):
        b, u = args.rows / best[f"base_{op}"], args.rows / best[f"udop_{op}"]
        print(f"{op:8}{b:>22,.0f}{u:>16,.0f}{u / b:>15.2f}x")
    for op in ("write", "read"):
        raw = args.rows / best[f"raw_{op}"]
        print(
            f"wire-only COPY {op} (no values made or parsed): {raw:,.0f} rows/s; "
            f"udop at {args.rows / best[f'udop_{op}'] / raw:.2f}x of it"
        )


if __name__ == "__main__":
    main()
