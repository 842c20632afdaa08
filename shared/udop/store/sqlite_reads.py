"""The SQLite read path: a page of runs and one run with its tasks (what an API serves most), and the
other reads of a ``udop run`` (its pipeline's versions, checks, lineage, a run row an UPDATE returned).

Through SQLAlchemy a ``list_runs`` page of 51 rows cost about five times what sqlite3 takes to fetch
it: per-statement compilation-cache work, then a result processor per value (timestamps parsed by a
regular expression, JSON decoded, UTC attached). Here the same Core statements, compiled once, go
straight to the driver, and the values are converted as ``UTCDateTime`` and ``JSONType`` convert them:
naive UTC text to an aware UTC ``datetime`` (``datetime.fromisoformat``, in C), JSON text to Python.
The SQL text is ``udop.store.sqlite_sql``'s (compiled from the Core statements; no SQLAlchemy here).
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

from udop.errors import RunNotFound
from udop.states import AttemptState, RunState, TaskState
from udop.store.api import (
    AttemptRecord,
    CheckRecord,
    LineageRecord,
    PipelineRecord,
    PipelineVersionRecord,
    RunRecord,
    TaskRunRecord,
)
from udop.store.sqlite_sql import SQL

__all__ = ["get_checks", "get_lineage", "get_pipeline", "get_run", "list_runs", "pipeline_version",
           "run_record"]


@cache
def _list_sql(pipeline: bool, state: bool, before: bool) -> str:
    name = "LIST_RUNS" + "_PIPELINE" * pipeline + "_STATE" * state + "_BEFORE" * before
    return SQL[name][0] + " LIMIT :limit"  # SQLAlchemy's SQLite LIMIT comes with an OFFSET to bind too


_CURSOR_SQL = SQL["CURSOR"][0]
_RUN_SQL = SQL["RUN"][0]
_TASKS_SQL = SQL["TASKS"][0]
_ATTEMPTS_SQL = SQL["ATTEMPTS"][0]
_PIPELINE_SQL = SQL["PIPELINE"][0]
_VERSIONS_SQL = SQL["VERSIONS"][0]
_LINEAGE_SQL = SQL["LINEAGE"][0]
_CHECKS_SQL = SQL["CHECKS"][0]

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


def run_record(row: tuple[Any, ...]) -> RunRecord:
    """A ``runs`` row (all its columns, in table order: ``SELECT`` or ``RETURNING``) as a record."""
    return _run(row, [])


def pipeline_version(row: tuple[Any, ...]) -> PipelineVersionRecord:
    """A ``pipeline_versions`` row (all its columns, in table order) as a record."""
    pipeline, version, content_hash, definition, state_machine_arn, created_at = row
    return PipelineVersionRecord(pipeline=pipeline, version=version, content_hash=content_hash,
                                 definition=_json(definition), created_at=_ts(created_at),  # type: ignore[arg-type]
                                 state_machine_arn=state_machine_arn)


def get_pipeline(db: sqlite3.Connection, name: str) -> PipelineRecord | None:
    """``SqlMetadataStore.get_pipeline`` on the bare sqlite3 connection, inside the caller's transaction."""
    head = db.execute(_PIPELINE_SQL, {"name": name}).fetchone()
    if head is None:
        return None
    name_, created_at = head
    versions = [pipeline_version(r) for r in db.execute(_VERSIONS_SQL, {"name": name})]
    return PipelineRecord(name=name_, created_at=_ts(created_at), versions=versions)  # type: ignore[arg-type]


def get_lineage(db: sqlite3.Connection, run_id: str) -> list[LineageRecord]:
    """``SqlMetadataStore.get_lineage`` on the bare sqlite3 connection, inside the caller's transaction."""
    return [LineageRecord(task_id=task_id, inputs=list(_json(inputs)), output_uri=output_uri, rows=rows,
                          bytes=bytes_, schema_fingerprint=fingerprint,
                          recorded_at=_ts(recorded_at))  # type: ignore[arg-type]
            for _id, _run_id, task_id, inputs, output_uri, rows, bytes_, fingerprint, recorded_at
            in db.execute(_LINEAGE_SQL, {"r": run_id})]


def get_checks(db: sqlite3.Connection, run_id: str) -> list[CheckRecord]:
    """``SqlMetadataStore.get_checks`` on the bare sqlite3 connection, inside the caller's transaction."""
    return [CheckRecord(task_id=task_id, rule=rule, severity=severity, passed=bool(passed),
                        failing_rows=failing_rows, sample=list(_json(sample)), message=message)
            for _id, _run_id, task_id, rule, severity, passed, failing_rows, sample, message
            in db.execute(_CHECKS_SQL, {"r": run_id})]
