"""MariaDB reads stream through a server-side cursor: reading 200k rows holds a batch of Python
rows at a time, a small fraction of what the driver's default (buffered) cursor holds."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pymysql
import pytest
from connectors_support import MYSQL, Tables

from udop.connectors import get_connector

pytestmark = [pytest.mark.mysql, pytest.mark.slow]

ROWS = 200_000


def test_mysql_read_streams_with_bounded_python_memory(mysql: Tables) -> None:
    table = mysql.new("stream")
    mysql.execute(f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, label VARCHAR(80), amount DOUBLE)")
    mysql.execute(
        f"INSERT INTO {table} SELECT seq, CONCAT(REPEAT('x', 40), seq), seq / 7 "
        f"FROM seq_0_to_{ROWS - 1}"  # MariaDB's sequence engine
    )

    def peak(fn: Any) -> tuple[Any, int]:
        tracemalloc.start()
        try:
            result = fn()
            return result, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def through_udop() -> int:
        with get_connector({**MYSQL, "table": table, "batch_size": 5_000}) as c:
            return sum(b.num_rows for b in c.read())

    def buffered() -> int:
        conn = pymysql.connect(host="127.0.0.1", user="root", database="test")
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT * FROM {table}")
                return len(cur.fetchall())
        finally:
            conn.close()

    through_udop()  # first use imports and reflects: measure a warm second read
    rows, streamed = peak(through_udop)
    all_rows, whole = peak(buffered)
    print(
        f"\nMariaDB {ROWS:,} rows: udop peak Python memory {streamed / 2**20:.1f} MiB, "
        f"buffered pymysql cursor {whole / 2**20:.1f} MiB"
    )
    assert rows == all_rows == ROWS
    assert streamed < whole / 4
