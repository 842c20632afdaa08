"""The SQLAlchemy Core statements whose SQLite text the store sends straight to sqlite3.

A ``udop run`` on SQLite does not import SQLAlchemy (~0.15 s of its start-up): the SQL text of these
statements, compiled for sqlite3 with named parameters, is kept as plain strings in
``udop.store.sqlite_sql``, written by ``scripts/generate_sqlite_sql.py`` from ``compiled()`` here;
``tests/unit/store/test_sqlite_sql.py`` holds the two equal, so the text cannot drift from the
statements. Statements of the SQLAlchemy path (PostgreSQL) that have a counterpart here use these.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import and_, bindparam, delete, false, func, insert, literal_column, or_, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

from udop.states import AttemptState, RunState, TaskState, is_terminal
from udop.store.guards import predecessors
from udop.store.tables import (
    attempts,
    check_results,
    lineage,
    pipeline_versions,
    pipelines,
    runs,
    task_runs,
)

__all__ = ["INSERT_ATTEMPT", "INSERT_CHECK", "INSERT_LINEAGE", "START_TASK", "compiled",
           "finish_attempt_stmt", "finish_task_stmt", "run_state_stmt", "statements", "task_states_stmt"]


def in_states(column: Any, states: tuple[str, ...]) -> Any:
    """``column IN ('a', 'b')`` with literals: our own constants, and no per-call list expansion
    (no state at all: false, e.g. nothing moves a run back to pending)."""
    if not states:
        return false()
    return column.in_([literal_column(f"'{s}'") for s in states])


TASK_KEY = and_(task_runs.c.run_id == bindparam("r"), task_runs.c.task_id == bindparam("t"))
ATTEMPT_KEY = and_(attempts.c.run_id == bindparam("r"), attempts.c.task_id == bindparam("t"),
                   attempts.c.number == bindparam("n"))

START_TASK = (
    update(task_runs)
    .where(TASK_KEY, in_states(task_runs.c.state, predecessors(TaskState.RUNNING)))
    .values(state=TaskState.RUNNING.value, started_at=func.coalesce(task_runs.c.started_at, bindparam("now")))
)
INSERT_ATTEMPT = insert(attempts).values(
    run_id=bindparam("r"), task_id=bindparam("t"), number=bindparam("n"),
    state=AttemptState.RUNNING.value, started_at=bindparam("now"))
#: the SQLAlchemy path binds whole rows; the SQLite text names every column (``statements()``)
INSERT_LINEAGE = insert(lineage)
INSERT_CHECK = insert(check_results)


@cache
def finish_attempt_stmt(state: AttemptState) -> Any:
    return (update(attempts)
            .where(ATTEMPT_KEY, in_states(attempts.c.state, predecessors(state)))
            .values(state=state.value, ended_at=bindparam("now"), error_type=bindparam("etype"),
                    error_message=bindparam("emsg"),
                    log=func.coalesce(bindparam("log", type_=attempts.c.log.type), attempts.c.log)))


@cache
def finish_task_stmt(state: TaskState) -> Any:
    return (update(task_runs)
            .where(TASK_KEY, in_states(task_runs.c.state, predecessors(state)))
            .values(state=state.value, ended_at=bindparam("ended"), error_type=bindparam("etype"),
                    error_message=bindparam("emsg"),
                    result=bindparam("result", type_=task_runs.c.result.type)))


@cache
def run_state_stmt(state: RunState, *, owner: bool) -> Any:
    """``set_run_state``'s guarded UPDATE (parameters: run, err, now, and who (the owner) when ``owner``;
    not the columns' names, which SQLAlchemy reserves for its own parameters)."""
    values: dict[str, Any] = {"state": state.value, "error": bindparam("err"),
                              "ended_at": bindparam("now") if is_terminal(state) else None}
    if is_terminal(state):
        values["lease_expires_at"] = None
    if state is RunState.RUNNING:
        values["started_at"] = func.coalesce(runs.c.started_at, bindparam("now"))
    if owner:
        values["owner"] = bindparam("who")
    return (update(runs).where(runs.c.id == bindparam("run"), in_states(runs.c.state, predecessors(state)))
            .values(**values).returning(*runs.c))


@cache
def task_states_stmt(state: TaskState, *, message: bool) -> Any:
    """``set_task_states``' UPDATE (parameters: r, ids (a list), now, and emsg when ``message``)."""
    values: dict[str, Any] = {"state": state.value}
    if state is TaskState.PENDING:
        values.update(started_at=None, ended_at=None, error_type=None,
                      error_message=bindparam("emsg") if message else None, result=None)
    else:
        values["ended_at"] = bindparam("now") if is_terminal(state) else None
        if state is TaskState.RUNNING:
            values["started_at"] = func.coalesce(task_runs.c.started_at, bindparam("now"))
        if message:
            values["error_message"] = bindparam("emsg")
    return (update(task_runs)
            .where(task_runs.c.run_id == bindparam("r"),
                   task_runs.c.task_id.in_(bindparam("ids", expanding=True)),
                   in_states(task_runs.c.state, predecessors(state)))
            .values(**values))


def _resume_run(*, slot: bool, version: bool) -> Any:
    values: dict[str, Any] = {"state": RunState.RUNNING.value, "ended_at": None, "error": None,
                              "started_at": func.coalesce(runs.c.started_at, bindparam("now"))}
    if slot:
        values.update(owner=bindparam("who"), lease_expires_at=bindparam("lease"))
    if version:
        values["pipeline_version"] = bindparam("version")
    return update(runs).where(runs.c.id == bindparam("run")).values(**values)


def _list_runs(pipeline: bool, state: bool, before: bool) -> Any:
    stmt = select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc())
    if pipeline:
        stmt = stmt.where(runs.c.pipeline == bindparam("pipeline"))
    if state:
        stmt = stmt.where(runs.c.state == bindparam("state"))
    if before:
        at: Any = bindparam("cursor_at")
        stmt = stmt.where(or_(runs.c.created_at < at,
                              and_(runs.c.created_at == at, runs.c.id < bindparam("before"))))
    return stmt


def _reset_tasks() -> Any:
    return (update(task_runs)
            .where(task_runs.c.run_id == bindparam("r"),
                   in_states(task_runs.c.state, predecessors(TaskState.PENDING)),
                   task_runs.c.task_id.in_(bindparam("ids", expanding=True)))
            .values(state=TaskState.PENDING.value, started_at=None, ended_at=None,
                    error_type=None, error_message=None, result=None))


def _row_insert(table: Any, columns: tuple[str, ...]) -> Any:
    return insert(table).values({c: bindparam(c) for c in columns})


def statements() -> dict[str, Any]:
    """Every statement the SQLite path sends, by the name ``udop.store.sqlite_sql`` gives its text."""
    out: dict[str, Any] = {
        # attempts: start_attempt, finish_attempt
        "START_TASK": START_TASK,
        "INSERT_ATTEMPT": INSERT_ATTEMPT,
        "INSERT_LINEAGE": _row_insert(lineage, ("run_id", "task_id", "inputs", "output_uri", "rows", "bytes",
                                                "schema_fingerprint", "recorded_at")),
        "INSERT_CHECK": _row_insert(check_results, ("run_id", "task_id", "rule", "severity", "passed",
                                                    "failing_rows", "sample", "message")),
        # pipelines: register_pipeline, get_pipeline
        "INSERT_PIPELINE": sqlite_insert(pipelines).values(name=bindparam("name"),
                                                           created_at=bindparam("created_at"))
        .on_conflict_do_nothing(index_elements=["name"]),
        "PIPELINE": select(pipelines).where(pipelines.c.name == bindparam("name")),
        "LATEST_VERSION": select(pipeline_versions).where(pipeline_versions.c.pipeline == bindparam("name"))
        .order_by(pipeline_versions.c.version.desc()).limit(1),
        "VERSIONS": select(pipeline_versions).where(pipeline_versions.c.pipeline == bindparam("name"))
        .order_by(pipeline_versions.c.version),
        "SET_VERSION_ARN": update(pipeline_versions)
        .where(pipeline_versions.c.pipeline == bindparam("name"),
               pipeline_versions.c.version == bindparam("v"))
        .values(state_machine_arn=bindparam("arn")),
        "INSERT_VERSION": _row_insert(pipeline_versions, ("pipeline", "version", "content_hash", "definition",
                                                          "state_machine_arn", "created_at")),
        # runs: create_run (with its slot), renew_lease, set_run_state, reset_for_resume
        "INSERT_RUN": _row_insert(runs, tuple(runs.c.keys())),
        "INSERT_TASK_RUN": _row_insert(task_runs, ("run_id", "task_id", "position", "state")),
        "LIVE_RUNS": select(runs.c.id, runs.c.owner, runs.c.lease_expires_at)
        .where(runs.c.pipeline == bindparam("pipeline"), runs.c.state == RunState.RUNNING.value,
               runs.c.id != bindparam("run"), runs.c.lease_expires_at > bindparam("now"))
        .order_by(runs.c.created_at, runs.c.id),
        "RENEW_LEASE": update(runs).where(runs.c.id == bindparam("run"), runs.c.owner == bindparam("who"),
                                          runs.c.state == RunState.RUNNING.value)
        .values(lease_expires_at=bindparam("lease")),
        "RUN_STATE": select(runs.c.state).where(runs.c.id == bindparam("run")),
        "RUN_HEAD": select(runs.c.state, runs.c.pipeline).where(runs.c.id == bindparam("run")),
        "UNFINISHED_TASKS": select(task_runs.c.task_id, task_runs.c.state)
        .where(task_runs.c.run_id == bindparam("r"), task_runs.c.state != TaskState.SUCCEEDED.value)
        .order_by(task_runs.c.position),
        "ABANDON_ATTEMPTS": update(attempts)
        .where(attempts.c.run_id == bindparam("r"), attempts.c.state == AttemptState.RUNNING.value)
        .values(state=AttemptState.ABANDONED.value, ended_at=bindparam("now"),
                error_message="abandoned: the run was resumed"),
        "RESET_TASKS": _reset_tasks(),
        "DELETE_LINEAGE": delete(lineage).where(lineage.c.run_id == bindparam("r"),
                                                lineage.c.task_id.in_(bindparam("ids", expanding=True))),
        "DELETE_CHECKS": delete(check_results).where(
            check_results.c.run_id == bindparam("r"),
            check_results.c.task_id.in_(bindparam("ids", expanding=True))),
        # tasks: set_task_states
        "TASK_STATES": select(task_runs.c.task_id, task_runs.c.state)
        .where(task_runs.c.run_id == bindparam("r"),
               task_runs.c.task_id.in_(bindparam("ids", expanding=True)))
        .order_by(task_runs.c.task_id),
        # the diagnosis of a refused change
        "TASK_STATE": select(task_runs.c.state).where(task_runs.c.run_id == bindparam("r"),
                                                      task_runs.c.task_id == bindparam("t")),
        "ATTEMPT_STATE": select(attempts.c.state).where(attempts.c.run_id == bindparam("r"),
                                                        attempts.c.task_id == bindparam("t"),
                                                        attempts.c.number == bindparam("n")),
        # what the tasks left behind
        "LINEAGE": select(lineage).where(lineage.c.run_id == bindparam("r")).order_by(lineage.c.id),
        "CHECKS": select(check_results).where(check_results.c.run_id == bindparam("r"))
        .order_by(check_results.c.id),
        # reads of udop.store.sqlite_reads
        "CURSOR": select(runs.c.created_at).where(runs.c.id == bindparam("before")),
        "RUN": select(runs).where(runs.c.id == bindparam("run_id")),
        "TASKS": select(task_runs).where(task_runs.c.run_id == bindparam("run_id"))
        .order_by(task_runs.c.position),
        "ATTEMPTS": select(attempts).where(attempts.c.run_id == bindparam("run_id"))
        .order_by(attempts.c.task_id, attempts.c.number),
    }
    for attempt_state in AttemptState:
        out[f"FINISH_ATTEMPT_{attempt_state.name}"] = finish_attempt_stmt(attempt_state)
    for task_state in TaskState:
        out[f"FINISH_TASK_{task_state.name}"] = finish_task_stmt(task_state)
        for message in (False, True):
            out[f"TASK_STATES_{task_state.name}{'_MESSAGE' if message else ''}"] = task_states_stmt(
                task_state, message=message)
    for run_state in RunState:
        for owner in (False, True):
            name = f"RUN_STATE_{run_state.name}{'_OWNER' if owner else ''}"
            out[name] = run_state_stmt(run_state, owner=owner)
    for slot in (False, True):
        for version in (False, True):
            out[f"RESUME_RUN{'_SLOT' if slot else ''}{'_VERSION' if version else ''}"] = _resume_run(
                slot=slot, version=version)
    for p in (False, True):
        for s in (False, True):
            for b in (False, True):
                name = "LIST_RUNS" + "_PIPELINE" * p + "_STATE" * s + "_BEFORE" * b
                out[name] = _list_runs(p, s, b)
    return out


_DIALECT = SQLiteDialect_pysqlite(paramstyle="named")


def compiled() -> dict[str, tuple[str, dict[str, Any]]]:
    """Each statement's SQLite text (named parameters) and the values it binds itself."""
    out = {}
    for name, stmt in statements().items():
        c = stmt.compile(dialect=_DIALECT)
        out[name] = (c.string, dict(c.params))
    return out
