"""A 1M-row round trip through MariaDB: rows made by the server, streamed out to Parquet by the
extract, loaded into a second table, checked against the formula that made them; peak memory printed."""

from __future__ import annotations

import resource
import time
from typing import Any

import pyarrow as pa
import pytest
from connectors_support import MYSQL, Tables, make_pipeline

from udop.connectors import extract_to_parquet, load_from_parquet
from udop.state import MemoryStateStore
from udop.tasks.contract import TaskResult

pytestmark = [pytest.mark.mysql, pytest.mark.slow]

ROWS = 1_000_000


def test_one_million_rows_round_trip_through_mariadb(mysql: Tables, context_for: Any) -> None:
    src, dst = mysql.new("million_src"), mysql.new("million_dst")
    mysql.execute(f"CREATE TABLE {src} (id BIGINT PRIMARY KEY, label VARCHAR(80), amount INT)")
    mysql.execute(
        f"INSERT INTO {src} SELECT seq, CONCAT(REPEAT('x', 40), seq MOD 1000), seq MOD 997 "
        f"FROM seq_0_to_{ROWS - 1}"  # MariaDB's sequence engine
    )
    pipeline = make_pipeline(
        [
            {
                "id": "ext",
                "type": "extract",
                "source": {"connector": "mysql", "connection": "db", "table": src},
            },
            {
                "id": "load",
                "type": "load",
                "depends_on": ["ext"],
                "target": {"connector": "mysql", "connection": "db", "table": dst},
            },
        ],
        connections={"db": MYSQL},
    )
    pool = pa.default_memory_pool()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    state = MemoryStateStore()
    ctx = context_for(pipeline, "ext", state=state)
    started = time.perf_counter()
    manifest = extract_to_parquet(ctx, pipeline.task("ext").source, ctx.output_uri)
    read_s = time.perf_counter() - started
    assert manifest.rows == ROWS
    started = time.perf_counter()
    metrics = load_from_parquet(
        context_for(pipeline, "load", state=state),
        pipeline.task("load").target,
        manifest,
        {"ext": TaskResult(output=manifest)},
    )
    write_s = time.perf_counter() - started
    assert metrics["rows_written"] == ROWS
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before  # KiB on Linux
    print(
        f"\nMariaDB 1M-row round trip: read {ROWS / read_s:,.0f} rows/s, write {ROWS / write_s:,.0f} rows/s; "
        f"Arrow peak {pool.max_memory() / 2**20:.1f} MiB, process peak RSS grew {rss_growth / 1024:.1f} MiB"
    )
    count, distinct, id_sum, amount_sum, bad = mysql.execute(
        f"SELECT count(*), count(DISTINCT id), sum(id), sum(amount), "
        f"sum(label <> CONCAT(REPEAT('x', 40), id MOD 1000)) FROM {dst}"
    )[0]
    assert (count, distinct, int(id_sum), int(amount_sum), int(bad)) == (
        ROWS,
        ROWS,
        ROWS * (ROWS - 1) // 2,
        sum(i % 997 for i in range(ROWS)),
        0,
    )
