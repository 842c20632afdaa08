"""Cost of the metadata store's hot path: ``start_attempt`` + ``finish_attempt`` per task attempt.

The LocalExecutor calls both once per attempt; the orchestration target is <= 1 ms per no-op task
with SQLite, so each call must stay well under 0.3 ms. Printed beside a baseline in the same
process: the same statements (guarded UPDATE + INSERT, then two guarded UPDATEs, each pair in one
``BEGIN IMMEDIATE`` transaction) sent through the bare ``sqlite3`` module on an identically
configured file (WAL, synchronous=NORMAL) — what the work costs without SQLAlchemy and our checks.

    .venv/bin/python benchmarks/store_writes.py [--tasks 2000] [--repeat 3] [--cpu] [--postgres URL]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from udop.states import AttemptState, RunState, TaskState
from udop.store import open_store

#: wall time by default; --cpu measures this process's CPU time, steadier on a shared machine (with
#: synchronous=NORMAL a WAL commit does not wait for the disk, so CPU time is nearly all of it)
CLOCK = time.perf_counter

RESULT = {"output": {"uri": "/data/runs/p/r/t/", "rows": 10, "bytes": 100, "schema_fingerprint": "x"},
          "value": None, "inputs": ["up"], "checks": [], "metrics": {}}


def udop_store(url: str, tasks: int) -> tuple[float, float]:
    store = open_store(url)
    try:
        version = store.register_pipeline("bench", {"tasks": tasks}).version
        run_id = f"run-{time.time_ns()}"
        ids = [f"t{i}" for i in range(tasks)]
        store.create_run(run_id=run_id, pipeline="bench", pipeline_version=version, task_ids=ids, params={},
                         logical_date=datetime.now(UTC))
        store.set_run_state(run_id, RunState.RUNNING)
        t0 = CLOCK()
        for task in ids:
            store.start_attempt(run_id, task, 1)
        t1 = CLOCK()
        for task in ids:
            store.finish_attempt(run_id, task, 1, attempt_state=AttemptState.SUCCEEDED,
                                 task_state=TaskState.SUCCEEDED, result=RESULT)
        t2 = CLOCK()
    finally:
        store.close()
    return (t1 - t0) / tasks, (t2 - t1) / tasks


def bare_sqlite(path: Path, tasks: int) -> tuple[float, float]:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("busy_timeout = 30000", "journal_mode = WAL", "synchronous = NORMAL", "foreign_keys = ON"):
        conn.execute(f"PRAGMA {pragma}")
    conn.executescript("""
        CREATE TABLE task_runs (run_id TEXT, task_id TEXT, state TEXT, started_at TEXT, ended_at TEXT,
            error_type TEXT, error_message TEXT, result TEXT, PRIMARY KEY (run_id, task_id));
        CREATE TABLE attempts (run_id TEXT, task_id TEXT, number INT, state TEXT, started_at TEXT,
            ended_at TEXT, error_type TEXT, error_message TEXT, PRIMARY KEY (run_id, task_id, number),
            FOREIGN KEY (run_id, task_id) REFERENCES task_runs (run_id, task_id));
        CREATE TABLE lineage (id INTEGER PRIMARY KEY, run_id TEXT, task_id TEXT, inputs TEXT, output_uri TEXT,
            rows INT, bytes INT, schema_fingerprint TEXT, recorded_at TEXT);
    """)
    ids = [f"t{i}" for i in range(tasks)]
    conn.executemany("INSERT INTO task_runs (run_id, task_id, state) VALUES ('r', ?, 'pending')",
                     [(t,) for t in ids])
    t0 = CLOCK()
    for task in ids:
        now = datetime.now(UTC).isoformat()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE task_runs SET state = 'running', started_at = coalesce(started_at, ?) "
                     "WHERE run_id = 'r' AND task_id = ? AND state IN ('pending', 'retrying')", (now, task))
        conn.execute("INSERT INTO attempts (run_id, task_id, number, state, started_at) "
                     "VALUES ('r', ?, 1, 'running', ?)", (task, now))
        conn.execute("COMMIT")
    t1 = CLOCK()
    for task in ids:
        now = datetime.now(UTC).isoformat()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE attempts SET state = 'succeeded', ended_at = ? "
                     "WHERE run_id = 'r' AND task_id = ? AND number = 1 AND state = 'running'", (now, task))
        conn.execute("UPDATE task_runs SET state = 'succeeded', ended_at = ?, result = ? "
                     "WHERE run_id = 'r' AND task_id = ? AND state IN ('pending', 'running', 'retrying')",
                     (now, json.dumps(RESULT), task))
        out = RESULT["output"]
        conn.execute("INSERT INTO lineage (run_id, task_id, inputs, output_uri, rows, bytes, "
                     "schema_fingerprint, recorded_at) VALUES ('r', ?, ?, ?, ?, ?, ?, ?)",
                     (task, json.dumps(RESULT["inputs"]), out["uri"], out["rows"], out["bytes"],  # type: ignore[index]
                      out["schema_fingerprint"], now))  # type: ignore[index]
        conn.execute("COMMIT")
    t2 = CLOCK()
    conn.close()
    return (t1 - t0) / tasks, (t2 - t1) / tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", help="also measure on this PostgreSQL URL (an empty database/schema)")
    parser.add_argument("--cpu", action="store_true", help="measure process CPU time instead of wall time")
    args = parser.parse_args()
    global CLOCK  # noqa: PLW0603 (one switch for both measured functions)
    if args.cpu:
        CLOCK = time.process_time

    rows: dict[str, list[tuple[float, float]]] = {"udop store (SQLite)": [], "bare sqlite3 (baseline)": []}
    if args.postgres:
        rows["udop store (PostgreSQL)"] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            rows["udop store (SQLite)"].append(udop_store(f"sqlite:///{tmp}/udop-{i}.db", args.tasks))
            rows["bare sqlite3 (baseline)"].append(bare_sqlite(Path(tmp) / f"bare-{i}.db", args.tasks))
            if args.postgres:
                rows["udop store (PostgreSQL)"].append(udop_store(args.postgres, min(args.tasks, 500)))

    clock = "CPU" if args.cpu else "wall"
    print(f"{args.tasks} task attempts, median of {args.repeat} ({clock} microseconds per call)")
    print(f"{'':28}{'start_attempt':>15}{'finish_attempt':>16}{'both':>10}")
    for name, samples in rows.items():
        start = statistics.median(s for s, _ in samples) * 1e6
        finish = statistics.median(f for _, f in samples) * 1e6
        print(f"{name:28}{start:15.0f}{finish:16.0f}{start + finish:10.0f}")


if __name__ == "__main__":
    main()
