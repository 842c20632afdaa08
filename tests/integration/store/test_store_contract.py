"""The MetadataStore contract, run against SQLite and the real PostgreSQL (same tests, both backends)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from udop.errors import RunNotFound, StoreError, TransitionError
from udop.states import AttemptState, RunState, TaskState
from udop.store import migrate
from udop.store.api import MetadataStore
from udop.store.engine import create_store_engine, parse_url
from udop.store.schema import HEAD, MIGRATIONS
from udop.store.tables import metadata

DEFINITION = {
    "apiVersion": "udop/v1",
    "kind": "Pipeline",
    "metadata": {"name": "p"},
    "spec": {"tasks": [{"id": "a", "type": "python"}, {"id": "b", "type": "python"}]},
}
LOGICAL = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _new_run(
    store: MetadataStore,
    run_id: str,
    *,
    pipeline: str = "p",
    tasks: tuple[str, ...] = ("a", "b", "c"),
    **kw: Any,
) -> Any:
    version = store.register_pipeline(pipeline, {**DEFINITION, "metadata": {"name": pipeline}}).version
    return store.create_run(
        run_id=run_id,
        pipeline=pipeline,
        pipeline_version=version,
        task_ids=list(tasks),
        params=kw.pop("params", {"month": 1}),
        logical_date=kw.pop("logical_date", LOGICAL),
        **kw,
    )


def _task(store: MetadataStore, run_id: str, task_id: str) -> Any:
    run = store.get_run(run_id)
    assert run is not None
    return next(t for t in run.tasks if t.task_id == task_id)


def _is_utc(value: datetime | None) -> bool:
    return value is not None and value.utcoffset() == timedelta(0)


# --- migrations -------------------------------------------------------------------------------------


def _all_tables() -> Any:
    """The store's tables and the REST API's (audit log, API keys), which revision 0002 adds."""
    from sqlalchemy import MetaData

    from udop.api.audit import API_METADATA

    combined = MetaData()
    for source in (metadata, API_METADATA):
        for table in source.tables.values():
            table.to_metadata(combined)
    return combined


def test_an_empty_database_is_migrated_to_head_and_matches_the_table_definitions(
    db_url: str, open_db: Any
) -> None:
    open_db()
    engine = create_store_engine(parse_url(db_url))
    try:
        with engine.connect() as conn:
            head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
            tables = set(inspect(conn).get_table_names())
            assert {
                "pipelines",
                "pipeline_versions",
                "runs",
                "task_runs",
                "attempts",
                "lineage",
                "check_results",
            } <= tables
            # what the migrations built is exactly what tables.py describes (columns, types, indexes, FKs)
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, _all_tables()) == []
            run_indexes = {tuple(ix["column_names"]) for ix in inspect(conn).get_indexes("runs")}
            assert {
                ("created_at", "id"),
                ("pipeline", "created_at", "id"),
                ("state", "created_at", "id"),
            } <= run_indexes
    finally:
        engine.dispose()
    # opening again finds it at head and keeps the data
    s = open_db()
    s.register_pipeline("p", DEFINITION)
    assert open_db().get_pipeline("p") is not None


def test_explicit_migrate_reaches_head(db_url: str, open_db: Any) -> None:
    assert migrate(db_url) == HEAD
    assert migrate(db_url) == HEAD  # idempotent
    assert open_db().list_pipelines() == []


# --- pipelines ----------------------------------------------------------------------------------------


def test_pipeline_versions_change_only_when_the_content_hash_changes(store: MetadataStore) -> None:
    v1 = store.register_pipeline("p", DEFINITION)
    expected = hashlib.sha256(
        json.dumps(DEFINITION, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert (v1.version, v1.content_hash, v1.definition) == (1, expected, DEFINITION)
    # the same content with keys in another order is the same definition
    reordered = dict(reversed(list(DEFINITION.items())))
    again = store.register_pipeline("p", reordered)
    assert (again.version, again.created_at) == (1, v1.created_at)
    changed = {**DEFINITION, "spec": {"tasks": [{"id": "a", "type": "python"}]}}
    v2 = store.register_pipeline("p", changed)
    assert v2.version == 2
    assert v2.content_hash != v1.content_hash
    # going back to the first content is a new latest version, so `latest` is what was registered last
    v3 = store.register_pipeline("p", DEFINITION)
    assert v3.version == 3
    assert v3.content_hash == v1.content_hash

    record = store.get_pipeline("p")
    assert record is not None
    assert [v.version for v in record.versions] == [1, 2, 3]
    assert record.latest is not None
    assert record.latest.definition == DEFINITION
    assert record.versions[1].definition == changed
    assert _is_utc(record.created_at)
    assert _is_utc(record.versions[0].created_at)
    assert store.get_pipeline("nope") is None


def test_state_machine_arn_is_recorded_on_the_same_version(store: MetadataStore) -> None:
    store.register_pipeline("p", DEFINITION)
    arn = "arn:aws:states:eu-west-1:123456789012:stateMachine:udop-p"
    v = store.register_pipeline("p", DEFINITION, state_machine_arn=arn)
    assert (v.version, v.state_machine_arn) == (1, arn)
    record = store.get_pipeline("p")
    assert record is not None
    assert record.latest is not None
    assert record.latest.state_machine_arn == arn
    # registering without an ARN does not forget it
    assert store.register_pipeline("p", DEFINITION).state_machine_arn == arn


def test_list_and_delete_pipelines(store: MetadataStore) -> None:
    store.register_pipeline("b", DEFINITION)
    store.register_pipeline("a", DEFINITION)
    store.register_pipeline("a", {**DEFINITION, "x": 1})
    listed = store.list_pipelines()
    assert [(p.name, [v.version for v in p.versions]) for p in listed] == [("a", [1, 2]), ("b", [1])]
    _new_run(store, "r-b", pipeline="b")
    assert store.delete_pipeline("b") is True
    assert store.get_pipeline("b") is None
    assert store.get_run("r-b") is None  # its runs went with it
    assert store.delete_pipeline("b") is False
    assert [p.name for p in store.list_pipelines()] == ["a"]


# --- runs ---------------------------------------------------------------------------------------------


def test_run_lifecycle(store: MetadataStore) -> None:
    created = _new_run(
        store,
        "r1",
        params={"month": 7, "day": datetime(2026, 3, 1).date()},
        logical_date=datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))),
    )
    assert created.state is RunState.PENDING
    assert created.params == {"month": 7, "day": "2026-03-01"}  # as get_run will return them
    assert [(t.task_id, t.state) for t in created.tasks] == [
        ("a", TaskState.PENDING),
        ("b", TaskState.PENDING),
        ("c", TaskState.PENDING),
    ]
    fetched = store.get_run("r1")
    assert fetched is not None
    assert fetched.params == {"month": 7, "day": "2026-03-01"}  # dates travel as ISO text
    assert fetched.logical_date == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    assert _is_utc(fetched.logical_date)
    assert _is_utc(fetched.created_at)
    assert (fetched.started_at, fetched.ended_at, fetched.executor) == (None, None, "local")

    running = store.set_run_state("r1", RunState.RUNNING, owner="123@host")
    assert (running.state, running.owner) == (RunState.RUNNING, "123@host")
    assert _is_utc(running.started_at)
    assert running.ended_at is None

    store.start_attempt("r1", "a", 1)
    task = _task(store, "r1", "a")
    assert task.state is TaskState.RUNNING
    assert _is_utc(task.started_at)
    assert [(a.number, a.state) for a in task.attempts] == [(1, AttemptState.RUNNING)]

    store.finish_attempt(
        "r1",
        "a",
        1,
        attempt_state=AttemptState.FAILED,
        task_state=TaskState.RETRYING,
        error_type="udop.RetryableError",
        error_message="flaky",
    )
    task = _task(store, "r1", "a")
    assert (task.state, task.error_type, task.error_message) == (
        TaskState.RETRYING,
        "udop.RetryableError",
        "flaky",
    )
    assert task.ended_at is None
    assert (task.attempts[0].state, task.attempts[0].error_message) == (AttemptState.FAILED, "flaky")

    store.start_attempt("r1", "a", 2)
    result = {"output": None, "value": {"n": 3}, "inputs": [], "checks": [], "metrics": {"seconds": 0.1}}
    store.finish_attempt(
        "r1", "a", 2, attempt_state=AttemptState.SUCCEEDED, task_state=TaskState.SUCCEEDED, result=result
    )
    task = _task(store, "r1", "a")
    assert task.state is TaskState.SUCCEEDED
    assert task.result == result
    assert (task.error_type, task.error_message) == (None, None)  # the earlier failure is history now
    assert [(a.number, a.state) for a in task.attempts] == [
        (1, AttemptState.FAILED),
        (2, AttemptState.SUCCEEDED),
    ]
    assert task.started_at == task.attempts[0].started_at  # the task started with its first attempt
    assert _is_utc(task.ended_at)
    assert task.ended_at is not None
    assert task.started_at is not None
    assert task.ended_at >= task.started_at

    store.set_task_states(
        "r1", ["b", "c"], TaskState.UPSTREAM_FAILED, error_message="upstream task 'x' failed"
    )
    assert _task(store, "r1", "c").error_message == "upstream task 'x' failed"
    done = store.set_run_state("r1", RunState.FAILED, error="task 'b' failed")
    assert (done.state, done.error, done.owner) == (RunState.FAILED, "task 'b' failed", "123@host")
    assert _is_utc(done.ended_at)
    assert done.started_at == running.started_at


def test_a_run_id_is_unique_and_a_run_needs_a_registered_version(store: MetadataStore) -> None:
    _new_run(store, "r1")
    with pytest.raises(StoreError, match="'r1' already exists"):
        _new_run(store, "r1")
    with pytest.raises(StoreError, match="no version 9"):
        store.create_run(
            run_id="r2", pipeline="p", pipeline_version=9, task_ids=["a"], params={}, logical_date=LOGICAL
        )
    assert store.get_run("r2") is None
    with pytest.raises(StoreError, match="repeated: a"):
        store.create_run(
            run_id="r3",
            pipeline="p",
            pipeline_version=1,
            task_ids=["a", "a"],
            params={},
            logical_date=LOGICAL,
        )
    assert store.get_run("r3") is None  # nothing half-created


def test_external_id_lookup(store: MetadataStore) -> None:
    arn = "arn:aws:states:eu-west-1:123456789012:execution:udop-p:r1"
    _new_run(store, "r1", executor="stepfunctions", external_id=arn)
    _new_run(store, "r2")
    found = store.find_run_by_external_id(arn)
    assert found is not None
    assert (found.id, found.executor, found.external_id) == ("r1", "stepfunctions", arn)
    assert [t.task_id for t in found.tasks] == ["a", "b", "c"]
    assert store.find_run_by_external_id(arn + "-other") is None
    with pytest.raises(StoreError, match="already belongs to run 'r1'"):
        _new_run(store, "r3", external_id=arn)


def test_list_runs_newest_first_with_filters_and_a_cursor(store: MetadataStore) -> None:
    made = []
    for i in range(7):
        pipeline = "p" if i % 2 == 0 else "q"
        _new_run(store, f"run-{i}", pipeline=pipeline)
        made.append((f"run-{i}", pipeline))
    for run_id in ("run-1", "run-2", "run-4"):
        store.set_run_state(run_id, RunState.RUNNING)
    store.set_run_state("run-4", RunState.SUCCEEDED)

    newest_first = [r for r, _ in reversed(made)]
    assert [r.id for r in store.list_runs()] == newest_first
    assert [r.id for r in store.list_runs(pipeline="q")] == [r for r, p in reversed(made) if p == "q"]
    assert [r.id for r in store.list_runs(state=RunState.RUNNING)] == ["run-2", "run-1"]
    assert [r.id for r in store.list_runs(pipeline="p", state=RunState.SUCCEEDED)] == ["run-4"]
    assert all(r.tasks == [] for r in store.list_runs())

    pages: list[list[str]] = []
    before = None
    while True:
        page = [r.id for r in store.list_runs(limit=3, before=before)]
        if not page:
            break
        pages.append(page)
        before = page[-1]
    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]
    assert [r.id for r in store.list_runs(pipeline="p", before="run-4")] == ["run-2", "run-0"]
    with pytest.raises(RunNotFound):
        store.list_runs(before="no-such-run")


# --- illegal moves --------------------------------------------------------------------------------------


def test_illegal_run_moves_are_refused_and_change_nothing(store: MetadataStore) -> None:
    _new_run(store, "r1")
    with pytest.raises(TransitionError, match="pending -> succeeded"):
        store.set_run_state("r1", RunState.SUCCEEDED)
    store.set_run_state("r1", RunState.RUNNING, owner="1@h")
    finished = store.set_run_state("r1", RunState.SUCCEEDED)
    with pytest.raises(TransitionError, match="succeeded -> running"):
        store.set_run_state("r1", RunState.RUNNING, owner="2@h", error="x")
    after = store.get_run("r1")
    assert after is not None
    assert (after.state, after.owner, after.error, after.ended_at) == (
        RunState.SUCCEEDED,
        "1@h",
        None,
        finished.ended_at,
    )
    with pytest.raises(RunNotFound):
        store.set_run_state("nope", RunState.RUNNING)


def test_illegal_task_and_attempt_moves_are_refused_and_change_nothing(store: MetadataStore) -> None:
    _new_run(store, "r1")
    store.set_run_state("r1", RunState.RUNNING)
    store.start_attempt("r1", "a", 1)
    before = store.get_run("r1")

    with pytest.raises(TransitionError, match="running -> running"):
        store.start_attempt("r1", "a", 2)  # a task runs one attempt at a time
    with pytest.raises(TransitionError, match="never started"):
        store.finish_attempt(
            "r1", "b", 1, attempt_state=AttemptState.SUCCEEDED, task_state=TaskState.SUCCEEDED
        )
    # a -> pending would be legal (running -> pending), b -> pending is not: neither moves
    with pytest.raises(TransitionError, match=r"task 'b'.*pending -> pending"):
        store.set_task_states("r1", ["a", "b"], TaskState.PENDING)
    # the attempt move is legal but the task move is not: both are rolled back, nothing recorded
    with pytest.raises(TransitionError, match=r"task 'a'.*running -> upstream_failed"):
        store.finish_attempt(
            "r1",
            "a",
            1,
            attempt_state=AttemptState.FAILED,
            task_state=TaskState.UPSTREAM_FAILED,
            error_type="X",
            error_message="boom",
            result={"output": {"uri": "/x"}, "checks": [{"rule": "r", "severity": "error", "passed": False}]},
        )
    with pytest.raises(RunNotFound, match="no task 'zz'"):
        store.start_attempt("r1", "zz", 1)
    with pytest.raises(RunNotFound, match="no run 'r9'"):
        store.start_attempt("r9", "a", 1)
    assert store.get_run("r1") == before
    assert store.get_lineage("r1") == []
    assert store.get_checks("r1") == []

    store.finish_attempt("r1", "a", 1, attempt_state=AttemptState.SUCCEEDED, task_state=TaskState.SUCCEEDED)
    with pytest.raises(TransitionError, match=r"attempt 1.*succeeded -> failed"):
        store.finish_attempt("r1", "a", 1, attempt_state=AttemptState.FAILED, task_state=TaskState.FAILED)
    with pytest.raises(TransitionError, match="succeeded -> cancelled"):
        store.set_task_states("r1", ["b", "c", "a"], TaskState.CANCELLED)
    assert [t.state for t in store.get_run("r1").tasks] == [
        TaskState.SUCCEEDED,
        TaskState.PENDING,  # type: ignore[union-attr]
        TaskState.PENDING,
    ]


# --- what tasks leave behind -----------------------------------------------------------------------------


def test_finish_attempt_records_lineage_and_checks(store: MetadataStore) -> None:
    _new_run(store, "r1")
    store.set_run_state("r1", RunState.RUNNING)
    store.start_attempt("r1", "a", 1)
    output = {
        "uri": "/data/runs/p/r1/a/",
        "rows": 3_000_000_000,
        "bytes": 12345,
        "schema_fingerprint": "sha256:abc",
        "format": "parquet",
        "files": 2,
    }
    checks = [
        {
            "rule": "not_null(carrier)",
            "severity": "error",
            "passed": True,
            "failing_rows": 0,
            "sample": [],
            "message": "",
        },
        {
            "rule": "range(flights)",
            "severity": "warn",
            "passed": False,
            "failing_rows": 2,
            "sample": [{"carrier": "AA", "flights": 0}, {"carrier": "UA", "flights": -1}],
            "message": "2 rows",
        },
    ]
    result = {
        "output": output,
        "value": None,
        "inputs": ["flights", "s3://bucket/carriers.csv"],
        "checks": checks,
        "metrics": {},
    }
    store.finish_attempt(
        "r1", "a", 1, attempt_state=AttemptState.SUCCEEDED, task_state=TaskState.SUCCEEDED, result=result
    )
    [lin] = store.get_lineage("r1")
    assert (lin.task_id, lin.inputs, lin.output_uri, lin.rows, lin.bytes, lin.schema_fingerprint) == (
        "a",
        ["flights", "s3://bucket/carriers.csv"],
        "/data/runs/p/r1/a/",
        3_000_000_000,
        12345,
        "sha256:abc",
    )
    assert _is_utc(lin.recorded_at)
    got = store.get_checks("r1")
    assert [(c.task_id, c.rule, c.severity, c.passed, c.failing_rows, c.sample, c.message) for c in got] == [
        ("a", c["rule"], c["severity"], c["passed"], c["failing_rows"], c["sample"], c["message"])
        for c in checks
    ]
    assert _task(store, "r1", "a").result == result

    # a failed validate task keeps its failed checks (and its error) but has no output
    store.start_attempt("r1", "b", 1)
    failed = {
        "output": None,
        "inputs": ["a"],
        "checks": [{"rule": "row_count", "severity": "error", "passed": False, "failing_rows": 1}],
    }
    store.finish_attempt(
        "r1",
        "b",
        1,
        attempt_state=AttemptState.FAILED,
        task_state=TaskState.FAILED,
        error_type="udop.DataQualityError",
        error_message="row_count failed",
        result=failed,
    )
    assert len(store.get_lineage("r1")) == 1
    assert [(c.task_id, c.passed, c.sample, c.message) for c in store.get_checks("r1")][-1] == (
        "b",
        False,
        [],
        "",
    )
    b = _task(store, "r1", "b")
    assert (b.state, b.error_type, b.error_message) == (
        TaskState.FAILED,
        "udop.DataQualityError",
        "row_count failed",
    )
    assert store.get_lineage("other") == []
    assert store.get_checks("other") == []


# --- resume --------------------------------------------------------------------------------------------


def test_reset_for_resume(store: MetadataStore) -> None:
    _new_run(store, "r1", tasks=("done", "broke", "mid", "blocked", "waiting", "again"))
    store.set_run_state("r1", RunState.RUNNING, owner="1@dead")
    store.start_attempt("r1", "done", 1)
    store.finish_attempt(
        "r1",
        "done",
        1,
        attempt_state=AttemptState.SUCCEEDED,
        task_state=TaskState.SUCCEEDED,
        result={"output": {"uri": "/d"}, "inputs": []},
    )
    store.start_attempt("r1", "broke", 1)
    store.finish_attempt(
        "r1",
        "broke",
        1,
        attempt_state=AttemptState.FAILED,
        task_state=TaskState.FAILED,
        error_type="udop.FatalError",
        error_message="bad",
        result={"output": None, "checks": [{"rule": "r", "severity": "error", "passed": False}]},
    )
    store.start_attempt("r1", "mid", 1)  # still running when the process died
    store.set_task_states("r1", ["blocked"], TaskState.UPSTREAM_FAILED)
    store.start_attempt("r1", "again", 1)
    store.finish_attempt(
        "r1", "again", 1, attempt_state=AttemptState.TIMED_OUT, task_state=TaskState.RETRYING
    )
    store.set_run_state("r1", RunState.FAILED, error="task 'broke' failed")

    reset = store.reset_for_resume("r1")
    assert reset == ["broke", "mid", "blocked", "waiting", "again"]
    run = store.get_run("r1")
    assert run is not None
    assert (run.state, run.ended_at, run.error, run.owner) == (RunState.RUNNING, None, None, "1@dead")
    states = {t.task_id: t for t in run.tasks}
    assert states["done"].state is TaskState.SUCCEEDED
    for task_id in reset:
        t = states[task_id]
        assert (t.state, t.error_type, t.error_message, t.result, t.ended_at) == (
            TaskState.PENDING,
            None,
            None,
            None,
            None,
        )
    assert [a.state for a in states["mid"].attempts] == [AttemptState.ABANDONED]
    assert [a.state for a in states["broke"].attempts] == [AttemptState.FAILED]  # history is kept
    assert [lin.task_id for lin in store.get_lineage("r1")] == ["done"]
    assert store.get_checks("r1") == []  # the failed check is re-run with the task

    # the resumed run goes on: the next attempt numbers follow the recorded ones
    store.start_attempt("r1", "mid", 2)
    store.finish_attempt("r1", "mid", 2, attempt_state=AttemptState.SUCCEEDED, task_state=TaskState.SUCCEEDED)
    assert [a.number for a in _task(store, "r1", "mid").attempts] == [1, 2]


def test_a_succeeded_run_cannot_be_resumed(store: MetadataStore) -> None:
    _new_run(store, "r1", tasks=("a",))
    store.set_run_state("r1", RunState.RUNNING)
    store.start_attempt("r1", "a", 1)
    store.finish_attempt("r1", "a", 1, attempt_state=AttemptState.SUCCEEDED, task_state=TaskState.SUCCEEDED)
    store.set_run_state("r1", RunState.SUCCEEDED)
    before = store.get_run("r1")
    with pytest.raises(TransitionError, match="succeeded -> running"):
        store.reset_for_resume("r1")
    assert store.get_run("r1") == before
    with pytest.raises(RunNotFound):
        store.reset_for_resume("nope")


def test_timestamps_are_utc_on_the_database_too(db_url: str, store: MetadataStore) -> None:
    """Another reader of the database (SQL, BI tools) sees the same instants."""
    _new_run(store, "r1", logical_date=datetime(2026, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=-5))))

    engine = create_store_engine(parse_url(db_url))
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                value = conn.execute(text("SELECT logical_date AT TIME ZONE 'UTC' FROM runs")).scalar()
            else:
                value = conn.execute(text("SELECT logical_date FROM runs")).scalar()
    finally:
        engine.dispose()
    assert str(value).startswith("2026-05-06 12:08:09")


def test_a_result_that_is_not_json_is_refused_and_changes_nothing(store: MetadataStore) -> None:
    _new_run(store, "r1")
    store.set_run_state("r1", RunState.RUNNING)
    store.start_attempt("r1", "a", 1)
    before = store.get_run("r1")
    with pytest.raises(StoreError, match="JSON"):
        store.finish_attempt(
            "r1",
            "a",
            1,
            attempt_state=AttemptState.SUCCEEDED,
            task_state=TaskState.SUCCEEDED,
            result={"output": {"uri": "/x"}, "value": object()},
        )
    assert store.get_run("r1") == before
    assert store.get_lineage("r1") == []
