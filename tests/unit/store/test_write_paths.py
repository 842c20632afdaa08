"""One write path per operation: on SQLite, start_attempt and finish_attempt go straight to the driver
(the hot path); everywhere else through SQLAlchemy. Both take their rows from the same builders, and
this holds them to writing the same rows: the same run on a store using each path, row by row."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from udop.states import AttemptState, RunState, TaskState
from udop.store import open_store
from udop.store.sql import SqlMetadataStore
from udop.store.tables import attempts, check_results, lineage, runs, task_runs

RESULT = {
    "output": {"uri": "/data/runs/p/r1/a/", "rows": 3, "bytes": 120, "schema_fingerprint": "sha256:x"},
    "inputs": ["/data/runs/p/r1/src/"],
    "checks": [
        {"rule": "not_null(id)", "severity": "error", "passed": False, "failing_rows": 2,
         "sample": [{"id": None, "name": "ä"}], "message": "2 rows with a null id"},
        {"rule": "unique(id)", "severity": "warn", "passed": True},
    ],
    "value": {"nested": [1, 2.5, "x"]},
}
#: what a clock would make differ between the two runs
TIMES = {"started_at", "ended_at", "created_at", "recorded_at", "lease_expires_at", "id"}


def _run(store: SqlMetadataStore) -> None:
    store.register_pipeline("p", {"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": "p"},
                                  "spec": {"tasks": [{"id": "a", "type": "python", "callable": "m:f"}]}})
    store.create_run(run_id="r1", pipeline="p", pipeline_version=1, task_ids=["a", "b", "c"], params={"n": 1},
                     logical_date=datetime(2026, 1, 2, tzinfo=UTC))
    store.set_run_state("r1", RunState.RUNNING)
    store.start_attempt("r1", "a", 1)
    store.finish_attempt("r1", "a", 1, attempt_state=AttemptState.FAILED, task_state=TaskState.RETRYING,
                         error_type="ValueError", error_message="flaky")
    store.start_attempt("r1", "a", 2)
    store.finish_attempt("r1", "a", 2, attempt_state=AttemptState.SUCCEEDED, task_state=TaskState.SUCCEEDED,
                         result=RESULT)
    store.start_attempt("r1", "b", 1)
    store.finish_attempt("r1", "b", 1, attempt_state=AttemptState.FAILED, task_state=TaskState.FAILED,
                         error_type="udop.DataQualityError", error_message="1 rule failed",
                         result={"checks": RESULT["checks"]})
    store.start_attempt("r1", "c", 1)
    store.finish_attempt("r1", "c", 1, attempt_state=AttemptState.SUCCEEDED, task_state=TaskState.SUCCEEDED,
                         result={"written": [{"uri": "postgres://warehouse/t", "rows": 3}], "inputs": []})


def _rows(store: SqlMetadataStore) -> dict[str, list[dict[str, Any]]]:
    out = {}
    with store.engine.connect() as conn:
        for table in (runs, task_runs, attempts, lineage, check_results):
            rows = [{k: v for k, v in row._mapping.items() if k not in TIMES}
                    for row in conn.execute(select(table))]
            out[table.name] = sorted(rows, key=repr)
        # the times are there and in UTC on both paths (what differs is only when they were taken)
        stamps = conn.execute(select(attempts.c.started_at, attempts.c.ended_at)).all()
        out["attempt_times_set"] = [{"all": all(a is not None and b is not None for a, b in stamps)}]
    return out


@pytest.fixture
def stores(tmp_path: Path) -> Any:
    hot = open_store(f"sqlite:///{tmp_path / 'hot.db'}")
    general = open_store(f"sqlite:///{tmp_path / 'general.db'}")
    general._sqlite = False  # the SQLAlchemy path, as on PostgreSQL
    try:
        yield hot, general
    finally:
        hot.close()
        general.close()


def test_the_hot_path_and_the_sqlalchemy_path_write_the_same_rows(stores: Any) -> None:
    hot, general = stores
    _run(hot)
    _run(general)
    written = _rows(hot)
    assert written == _rows(general)
    assert len(written["lineage"]) == 2 and len(written["check_results"]) == 4  # the run wrote them


def test_both_paths_read_back_the_same_records(stores: Any) -> None:
    hot, general = stores
    _run(hot)
    _run(general)

    def records(store: SqlMetadataStore) -> Any:
        run = store.get_run("r1")
        assert run is not None
        tasks = [(t.task_id, t.state, t.error_type, t.result, [(a.number, a.state, a.error_type)
                                                               for a in t.attempts]) for t in run.tasks]
        checks = [(c.task_id, c.rule, c.passed, c.failing_rows, c.sample, c.message)
                  for c in store.get_checks("r1")]
        edges = [(e.task_id, e.inputs, e.output_uri, e.rows) for e in store.get_lineage("r1")]
        return tasks, checks, edges

    assert records(hot) == records(general)
