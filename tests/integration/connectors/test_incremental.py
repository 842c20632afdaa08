"""Incremental extraction on PostgreSQL: the watermark advances only after the load committed, so a
load that dies after the extract loses no row and duplicates none on the retry or the next run."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from connectors_support import PG, Tables, make_pipeline

from udop.connectors import extract_to_parquet, load_from_parquet
from udop.errors import FatalError
from udop.state import MemoryStateStore
from udop.state.sqlite import SQLiteStateStore
from udop.tasks.contract import TaskContext, TaskResult

pytestmark = pytest.mark.postgres

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)


def add_rows(tables: Tables, table: str, ids: range, amount: int = 10) -> None:
    for i in ids:
        tables.execute(
            f"INSERT INTO {table} (id, amount, updated_at) VALUES (:i, :a, :u)",
            {"i": i, "a": amount if i != 6 else 5000, "u": T0 + dt.timedelta(hours=i)},
        )


def pipeline_for(src: str, dst: str, name: str) -> Any:
    return make_pipeline(
        [
            {
                "id": "ext",
                "type": "extract",
                "source": {
                    "connector": "postgres",
                    "connection": "db",
                    "table": src,
                    "incremental": {"column": "updated_at"},
                },
            },
            {
                "id": "load",
                "type": "load",
                "depends_on": ["ext"],
                "target": {"connector": "postgres", "connection": "db", "table": dst, "mode": "append"},
            },
        ],
        connections={"db": PG},
        name=name,
    )


def run_extract(ctx: TaskContext) -> TaskResult:
    manifest = extract_to_parquet(ctx, ctx.task.source, ctx.output_uri)
    return TaskResult(output=manifest)


def run_load(ctx: TaskContext, extracted: TaskResult) -> dict[str, Any]:
    assert extracted.output is not None
    return load_from_parquet(ctx, ctx.task.target, extracted.output, {"ext": extracted})


def test_failed_load_then_retry_and_next_run_lose_and_duplicate_nothing(pg: Tables, context_for: Any) -> None:
    src, dst = pg.new("src"), pg.new("dst")
    pg.execute(f"CREATE TABLE {src} (id INT PRIMARY KEY, amount INT, updated_at TIMESTAMPTZ)")
    pg.execute(
        f"CREATE TABLE {dst} (id INT, amount INT CONSTRAINT small CHECK (amount < 1000), "
        "updated_at TIMESTAMPTZ)"
    )
    pipeline = pipeline_for(src, dst, "inc-pg")
    state = MemoryStateStore()
    add_rows(pg, src, range(1, 4))

    # run 1: everything goes through
    r1 = run_extract(context_for(pipeline, "ext", run_id="r1", state=state))
    assert r1.output is not None and r1.output.rows == 3
    metrics = run_load(context_for(pipeline, "load", run_id="r1", state=state), r1)
    assert metrics["rows_written"] == 3
    assert metrics["watermarks_committed"][0]["value"].startswith("2024-03-01T03:00:00")

    # run 2: three new rows; the load fails inside its transaction (row 6 breaks the CHECK)
    add_rows(pg, src, range(4, 7))
    r2 = run_extract(context_for(pipeline, "ext", run_id="r2", state=state))
    assert r2.output is not None and r2.output.rows == 3  # only the rows after the watermark
    with pytest.raises(FatalError, match=dst):
        run_load(context_for(pipeline, "load", run_id="r2", state=state), r2)
    assert pg.execute(f"SELECT count(*) FROM {dst}") == [(3,)]  # target unchanged

    # the same run is retried after the constraint is fixed: same Parquet, now committed
    pg.execute(f"ALTER TABLE {dst} DROP CONSTRAINT small")
    retried = run_load(context_for(pipeline, "load", run_id="r2", state=state, attempt=2), r2)
    assert retried["rows_written"] == 3

    # run 3 reads only the row added since
    add_rows(pg, src, range(7, 8))
    r3 = run_extract(context_for(pipeline, "ext", run_id="r3", state=state))
    assert r3.output is not None and r3.output.rows == 1
    run_load(context_for(pipeline, "load", run_id="r3", state=state), r3)
    ids = [r[0] for r in pg.execute(f"SELECT id FROM {dst} ORDER BY id")]
    assert ids == list(range(1, 8))


def test_a_failed_run_leaves_the_watermark_so_the_next_run_rereads(pg: Tables, context_for: Any) -> None:
    src, dst = pg.new("src"), pg.new("dst")
    pg.execute(f"CREATE TABLE {src} (id INT PRIMARY KEY, amount INT, updated_at TIMESTAMPTZ)")
    pg.execute(f"CREATE TABLE {dst} (id INT, amount INT CHECK (amount < 1000), updated_at TIMESTAMPTZ)")
    pipeline = pipeline_for(src, dst, "inc-pg2")
    state = MemoryStateStore()
    add_rows(pg, src, range(4, 7))  # row 6 cannot be loaded
    r1 = run_extract(context_for(pipeline, "ext", run_id="r1", state=state))
    with pytest.raises(FatalError):
        run_load(context_for(pipeline, "load", run_id="r1", state=state), r1)
    # the bad row is corrected at the source; a NEW run must read all three again
    pg.execute(f"UPDATE {src} SET amount = 60 WHERE id = 6")
    r2 = run_extract(context_for(pipeline, "ext", run_id="r2", state=state))
    assert r2.output is not None and r2.output.rows == 3
    run_load(context_for(pipeline, "load", run_id="r2", state=state), r2)
    assert pg.execute(f"SELECT id, amount FROM {dst} ORDER BY id") == [(4, 10), (5, 10), (6, 60)]


LOAD_SCRIPT = textwrap.dedent("""
    import datetime as dt, json, sys
    from udop.connectors import load_from_parquet
    from udop.spec.models import Pipeline
    from udop.state.sqlite import SQLiteStateStore
    from udop.tasks.contract import Manifest, TaskContext, TaskResult
    args = json.loads(sys.argv[1])
    pipeline = Pipeline.model_validate(args["pipeline"])
    ctx = TaskContext(pipeline=pipeline, task_id="load", run_id=args["run_id"], attempt=1,
                      logical_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), params={},
                      data_root=args["data_root"], services={"state": SQLiteStateStore(args["state"])})
    manifest = Manifest.from_dict(args["manifest"])
    print("loading", flush=True)
    load_from_parquet(ctx, pipeline.task("load").target, manifest, {"ext": TaskResult(output=manifest)})
    print("done", flush=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "committed"), [("load-before-commit", 0), ("load-committed", 100_000)])
def test_sigkill_around_the_load_commit_loses_and_duplicates_nothing(
    pg: Tables, context_for: Any, tmp_path: Path, fault: str, committed: int
) -> None:
    """The load process dies (SIGKILL, at a named point) with its rows sent but not committed, or
    committed with the watermark not yet advanced: the next run loads every row exactly once."""
    n = 100_000
    src, dst = pg.new("src"), pg.new("dst")
    pg.execute(f"CREATE TABLE {src} (id INT PRIMARY KEY, amount INT, updated_at TIMESTAMPTZ)")
    pg.execute(f"CREATE TABLE {dst} (id INT, amount INT, updated_at TIMESTAMPTZ)")
    pg.execute(
        f"INSERT INTO {src} SELECT i, i % 100, timestamptz '2024-01-01' + i * interval '1 second' "
        f"FROM generate_series(1, {n}) AS i"
    )
    pipeline = pipeline_for(src, dst, f"inc-kill-{fault}")
    state = SQLiteStateStore(tmp_path / "state.db")
    ctx = context_for(pipeline, "ext", run_id="r1", state=state)
    extracted = run_extract(ctx)
    assert extracted.output is not None and extracted.output.rows == n
    args = {
        "pipeline": pipeline.model_dump(mode="json", by_alias=True, exclude_unset=True),
        "run_id": "r1",
        "data_root": ctx.data_root,
        "state": str(tmp_path / "state.db"),
        "manifest": extracted.output.to_dict(),
    }
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, json.dumps(args)],
        capture_output=True,
        text=True,
        env={**os.environ, "UDOP_FAULT_INJECT": fault},
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert "done" not in proc.stdout
    time.sleep(0.5)  # the server notices the dead client and rolls an open transaction back
    assert pg.execute(f"SELECT count(*) FROM {dst}") == [(committed,)]
    # the next run settles r1's range from the target's load ledger: loaded, so the watermark
    # moves past it; not loaded, so it is read again
    r2 = run_extract(context_for(pipeline, "ext", run_id="r2", state=state))
    assert r2.output is not None and r2.output.rows == n - committed
    run_load(context_for(pipeline, "load", run_id="r2", state=state), r2)
    assert pg.execute(f"SELECT count(*), count(DISTINCT id), min(id), max(id) FROM {dst}") == [
        (n, n, 1, n)
    ]
    state.close()


@pytest.mark.slow
def test_a_resumed_load_finds_its_ledger_entry_and_commits_the_watermark(
    pg: Tables, context_for: Any, tmp_path: Path
) -> None:
    """Killed between the load's commit and the watermark's: the same run's retried load finds
    its entry, writes nothing, reports the first count and advances the watermark."""
    src, dst = pg.new("src"), pg.new("dst")
    pg.execute(f"CREATE TABLE {src} (id INT PRIMARY KEY, amount INT, updated_at TIMESTAMPTZ)")
    pg.execute(f"CREATE TABLE {dst} (id INT, amount INT, updated_at TIMESTAMPTZ)")
    add_rows(pg, src, range(1, 51))
    pipeline = pipeline_for(src, dst, "inc-resume")
    state = SQLiteStateStore(tmp_path / "state.db")
    ctx = context_for(pipeline, "ext", run_id="r1", state=state)
    extracted = run_extract(ctx)
    assert extracted.output is not None
    args = {
        "pipeline": pipeline.model_dump(mode="json", by_alias=True, exclude_unset=True),
        "run_id": "r1",
        "data_root": ctx.data_root,
        "state": str(tmp_path / "state.db"),
        "manifest": extracted.output.to_dict(),
    }
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, json.dumps(args)],
        capture_output=True,
        text=True,
        env={**os.environ, "UDOP_FAULT_INJECT": "load-committed"},
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL
    assert pg.execute(f"SELECT count(*) FROM {dst}") == [(50,)]
    again = run_load(context_for(pipeline, "load", run_id="r1", state=state, attempt=2), extracted)
    assert again["rows_written"] == 50 and again["ledger"] == "already loaded"
    assert again["watermarks_committed"][0]["value"].startswith("2024-03-03T02:00:00")
    assert pg.execute(f"SELECT count(*), count(DISTINCT id) FROM {dst}") == [(50, 50)]
    state.close()
