"""One write path per operation: on SQLite, every operation of a run goes straight to the driver with
the SQL text SQLAlchemy compiles (the hot path); everywhere else through SQLAlchemy. Both take their
rows from the same builders, and this holds them to writing the same rows: the same runs (retries,
upstream failures, a resume under a new version with a slot, a cancelled run) on a store using each
path, row by row, and the same records read back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from udop.errors import RunLimitReached, RunNotFound, TransitionError
from udop.states import AttemptState, RunState, TaskState
from udop.store import open_store
from udop.store.api import RunSlot
from udop.store.sql import SqlMetadataStore
from udop.store.tables import attempts, check_results, lineage, pipeline_versions, pipelines, runs, task_runs

CHECKS = [
    {"rule": "not_null(id)", "severity": "error", "passed": False, "failing_rows": 2,
     "sample": [{"id": None, "name": "ä"}], "message": "2 rows with a null id"},
    {"rule": "unique(id)", "severity": "warn", "passed": True},
]
RESULT = {
    "output": {"uri": "/data/runs/p/r1/a/", "rows": 3, "bytes": 120, "schema_fingerprint": "sha256:x"},
    "inputs": ["/data/runs/p/r1/src/"],
    "checks": CHECKS,
    "value": {"nested": [1, 2.5, "x"]},
}
#: what a clock would make differ between the two runs
TIMES = {"started_at", "ended_at", "created_at", "recorded_at", "lease_expires_at", "id"}
DEFINITION = {"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": "p"},
              "spec": {"tasks": [{"id": "a", "type": "python", "callable": "m:f"}]}}


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
    # a second run: an upstream failure, a resume under a new version in a slot, a lease, a cancel
    store.create_run(run_id="r2", pipeline="p", pipeline_version=1, task_ids=["x", "y", "z"], params={},
                     logical_date=datetime(2026, 1, 3), slot=RunSlot(owner="1@h", lease_seconds=60, max_active=2))
    assert store.renew_lease("r2", "1@h", 120) and not store.renew_lease("r2", "2@h", 120)
    store.start_attempt("r2", "x", 1)
    store.finish_attempt("r2", "x", 1, attempt_state=AttemptState.SUCCEEDED, task_state=TaskState.SUCCEEDED,
                         result={"checks": [CHECKS[1]]}, log={"kind": "file", "path": "/l"})
    store.start_attempt("r2", "y", 1)
    store.set_task_states("r2", ["z"], TaskState.UPSTREAM_FAILED, error_message="upstream task 'y' failed")
    with pytest.raises(TransitionError):
        store.set_task_states("r2", ["x", "z"], TaskState.CANCELLED)  # x succeeded: none of them moves
    with pytest.raises(RunNotFound):
        store.set_task_states("r2", ["nope"], TaskState.CANCELLED)
    store.set_run_state("r2", RunState.FAILED, error="task 'y' failed", owner="1@h")
    store.create_run(run_id="r3", pipeline="p", pipeline_version=1, task_ids=[], params={"k": [1]},
                     logical_date=datetime(2026, 1, 4, tzinfo=UTC), slot=RunSlot(owner="3@h", lease_seconds=60))
    with pytest.raises(RunLimitReached):  # r3 holds a live lease, and the limit is 1
        store.reset_for_resume("r2", slot=RunSlot(owner="2@h", lease_seconds=60, max_active=1))
    edited = {**DEFINITION, "spec": {"tasks": [{"id": "a", "type": "python", "callable": "m:g"}]}}
    version = store.register_pipeline("p", edited, state_machine_arn="arn:sm")
    assert version.version == 2
    assert store.register_pipeline("p", edited, state_machine_arn="arn:sm2").version == 2
    assert store.reset_for_resume("r2", slot=RunSlot(owner="2@h", lease_seconds=60, max_active=2),
                                  pipeline_version=2) == ["y", "z"]
    store.set_task_states("r2", ["y", "z"], TaskState.CANCELLED, error_message="cancelled: test")
    store.set_run_state("r2", RunState.CANCELLED, error="cancelled: test")
    store.reset_for_resume("r2")
    with pytest.raises(TransitionError):
        store.set_run_state("r2", RunState.PENDING)


def _rows(store: SqlMetadataStore) -> dict[str, list[dict[str, Any]]]:
    out = {}
    with store.engine.connect() as conn:
        for table in (pipelines, pipeline_versions, runs, task_runs, attempts, lineage, check_results):
            rows = [{k: v for k, v in row._mapping.items() if k not in TIMES}
                    for row in conn.execute(select(table))]
            out[table.name] = sorted(rows, key=repr)
        # the times are there and in UTC on both paths (what differs is only when they were taken)
        stamps = conn.execute(select(attempts.c.started_at, attempts.c.ended_at)).all()
        out["attempt_times_set"] = [{"all": all(a is not None and b is not None for a, b in stamps)}]
    return out


@pytest.fixture
def stores(tmp_path: Path) -> Any:
    open_store(f"sqlite:///{tmp_path / 'hot.db'}").close()  # created and migrated through SQLAlchemy
    hot = open_store(f"sqlite:///{tmp_path / 'hot.db'}")  # then opened on sqlite3 alone, as a udop run is
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
    assert hot._engine is None  # every operation above went to sqlite3: no engine was made
    _run(general)
    written = _rows(hot)
    assert written == _rows(general)
    assert len(written["lineage"]) == 2 and len(written["check_results"]) == 5  # the runs wrote them
    assert [r["state"] for r in written["runs"]] == ["running"] * 3


def test_both_paths_read_back_the_same_records(stores: Any) -> None:
    hot, general = stores
    _run(hot)
    _run(general)

    def records(store: SqlMetadataStore) -> Any:
        out: list[Any] = []
        for run_id in ("r1", "r2"):
            run = store.get_run(run_id)
            assert run is not None
            tasks = [(t.task_id, t.state, t.error_type, t.error_message, t.result,
                      [(a.number, a.state, a.error_type, a.error_message, a.log) for a in t.attempts])
                     for t in run.tasks]
            checks = [(c.task_id, c.rule, c.severity, c.passed, c.failing_rows, c.sample, c.message)
                      for c in store.get_checks(run_id)]
            edges = [(e.task_id, e.inputs, e.output_uri, e.rows, e.bytes, e.schema_fingerprint,
                      e.recorded_at.tzinfo) for e in store.get_lineage(run_id)]
            out.append((run.pipeline_version, run.state, run.owner, run.error, tasks, checks, edges))
        pipeline = store.get_pipeline("p")
        assert pipeline is not None
        out.append([(v.version, v.content_hash, v.definition, v.state_machine_arn, v.created_at.tzinfo)
                    for v in pipeline.versions])
        return out

    assert records(hot) == records(general)


def test_both_paths_refuse_alike(stores: Any) -> None:
    hot, general = stores

    def refusals(store: SqlMetadataStore) -> list[tuple[type, str]]:
        _run(store)
        calls: list[Callable[[], object]] = [
            lambda: store.start_attempt("r1", "a", 3),  # a succeeded
            lambda: store.start_attempt("nope", "a", 1),
            lambda: store.start_attempt("r1", "zz", 1),
            lambda: store.finish_attempt("r1", "b", 9, attempt_state=AttemptState.SUCCEEDED,
                                         task_state=TaskState.SUCCEEDED),
            lambda: store.finish_attempt("r1", "b", 1, attempt_state=AttemptState.FAILED,
                                         task_state=TaskState.FAILED),
            lambda: store.finish_attempt("r1", "zz", 1, attempt_state=AttemptState.FAILED,
                                         task_state=TaskState.FAILED),
            lambda: store.set_run_state("nope", RunState.FAILED),
        ]
        out: list[tuple[type, str]] = []
        for call in calls:
            with pytest.raises((TransitionError, RunNotFound)) as refused:
                call()
            out.append((type(refused.value), str(refused.value)))
        return out

    said = refusals(hot)
    assert said == refusals(general)
    assert said[3] == (TransitionError, "run 'r1' task 'b': attempt 9 was never started")
    assert said[1][0] is RunNotFound and said[2][0] is RunNotFound
