"""The SQLite read path of the two reads an API serves most: a page of runs and one run with its tasks.

Through SQLAlchemy a ``list_runs`` page of 51 rows cost about five times what sqlite3 takes to fetch
it: per-statement compilation-cache work, then a result processor per value (timestamps parsed by a
regular expression, JSON decoded, UTC attached). Here the same Core statements, compiled once, go
straight to the driver, and the values are converted as ``UTCDateTime`` and ``JSONType`` convert them:
naive UTC text to an aware UTC ``datetime`` (``datetime.fromisoformat``, in C), JSON text to Python.
The records are equal to the SQLAlchemy path's (``tests/integration/store/test_sqlite_reads.py``).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from datetime import UTC, datetime
from functools import cache
from typing import Any, TypeVar

from pydantic_core import from_json
from sqlalchemy import and_, bindparam, or_, select
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

from udop.errors import RunNotFound
from udop.states import AttemptState, RunState, TaskState
from udop.store.api import AttemptRecord, RunRecord, TaskRunRecord
from udop.store.tables import attempts, runs, task_runs

__all__ = ["get_run", "list_runs"]

_DIALECT = SQLiteDialect_pysqlite(paramstyle="named")


def _sql(stmt: Any) -> str:
    return str(stmt.compile(dialect=_DIALECT))


@cache
def _list_sql(pipeline: bool, state: bool, before: bool) -> str:
    stmt = select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc())
    if pipeline:
        stmt = stmt.where(runs.c.pipeline == bindparam("pipeline"))
    if state:
        stmt = stmt.where(runs.c.state == bindparam("state"))
    if before:
        at: Any = bindparam("cursor_at")
        stmt = stmt.where(or_(runs.c.created_at < at,
                              and_(runs.c.created_at == at, runs.c.id < bindparam("before"))))
    return _sql(stmt) + " LIMIT :limit"  # SQLAlchemy's SQLite LIMIT comes with an OFFSET to bind too


_CURSOR_SQL = _sql(select(runs.c.created_at).where(runs.c.id == bindparam("before")))
_RUN_SQL = _sql(select(runs).where(runs.c.id == bindparam("run_id")))
_TASKS_SQL = _sql(select(task_runs).where(task_runs.c.run_id == bindparam("run_id"))
                  .order_by(task_runs.c.position))
_ATTEMPTS_SQL = _sql(select(attempts).where(attempts.c.run_id == bindparam("run_id"))
                     .order_by(attempts.c.task_id, attempts.c.number))

_R = TypeVar("_R")
_parse = datetime.fromisoformat
_RUN_STATES = {s.value: s for s in RunState}
_TASK_STATES = {s.value: s for s in TaskState}
_ATTEMPT_STATES = {s.value: s for s in AttemptState}


def _ts(value: str | None) -> datetime | None:
    """What ``UTCDateTime`` makes of SQLite's text: an aware UTC datetime (None stays None)."""
    if value is None:
        return None
    if len(value) in (19, 26):  # naive "YYYY-MM-DD HH:MM:SS[.ffffff]", as UTCDateTime writes: UTC
        try:
            return _parse(value + "+00:00")  # in C; a .replace(tzinfo=UTC) after costs six times more
        except ValueError:
            pass
    found = _parse(value)
    return found.replace(tzinfo=UTC) if found.tzinfo is None else found.astimezone(UTC)


def _json(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return from_json(value)  # pydantic-core's parser: a tenth of json.loads on a small document
    except ValueError:
        return json.loads(value)  # what it refuses and the standard library reads (lone surrogates)


def _plain_init(cls: type) -> bool:
    """Whether a frozen dataclass's instances may be built by filling ``__dict__`` (no slots, no
    ``__post_init__``): equal to its ``__init__``, whose 15 ``object.__setattr__`` calls cost 10 us."""
    return dataclasses.is_dataclass(cls) and "__dict__" in dir(cls) and not hasattr(cls, "__post_init__")


_FIELDS: dict[type, int] = {
    c: len(dataclasses.fields(c)) for c in (RunRecord, TaskRunRecord, AttemptRecord) if _plain_init(c)
}


def _make(cls: type[_R], values: dict[str, Any]) -> _R:
    if _FIELDS.get(cls) != len(values):  # every field given, or the dataclass's own __init__
        return cls(**values)
    record: _R = object.__new__(cls)
    record.__dict__.update(values)
    return record


def _run(row: tuple[Any, ...], tasks: list[TaskRunRecord]) -> RunRecord:
    (id_, pipeline, version, state, executor, params, logical_date, created_at, started_at, ended_at,
     error, external_id, owner, lease_expires_at, trigger) = row
    return _make(RunRecord, {
        "id": id_, "pipeline": pipeline, "pipeline_version": version,
        "state": _RUN_STATES.get(state) or RunState(state), "executor": executor, "params": _json(params),
        "logical_date": _ts(logical_date), "created_at": _ts(created_at),
        # most runs listed have not started or ended: no call for a NULL
        "started_at": None if started_at is None else _ts(started_at),
        "ended_at": None if ended_at is None else _ts(ended_at),
        "error": error, "external_id": external_id, "owner": owner,
        "lease_expires_at": None if lease_expires_at is None else _ts(lease_expires_at), "trigger": trigger,
        "tasks": tasks})


def list_runs(db: sqlite3.Connection, *, pipeline: str | None, state: RunState | None, limit: int,
              before: str | None) -> list[RunRecord]:
    """``SqlMetadataStore.list_runs`` on the bare sqlite3 connection, inside the caller's transaction."""
    params: dict[str, Any] = {"limit": limit}
    if pipeline is not None:
        params["pipeline"] = pipeline
    if state is not None:
        params["state"] = RunState(state).value
    if before is not None:
        found = db.execute(_CURSOR_SQL, {"before": before}).fetchone()
        if found is None or found[0] is None:
            raise RunNotFound(f"no run {before!r} in the metadata store (the 'before' cursor)")
        params["cursor_at"] = found[0]
        params["before"] = before
    sql = _list_sql(pipeline is not None, state is not None, before is not None)
    rows = db.execute(sql, params).fetchall()
    return [_run(r, []) for r in rows]


def get_run(db: sqlite3.Connection, run_id: str) -> RunRecord | None:
    """``SqlMetadataStore.get_run`` on the bare sqlite3 connection, inside the caller's transaction."""
    head = db.execute(_RUN_SQL, {"run_id": run_id}).fetchone()
    if head is None:
        return None
    by_task: dict[str, list[AttemptRecord]] = {}
    for _run_id, task_id, number, state, started, ended, etype, emsg, log in db.execute(
            _ATTEMPTS_SQL, {"run_id": run_id}):
        by_task.setdefault(task_id, []).append(_make(AttemptRecord, {
            "number": number, "state": _ATTEMPT_STATES.get(state) or AttemptState(state),
            "started_at": _ts(started), "ended_at": _ts(ended), "error_type": etype, "error_message": emsg,
            "log": _json(log)}))
    tasks = [
        _make(TaskRunRecord, {
            "task_id": task_id, "state": _TASK_STATES.get(state) or TaskState(state),
            "started_at": _ts(started), "ended_at": _ts(ended), "error_type": etype, "error_message": emsg,
            "result": _json(result),
            "attempts": by_task.get(task_id, [])})
        for _run_id, task_id, _position, state, started, ended, etype, emsg, result in db.execute(
            _TASKS_SQL, {"run_id": run_id})
    ]
    return _run(head, tasks)
