"""What column lineage adds to a transform task: sqlglot following the compiled step SQL, per task.

The query is the kind the transform layer compiles (filter, derive, join, aggregate as CTEs over the
inputs' views) with ``--columns`` input columns; then the same query again, which a process follows
once (cached by the hash of the SQL and its input columns). Printed beside a baseline measured the same way in
the same run: DuckDB running that query over ``--rows`` rows in memory (the work the task does
anyway). Median of ``--repeat`` runs after one warm-up each.

    .venv/bin/python benchmarks/lineage_columns.py [--columns 10] [--rows 100000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import duckdb

from udop.lineage.columns import column_lineage


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--columns", type=int, default=10)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    cols = [f"c{i}" for i in range(args.columns)]
    sql = ('WITH s1 AS (SELECT * FROM "orders" WHERE c0 > 10), '
           's2 AS (SELECT *, c1 * 2 AS doubled FROM s1), '
           's3 AS (SELECT s2.*, r.name FROM s2 LEFT JOIN "regions" r ON s2.c2 = r.id), '
           's4 AS (SELECT name, count(*) AS n, sum(doubled) AS total FROM s3 GROUP BY name) '
           'SELECT * FROM s4')
    con = duckdb.connect()
    select = ", ".join(f"(i * {k}) % 97 AS {c}" for k, c in enumerate(cols, 1))
    con.execute(f"CREATE TABLE orders AS SELECT {select} FROM range({args.rows}) t(i)")
    con.execute("CREATE TABLE regions AS SELECT i AS id, 'r' || i AS name FROM range(100) t(i)")
    relations = {"orders": cols, "regions": ["id", "name"]}
    found = column_lineage(sql, relations)
    assert found["total"] == [("orders", "c1")], found  # the figure is of a lineage that is right
    from udop.lineage import columns as module

    def uncached() -> object:
        return module._follow(sql, relations, "duckdb")  # what a query not yet in the cache costs

    lineage_ms = _median_ms(uncached, args.repeat)
    cached_ms = _median_ms(lambda: column_lineage(sql, relations), args.repeat)
    duckdb_ms = _median_ms(lambda: con.execute(sql).fetchall(), args.repeat)
    print(f"columns={args.columns} rows={args.rows:,} repeat={args.repeat} (median ms per task)")
    print(f"  column lineage (sqlglot)          {lineage_ms:8.2f} ms")
    print(f"  the same query again (cached)     {cached_ms:8.3f} ms")
    print(f"  baseline: DuckDB running the SQL  {duckdb_ms:8.2f} ms")


if __name__ == "__main__":
    main()
