"""The fault x target matrix of exactly-once loads, shared by tests/integration/connectors/
test_exactly_once*.py and benchmarks/exactly_once_matrix.py (imported by name: test folders are not
packages). A cell: ``udop run`` SIGKILLs itself at a commit boundary (``UDOP_FAULT_INJECT``), ``udop
run --resume`` finishes the run, a next run loads the rows added since; each step's (rows, distinct
ids) in the target is recorded. Every target lives in names of its own (uuid), removed after."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pyarrow.dataset as ds
from connectors_support import MYSQL_URL, PG_URL, Tables

from udop.faults import POINTS

__all__ = ["AFTER_COMMIT", "BEFORE_COMMIT", "FIRST", "MORE", "TARGETS", "UDOP", "Cell", "Target", "add_source_rows",
           "check_kill_cell", "definition", "open_target", "run_cell", "udop"]

# RabbitMQ: its messages commit in an AMQP transaction and the load's ledger entry goes to the state
# store right after; no fault point falls between the two (that window is the at-least-once part that
# message ids cover, see docs/connectors.md)
TARGETS = ["postgres", "mariadb", "sqlite", "file", "rabbitmq"]
#: the fault points, as test_exactly_once.py (before the target's commit) and
#: test_exactly_once_after_commit.py (after it) share the SIGKILL matrix between them
BEFORE_COMMIT = POINTS[:1]
AFTER_COMMIT = POINTS[1:]
FIRST, MORE = 3_000, 1_000  # small: the crash windows, not the volume, are under test
UDOP = str(Path(sys.executable).parent / "udop")


def add_source_rows(db: Path, ids: range) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, total REAL)")
        conn.executemany("INSERT INTO orders VALUES (?, ?)", [(i, i * 0.5) for i in ids])


def definition(name: str, target: str) -> str:
    return f"""
apiVersion: udop/v1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  tasks:
    - id: orders
      type: extract
      source: {{connector: sqlite, database: shop.db, table: orders, incremental: {{column: id}}}}
    - id: publish
      type: load
      depends_on: [orders]
      target: {target}
"""


def udop(tmp: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UDOP_HOME": str(tmp / ".udop")}
    env.pop("UDOP_FAULT_INJECT", None)
    if fault:
        env["UDOP_FAULT_INJECT"] = fault
    return subprocess.run(
        [UDOP, "run", str(tmp / "p.yaml"), "--no-progress", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=240,
    )


@dataclass
class Target:
    """A load target: its definition and how to count (rows, distinct ids) in it."""

    spec: str
    count: Callable[[], tuple[int, int]]


def _sql_target(tables: Tables, connector: str, connection: str) -> Target:
    table = tables.new("dst")

    def count() -> tuple[int, int]:
        got = tables.execute(f"SELECT count(*), count(DISTINCT id) FROM {table}")
        return int(got[0][0]), int(got[0][1])

    return Target(f"{{connector: {connector}, {connection}, table: {table}, mode: append}}", count)


def _rabbitmq_channel() -> Any:
    # a connection per use (an idle one would miss its heartbeats while udop runs), with timeouts so
    # that a broker that stops answering fails the test instead of hanging it
    params = pika.ConnectionParameters(
        "127.0.0.1", connection_attempts=1, socket_timeout=5, stack_timeout=15, blocked_connection_timeout=15
    )
    return pika.BlockingConnection(params).channel()


def _rabbitmq_target() -> Iterator[Target]:
    """A durable queue of this test's own; counting drains it (auto-ack, prefetched: a ``basic_get``
    per message costs a round trip each, 45 s for 20,000 messages on a busy machine) and keeps the
    message ids seen, as a consumer de-duplicating on ``message_id`` would."""
    queue = f"udop-test-{uuid.uuid4().hex[:10]}"
    seen: list[str] = []
    ch = _rabbitmq_channel()
    try:
        ch.queue_declare(queue, durable=True)
    finally:
        ch.connection.close()

    def count_messages() -> tuple[int, int]:
        ch = _rabbitmq_channel()
        try:
            ch.basic_qos(prefetch_count=1000)
            for method, props, _body in ch.consume(queue, auto_ack=True, inactivity_timeout=1.0):
                if method is None:
                    break  # nothing more within a second: every committed message is in the queue
                seen.append(props.message_id)
            ch.cancel()
        finally:
            ch.connection.close()
        return len(seen), len(set(seen))

    try:
        yield Target(f"{{connector: rabbitmq, queue: {queue}}}", count_messages)
    finally:
        ch = _rabbitmq_channel()
        try:
            ch.queue_delete(queue)
        finally:
            ch.connection.close()


@contextmanager
def open_target(kind: str, tmp_path: Path) -> Iterator[Target]:
    """A fresh load target of ``kind`` (one of ``TARGETS``), removed when the block ends."""
    if kind == "postgres":
        tables = Tables(PG_URL)
        yield _sql_target(tables, "postgres", "host: 127.0.0.1, user: postgres, database: test")
        tables.drop_all()
    elif kind == "mariadb":
        tables = Tables(MYSQL_URL)
        yield _sql_target(tables, "mysql", "host: 127.0.0.1, user: root, database: test")
        tables.drop_all()
    elif kind == "sqlite":
        tables = Tables(f"sqlite:///{tmp_path / 'dst.db'}")
        yield _sql_target(tables, "sqlite", "database: dst.db")
        tables.drop_all()
    elif kind == "file":
        out = tmp_path / "out"

        def count_files() -> tuple[int, int]:
            if not out.exists():
                return 0, 0
            ids = ds.dataset(out, format="parquet").to_table(columns=["id"]).column("id").to_pylist()
            return len(ids), len(set(ids))

        yield Target("{connector: local, path: out, format: parquet, mode: append}", count_files)
    elif kind == "rabbitmq":
        yield from _rabbitmq_target()
    else:
        raise ValueError(f"unknown target {kind!r}; one of {', '.join(TARGETS)}")


@dataclass
class Cell:
    """One fault x target cell: what each step left in the target, as (rows, distinct ids)."""

    fault: str
    target: str
    killed: subprocess.CompletedProcess[str]
    resumed: subprocess.CompletedProcess[str]
    after_resume: tuple[int, int]
    nxt: subprocess.CompletedProcess[str]
    after_next: tuple[int, int]

    @property
    def expected(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return (FIRST, FIRST), (FIRST + MORE, FIRST + MORE)

    @property
    def found(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return self.after_resume, self.after_next


def run_cell(tmp_path: Path, kind: str, target: Target, fault: str) -> Cell:
    """Kill at ``fault``, resume, then a next run over ``MORE`` new source rows."""
    add_source_rows(tmp_path / "shop.db", range(1, FIRST + 1))
    (tmp_path / "p.yaml").write_text(definition(f"eo-{uuid.uuid4().hex[:8]}", target.spec))
    killed = udop(tmp_path, "--run-id", "r1", fault=fault)
    resumed = udop(tmp_path, "--resume", "r1")
    after_resume = target.count()
    add_source_rows(tmp_path / "shop.db", range(FIRST + 1, FIRST + MORE + 1))
    nxt = udop(tmp_path, "--run-id", "r2")
    return Cell(fault, kind, killed, resumed, after_resume, nxt, target.count())


def check_kill_cell(tmp_path: Path, kind: str, fault: str) -> None:
    """One cell of the SIGKILL matrix: killed at ``fault``, resumed, then a next run; each row once."""
    with open_target(kind, tmp_path) as target:
        cell = run_cell(tmp_path, kind, target, fault)
    assert cell.killed.returncode == -signal.SIGKILL, cell.killed.stdout + cell.killed.stderr
    assert cell.resumed.returncode == 0, cell.resumed.stdout + cell.resumed.stderr
    assert cell.after_resume == (FIRST, FIRST)
    # the watermark stands where the resumed run's rows end: the next run reads only new rows
    assert cell.nxt.returncode == 0, cell.nxt.stdout + cell.nxt.stderr
    assert cell.after_next == (FIRST + MORE, FIRST + MORE)
