"""``SqlMetadataStore``: the ``MetadataStore`` protocol on SQLite or PostgreSQL (SQLAlchemy Core).

Every method is one transaction. A state change is one ``UPDATE ... WHERE state IN (<legal
predecessors>)`` whose row count says whether the move was legal; the predecessor sets are derived
from ``udop.states.check_transition``, so the lifecycle rules live in one place. Only when the row
count is short does the store read the current state to say what was wrong (and roll back).
On PostgreSQL the UPDATE takes the row lock and re-checks its WHERE after a concurrent writer
commits; on SQLite write transactions begin with ``BEGIN IMMEDIATE``; either way two writers
cannot make an illegal move.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError

from udop.errors import RunLimitReached, RunNotFound, StoreError, TransitionError
from udop.lineage.masking import masked_uri, masked_uris  # lineage rows are stored as a user may see them
from udop.states import AttemptState, RunState, TaskState, check_transition, is_terminal
from udop.store import sqlite_reads
from udop.store.api import (
    AttemptRecord,
    CheckRecord,
    LineageEdge,
    LineageRecord,
    PipelineRecord,
    PipelineVersionRecord,
    RunRecord,
    RunSlot,
    TaskRunRecord,
)
from udop.store.engine import (
    canonical_json,
    is_memory,
    json_dumps,
    mask_url,
    sqlite_timestamp,
    transaction,
)
from udop.store.tables import attempts, check_results, lineage, pipeline_versions, pipelines, runs, task_runs

__all__ = ["SqlMetadataStore", "canonical_json", "content_hash", "predecessors"]

S = TypeVar("S", RunState, TaskState, AttemptState)


def content_hash(definition: Any) -> str:
    """sha256 (hex) of the canonical JSON of a pipeline definition."""
    return hashlib.sha256(canonical_json(definition).encode("utf-8")).hexdigest()


def _in_states(column: Any, states: Iterable[str]) -> Any:
    """``column IN ('a', 'b')`` with literals: our own constants, and no per-call list expansion."""
    return column.in_([literal_column(f"'{s}'") for s in states])


def predecessors(target: S) -> tuple[str, ...]:
    """The states from which ``udop.states.check_transition`` allows a move to ``target``."""
    # The cache is keyed by the enum type too: RunState.RUNNING == TaskState.RUNNING == "running".
    return _predecessors(type(target), target.value)


@cache
def _predecessors(kind: type, value: str) -> tuple[str, ...]:
    target = kind(value)
    legal = []
    for state in type(target):
        try:
            check_transition(state, target)
        except TransitionError:
            continue
        legal.append(state.value)
    return tuple(legal)


def _now() -> datetime:
    return datetime.now(UTC)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


# --- statements built once; SQLAlchemy caches their compiled form per dialect -----------------------

_TASK_KEY = and_(task_runs.c.run_id == bindparam("r"), task_runs.c.task_id == bindparam("t"))
_ATTEMPT_KEY = and_(attempts.c.run_id == bindparam("r"), attempts.c.task_id == bindparam("t"),
                    attempts.c.number == bindparam("n"))

_START_TASK = (
    update(task_runs)
    .where(_TASK_KEY, _in_states(task_runs.c.state, predecessors(TaskState.RUNNING)))
    .values(state=TaskState.RUNNING.value, started_at=func.coalesce(task_runs.c.started_at, bindparam("now")))
)
_INSERT_ATTEMPT = insert(attempts).values(
    run_id=bindparam("r"), task_id=bindparam("t"), number=bindparam("n"),
    state=AttemptState.RUNNING.value, started_at=bindparam("now"))


@cache
def _finish_attempt_stmt(state: AttemptState) -> Any:
    return (update(attempts)
            .where(_ATTEMPT_KEY, _in_states(attempts.c.state, predecessors(state)))
            .values(state=state.value, ended_at=bindparam("now"), error_type=bindparam("etype"),
                    error_message=bindparam("emsg"),
                    log=func.coalesce(bindparam("log", type_=attempts.c.log.type), attempts.c.log)))


@cache
def _finish_task_stmt(state: TaskState) -> Any:
    return (update(task_runs)
            .where(_TASK_KEY, _in_states(task_runs.c.state, predecessors(state)))
            .values(state=state.value, ended_at=bindparam("ended"), error_type=bindparam("etype"),
                    error_message=bindparam("emsg"),
                    result=bindparam("result", type_=task_runs.c.result.type)))


_INSERT_LINEAGE = insert(lineage)
_INSERT_CHECK = insert(check_results)


# --- the SQLite hot path ------------------------------------------------------------------------------
# start_attempt and finish_attempt run once per task attempt. On SQLite, where a statement costs the
# database a few microseconds, SQLAlchemy's per-execution work (about 35 us a statement) would be most
# of the cost, so there the same Core statements, compiled once here, go straight to the driver
# with values converted as SQLAlchemy would (UTC text timestamps, JSON text).


class _Compiled:
    """A Core statement compiled once for sqlite3 with named parameters, plus its fixed values."""

    __slots__ = ("defaults", "sql")

    _DIALECT = SQLiteDialect_pysqlite(paramstyle="named")

    def __init__(self, stmt: Any) -> None:
        compiled = stmt.compile(dialect=self._DIALECT)
        self.sql: str = compiled.string
        self.defaults: dict[str, Any] = dict(compiled.params)

    def __call__(self, **values: Any) -> dict[str, Any]:
        return {**self.defaults, **values}


_SQLITE_START_TASK = _Compiled(_START_TASK)
_SQLITE_INSERT_ATTEMPT = _Compiled(_INSERT_ATTEMPT)
_SQLITE_INSERT_LINEAGE = _Compiled(insert(lineage).values(
    {c: bindparam(c) for c in ("run_id", "task_id", "inputs", "output_uri", "rows", "bytes",
                               "schema_fingerprint", "recorded_at")}))
_SQLITE_INSERT_CHECK = _Compiled(insert(check_results).values(
    {c: bindparam(c) for c in ("run_id", "task_id", "rule", "severity", "passed", "failing_rows", "sample",
                               "message")}))


@cache
def _sqlite_finish_attempt(state: AttemptState) -> _Compiled:
    return _Compiled(_finish_attempt_stmt(state))


@cache
def _sqlite_finish_task(state: TaskState) -> _Compiled:
    return _Compiled(_finish_task_stmt(state))


class _Refused(Exception):
    """The guarded UPDATE matched no row; raised inside the transaction so that it rolls back."""


class SqlMetadataStore:
    """The metadata store on an SQLAlchemy engine (build it with ``udop.store.open_store``)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._where = mask_url(engine.url)
        # a :memory: SQLite database is one shared connection: one transaction at a time
        self._lock: AbstractContextManager[Any] = (
            threading.RLock() if is_memory(engine.url) else nullcontext())
        self._sqlite = engine.dialect.name == "sqlite"
        if self._postgres:  # imported only here: the PostgreSQL dialect costs ~50 ms to import
            from sqlalchemy.dialects.postgresql import insert as postgresql_insert

            self._insert_pipeline: Any = postgresql_insert(pipelines).on_conflict_do_nothing(
                index_elements=["name"])
        else:
            self._insert_pipeline = sqlite_insert(pipelines).on_conflict_do_nothing(index_elements=["name"])

    @property
    def engine(self) -> Engine:
        return self._engine

    def __repr__(self) -> str:
        return f"SqlMetadataStore({self._where!r})"

    # --- transactions ------------------------------------------------------------------------------

    @contextmanager
    def _tx(self, write: bool) -> Iterator[Connection]:
        with self._lock:
            try:
                with transaction(self._engine, write=write) as conn:
                    yield conn
            except IntegrityError:
                raise
            except DBAPIError as exc:
                raise StoreError(f"metadata database {self._where}: {_first_line(exc)}") from None
            except StatementError as exc:  # raised while binding, e.g. by the JSON serializer
                raise StoreError(f"metadata database {self._where}: a value cannot be stored: "
                                 f"{_first_line(exc)}") from None

    def _read(self) -> AbstractContextManager[Connection]:
        return self._tx(False)

    def _write(self) -> AbstractContextManager[Connection]:
        return self._tx(True)

    @contextmanager
    def _sqlite_write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on the bare sqlite3 connection (see "the SQLite hot path")."""
        with self._lock:
            pooled = self._engine.raw_connection()
            try:
                db: sqlite3.Connection = pooled.driver_connection  # type: ignore[assignment]
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    if db.in_transaction:
                        db.rollback()
                    raise
                db.commit()
            except (sqlite3.IntegrityError, _Refused):
                raise
            except sqlite3.Error as exc:
                raise StoreError(f"metadata database {self._where}: {exc}") from None
            finally:
                pooled.close()

    @contextmanager
    def _sqlite_read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction on the bare sqlite3 connection (see ``udop.store.sqlite_reads``)."""
        with self._lock:
            pooled = self._engine.raw_connection()
            try:
                db: sqlite3.Connection = pooled.driver_connection  # type: ignore[assignment]
                db.execute("BEGIN")
                try:
                    yield db
                finally:
                    if db.in_transaction:
                        db.commit()  # a read: nothing to keep or undo
            except sqlite3.Error as exc:
                raise StoreError(f"metadata database {self._where}: {exc}") from None
            finally:
                pooled.close()

    # --- pipelines ---------------------------------------------------------------------------------

    def register_pipeline(self, name: str, definition: dict[str, Any],
                          state_machine_arn: str | None = None) -> PipelineVersionRecord:
        """Record ``definition`` as the pipeline's next version, unless it equals the latest one.

        Same content as the latest version: that version is returned (its ``state_machine_arn`` is
        updated when one is given). Different: a new version ``latest + 1``, even if an older
        version had this content, so that ``latest`` is always what was registered last.
        """
        try:
            digest = content_hash(definition)
            stored = json.loads(json_dumps(definition))  # what get_pipeline will return
        except (TypeError, ValueError) as exc:
            raise StoreError(f"pipeline {name!r}: the definition cannot be stored as JSON: {exc}") from None
        now = _now()
        with self._write() as conn:
            conn.execute(self._insert_pipeline, {"name": name, "created_at": now})
            # serialise registrations of one pipeline (PostgreSQL; SQLite already holds the write lock)
            conn.execute(select(pipelines.c.name).where(pipelines.c.name == name).with_for_update())
            latest = conn.execute(
                select(pipeline_versions).where(pipeline_versions.c.pipeline == name)
                .order_by(pipeline_versions.c.version.desc()).limit(1)).first()
            if latest is not None and latest.content_hash == digest:
                if state_machine_arn is not None and state_machine_arn != latest.state_machine_arn:
                    conn.execute(update(pipeline_versions)
                                 .where(pipeline_versions.c.pipeline == name,
                                        pipeline_versions.c.version == latest.version)
                                 .values(state_machine_arn=state_machine_arn))
                    return _version(latest, state_machine_arn=state_machine_arn)
                return _version(latest)
            version = 1 if latest is None else latest.version + 1
            values = {"pipeline": name, "version": version, "content_hash": digest,
                      "definition": definition, "state_machine_arn": state_machine_arn, "created_at": now}
            conn.execute(insert(pipeline_versions), values)
        return PipelineVersionRecord(pipeline=name, version=version, content_hash=digest,
                                     definition=stored, created_at=now,
                                     state_machine_arn=state_machine_arn)

    def get_pipeline(self, name: str) -> PipelineRecord | None:
        with self._read() as conn:
            head = conn.execute(select(pipelines).where(pipelines.c.name == name)).first()
            if head is None:
                return None
            versions = conn.execute(select(pipeline_versions).where(pipeline_versions.c.pipeline == name)
                                    .order_by(pipeline_versions.c.version)).all()
        return PipelineRecord(name=head.name, created_at=head.created_at,
                              versions=[_version(v) for v in versions])

    def list_pipelines(self) -> list[PipelineRecord]:
        with self._read() as conn:
            heads = conn.execute(select(pipelines).order_by(pipelines.c.name)).all()
            versions = conn.execute(
                select(pipeline_versions)
                .order_by(pipeline_versions.c.pipeline, pipeline_versions.c.version)).all()
        by_name: dict[str, list[PipelineVersionRecord]] = {h.name: [] for h in heads}
        for v in versions:
            by_name.setdefault(v.pipeline, []).append(_version(v))
        return [PipelineRecord(name=h.name, created_at=h.created_at, versions=by_name[h.name]) for h in heads]

    def delete_pipeline(self, name: str) -> bool:
        """Delete the pipeline, its versions and all its runs (with their tasks, lineage and checks)."""
        with self._write() as conn:
            return bool(conn.execute(delete(pipelines).where(pipelines.c.name == name)).rowcount)

    # --- runs --------------------------------------------------------------------------------------

    def create_run(self, *, run_id: str, pipeline: str, pipeline_version: int, task_ids: list[str],
                   params: dict[str, Any], logical_date: datetime, executor: str = "local",
                   external_id: str | None = None, slot: RunSlot | None = None,
                   trigger: str | None = None) -> RunRecord:
        """Record a new run, pending; with ``slot``, running under its owner and lease instead, in
        the same transaction that checks ``slot.max_active`` (``RunLimitReached`` if it is full).
        ``trigger``: how it was started (``RUN_TRIGGERS``)."""
        now = _now()
        state = RunState.PENDING if slot is None else RunState.RUNNING
        owner = slot.owner if slot is not None else None
        started = now if slot is not None else None
        lease = now + timedelta(seconds=slot.lease_seconds) if slot is not None else None
        row = {"id": run_id, "pipeline": pipeline, "pipeline_version": pipeline_version,
               "state": state.value, "executor": executor, "params": params,
               "logical_date": logical_date, "created_at": now, "external_id": external_id,
               "owner": owner, "started_at": started, "lease_expires_at": lease, "trigger": trigger}
        try:
            stored_params = json.loads(json_dumps(params))  # what get_run will return
        except (TypeError, ValueError) as exc:
            raise StoreError(f"run {run_id!r}: its parameters cannot be stored as JSON: {exc}") from None
        try:
            with self._write() as conn:
                if slot is not None:
                    self._claim_slot(conn, pipeline, run_id, slot, now)
                conn.execute(insert(runs), row)
                if task_ids:
                    conn.execute(insert(task_runs), [
                        {"run_id": run_id, "task_id": t, "position": i, "state": TaskState.PENDING.value}
                        for i, t in enumerate(task_ids)])
        except IntegrityError:
            raise self._explain_create_failure(run_id, pipeline, pipeline_version, task_ids,
                                               external_id) from None
        stored_date = logical_date if logical_date.tzinfo else logical_date.replace(tzinfo=UTC)
        return RunRecord(id=run_id, pipeline=pipeline, pipeline_version=pipeline_version,
                         state=state, executor=executor, params=stored_params,
                         logical_date=stored_date.astimezone(UTC), created_at=now, external_id=external_id,
                         started_at=started, owner=owner, lease_expires_at=lease, trigger=trigger,
                         tasks=[TaskRunRecord(task_id=t, state=TaskState.PENDING) for t in task_ids])

    def _explain_create_failure(self, run_id: str, pipeline: str, version: int, task_ids: list[str],
                                external_id: str | None) -> StoreError:
        with self._read() as conn:
            if conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first():
                return StoreError(f"run {run_id!r} already exists in the metadata store")
            if external_id is not None and (other := conn.execute(
                    select(runs.c.id).where(runs.c.external_id == external_id)).scalar()):
                return StoreError(
                    f"run {run_id!r}: external id {external_id!r} already belongs to run {other!r}")
            known = conn.execute(select(pipeline_versions.c.version).where(
                pipeline_versions.c.pipeline == pipeline, pipeline_versions.c.version == version)).first()
            if not known:
                return StoreError(f"run {run_id!r}: pipeline {pipeline!r} has no version {version} in the "
                                  "metadata store; register the pipeline first")
        dupes = sorted({t for t in task_ids if task_ids.count(t) > 1})
        if dupes:
            return StoreError(f"run {run_id!r}: task ids repeated: {', '.join(dupes)}")
        return StoreError(f"run {run_id!r} could not be created (a constraint of the metadata store failed)")

    def _claim_slot(self, conn: Connection, pipeline: str, run_id: str, slot: RunSlot,
                    now: datetime) -> None:
        """Refuse (``RunLimitReached``) when ``slot.max_active`` other runs of the pipeline are live.

        Called inside the write transaction that then starts the run: on PostgreSQL the pipeline's
        row is locked first, so two starters of one pipeline check one after the other; SQLite's
        write transaction already holds the database's write lock.
        """
        if slot.max_active is None:
            return
        conn.execute(select(pipelines.c.name).where(pipelines.c.name == pipeline).with_for_update())
        rows = conn.execute(
            select(runs.c.id, runs.c.owner, runs.c.lease_expires_at)
            .where(runs.c.pipeline == pipeline, runs.c.state == RunState.RUNNING.value,
                   runs.c.id != run_id, runs.c.lease_expires_at > now)
            .order_by(runs.c.created_at, runs.c.id)).all()
        live = [r for r in rows if slot.alive(r.owner)]
        if len(live) >= slot.max_active:
            first = live[0]
            where = f" in process {first.owner}" if first.owner else ""
            others = f" (and {len(live) - 1} more)" if len(live) > 1 else ""
            raise RunLimitReached(
                f"pipeline {pipeline!r} already has {len(live)} active run(s), its max_active_runs is "
                f"{slot.max_active}: run {first.id!r} is running{where}{others}; wait for it "
                "(udop run --wait) or stop it")

    def renew_lease(self, run_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend the lease of a running run that ``owner`` holds; False if it holds it no longer."""
        now = _now()
        with self._write() as conn:
            return bool(conn.execute(
                update(runs).where(runs.c.id == run_id, runs.c.owner == owner,
                                   runs.c.state == RunState.RUNNING.value)
                .values(lease_expires_at=now + timedelta(seconds=lease_seconds))).rowcount)

    def get_run(self, run_id: str) -> RunRecord | None:
        if self._sqlite:
            with self._sqlite_read() as db:
                return sqlite_reads.get_run(db, run_id)
        with self._read() as conn:
            return self._load_run(conn, select(runs).where(runs.c.id == run_id))

    def attempt_state(self, run_id: str, task_id: str, number: int) -> AttemptState | None:
        """The state of one attempt (None if it was never started): what a Celery worker checks before
        it runs a delivered attempt, which may have been ended meanwhile (timed out, cancelled, resumed)."""
        with self._read() as conn:
            state = conn.execute(select(attempts.c.state).where(
                attempts.c.run_id == run_id, attempts.c.task_id == task_id,
                attempts.c.number == number)).scalar()
        return None if state is None else AttemptState(state)

    @property
    def dialect(self) -> str:
        """The database's SQLAlchemy dialect name (``sqlite``, ``postgresql``)."""
        return str(self._engine.dialect.name)

    def find_run_by_external_id(self, external_id: str) -> RunRecord | None:
        """The run started as ``external_id`` (an execution ARN), with its tasks like ``get_run``."""
        with self._read() as conn:
            return self._load_run(conn, select(runs).where(runs.c.external_id == external_id))

    def _load_run(self, conn: Connection, stmt: Any) -> RunRecord | None:
        head = conn.execute(stmt).first()
        if head is None:
            return None
        task_rows = conn.execute(select(task_runs).where(task_runs.c.run_id == head.id)
                                 .order_by(task_runs.c.position)).all()
        attempt_rows = conn.execute(select(attempts).where(attempts.c.run_id == head.id)
                                    .order_by(attempts.c.task_id, attempts.c.number)).all()
        by_task: dict[str, list[AttemptRecord]] = {}
        for a in attempt_rows:
            by_task.setdefault(a.task_id, []).append(AttemptRecord(
                number=a.number, state=AttemptState(a.state), started_at=a.started_at, ended_at=a.ended_at,
                error_type=a.error_type, error_message=a.error_message, log=a.log))
        tasks = [TaskRunRecord(task_id=t.task_id, state=TaskState(t.state), started_at=t.started_at,
                               ended_at=t.ended_at, error_type=t.error_type, error_message=t.error_message,
                               result=t.result, attempts=by_task.get(t.task_id, []))
                 for t in task_rows]
        return _run(head, tasks)

    def list_runs(self, *, pipeline: str | None = None, state: RunState | None = None, limit: int = 50,
                  before: str | None = None, logical_date: datetime | None = None,
                  trigger: str | None = None) -> list[RunRecord]:
        """Runs newest first; ``before`` is the id of a run: only runs created before it are listed.
        ``logical_date``: only runs of that logical date (the one a schedule or backfill gave them);
        ``trigger``: only runs started that way."""
        if limit <= 0:
            return []
        # the hot read (GET /runs); a date or trigger filter is rarer
        if self._sqlite and logical_date is None and trigger is None:
            with self._sqlite_read() as db:
                return sqlite_reads.list_runs(db, pipeline=pipeline, state=state, limit=limit, before=before)
        stmt = select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)
        if logical_date is not None:
            stmt = stmt.where(runs.c.logical_date == logical_date)
        if trigger is not None:
            stmt = stmt.where(runs.c.trigger == trigger)
        if pipeline is not None:
            stmt = stmt.where(runs.c.pipeline == pipeline)
        if state is not None:
            stmt = stmt.where(runs.c.state == RunState(state).value)
        with self._read() as conn:
            if before is not None:
                cursor = conn.execute(select(runs.c.created_at).where(runs.c.id == before)).scalar()
                if cursor is None:
                    raise RunNotFound(f"no run {before!r} in the metadata store (the 'before' cursor)")
                stmt = stmt.where(or_(runs.c.created_at < cursor,
                                      and_(runs.c.created_at == cursor, runs.c.id < before)))
            rows = conn.execute(stmt).all()
        return [_run(r) for r in rows]

    def set_run_state(self, run_id: str, state: RunState, *, error: str | None = None,
                      owner: str | None = None) -> RunRecord:
        """Move the run to ``state``; ``error`` replaces the run's error (None clears it).

        ``started_at`` is set on the first move to running, ``ended_at`` on a terminal state (and
        cleared when a run is resumed); ``owner`` is recorded when given.
        """
        state = RunState(state)
        now = _now()
        values: dict[str, Any] = {"state": state.value, "error": error,
                                  "ended_at": now if is_terminal(state) else None}
        if is_terminal(state):
            values["lease_expires_at"] = None
        if state is RunState.RUNNING:
            values["started_at"] = func.coalesce(runs.c.started_at, now)
        if owner is not None:
            values["owner"] = owner
        stmt = (update(runs).where(runs.c.id == run_id, runs.c.state.in_(predecessors(state)))
                .values(**values).returning(*runs.c))
        with self._write() as conn:
            row = conn.execute(stmt).first()
            if row is None:
                current = conn.execute(select(runs.c.state).where(runs.c.id == run_id)).scalar()
                if current is None:
                    raise RunNotFound(f"no run {run_id!r} in the metadata store")
                raise _transition_error(f"run {run_id!r}", current, state)
        return _run(row)

    # --- tasks and attempts ------------------------------------------------------------------------

    def start_attempt(self, run_id: str, task_id: str, number: int) -> None:
        """Attempt ``number`` of the task starts: the task moves to running (pending/retrying before)."""
        if self._sqlite:
            self._sqlite_start_attempt(run_id, task_id, number)
            return
        params = _start_params(run_id, task_id, number, _now())
        try:
            with self._write() as conn:
                if conn.execute(_START_TASK, params).rowcount != 1:
                    self._raise_task_problem(conn, run_id, task_id, TaskState.RUNNING)
                conn.execute(_INSERT_ATTEMPT, params)
        except IntegrityError:
            raise TransitionError(f"run {run_id!r} task {task_id!r}: attempt {number} was already started") \
                from None

    def _sqlite_start_attempt(self, run_id: str, task_id: str, number: int) -> None:
        params = _start_params(run_id, task_id, number, sqlite_timestamp(_now()))
        try:
            with self._sqlite_write() as db:
                if db.execute(_SQLITE_START_TASK.sql, _SQLITE_START_TASK(**params)).rowcount != 1:
                    raise _Refused
                db.execute(_SQLITE_INSERT_ATTEMPT.sql, _SQLITE_INSERT_ATTEMPT(**params))
        except _Refused:
            with self._read() as conn:
                self._raise_task_problem(conn, run_id, task_id, TaskState.RUNNING)
        except sqlite3.IntegrityError:
            raise TransitionError(f"run {run_id!r} task {task_id!r}: attempt {number} was already started") \
                from None

    def finish_attempt(self, run_id: str, task_id: str, number: int, *, attempt_state: AttemptState,
                       task_state: TaskState, error_type: str | None = None,
                       error_message: str | None = None, result: dict[str, Any] | None = None,
                       log: dict[str, Any] | None = None) -> None:
        """End an attempt and move its task, in one transaction.

        The task run keeps ``result`` and (unless it succeeded) the error. A result with an
        ``output`` manifest adds a lineage row; each item of ``result["checks"]`` a check row.
        ``log`` says where the attempt's log lines are (kept on the attempt; None keeps what is there).
        """
        attempt_state = AttemptState(attempt_state)
        task_state = TaskState(task_state)
        if self._sqlite:
            self._sqlite_finish_attempt(run_id, task_id, number, attempt_state, task_state,
                                        error_type=error_type, error_message=error_message, result=result,
                                        log=log)
            return
        try:
            json_dumps(result)  # psycopg would raise a bare TypeError mid-transaction
        except (TypeError, ValueError) as exc:
            raise StoreError(f"run {run_id!r} task {task_id!r}: the result cannot be stored as JSON: {exc}") \
                from None
        params, task_params, lineage_row, check_rows = _finish_rows(
            run_id, task_id, number, _now(), task_state, error_type=error_type, error_message=error_message,
            result=result, log=log)
        with self._write() as conn:
            if conn.execute(_finish_attempt_stmt(attempt_state), params).rowcount != 1:
                self._raise_attempt_problem(conn, run_id, task_id, number, attempt_state)
            if conn.execute(_finish_task_stmt(task_state), task_params).rowcount != 1:
                self._raise_task_problem(conn, run_id, task_id, task_state)
            if lineage_row is not None:
                conn.execute(_INSERT_LINEAGE, lineage_row)
            if check_rows:
                conn.execute(_INSERT_CHECK, check_rows)

    def _sqlite_finish_attempt(self, run_id: str, task_id: str, number: int, attempt_state: AttemptState,
                               task_state: TaskState, *, error_type: str | None, error_message: str | None,
                               result: dict[str, Any] | None, log: dict[str, Any] | None = None) -> None:
        params, task_params, lineage_row, check_rows = _finish_rows(
            run_id, task_id, number, sqlite_timestamp(_now()), task_state, error_type=error_type,
            error_message=error_message, result=result, log=log)
        try:
            params["log"] = None if log is None else json_dumps(log)
            task_params["result"] = None if result is None else json_dumps(result)
            if lineage_row is not None:
                lineage_row = _SQLITE_INSERT_LINEAGE(**_sqlite_json(lineage_row))
            check_rows = [_SQLITE_INSERT_CHECK(**_sqlite_json(row)) for row in check_rows]
        except (TypeError, ValueError) as exc:
            raise StoreError(f"run {run_id!r} task {task_id!r}: the result cannot be stored as JSON: {exc}") \
                from None
        attempt_stmt = _sqlite_finish_attempt(attempt_state)
        task_stmt = _sqlite_finish_task(task_state)
        try:
            with self._sqlite_write() as db:
                if db.execute(attempt_stmt.sql, attempt_stmt(**params)).rowcount != 1:
                    raise _Refused("attempt")
                if db.execute(task_stmt.sql, task_stmt(**task_params)).rowcount != 1:
                    raise _Refused("task")
                if lineage_row is not None:
                    db.execute(_SQLITE_INSERT_LINEAGE.sql, lineage_row)
                if check_rows:
                    db.executemany(_SQLITE_INSERT_CHECK.sql, check_rows)
        except _Refused as refused:
            with self._read() as conn:
                if refused.args == ("attempt",):
                    self._raise_attempt_problem(conn, run_id, task_id, number, attempt_state)
                self._raise_task_problem(conn, run_id, task_id, task_state)

    def set_task_states(self, run_id: str, task_ids: list[str], state: TaskState,
                        *, error_message: str | None = None) -> None:
        """Move several tasks to ``state`` at once (e.g. upstream_failed, cancelled); all or none."""
        state = TaskState(state)
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return
        now = _now()
        values: dict[str, Any] = {"state": state.value}
        if state is TaskState.PENDING:
            values.update(started_at=None, ended_at=None, error_type=None, error_message=error_message,
                          result=None)
        else:
            values["ended_at"] = now if is_terminal(state) else None
            if state is TaskState.RUNNING:
                values["started_at"] = func.coalesce(task_runs.c.started_at, now)
            if error_message is not None:
                values["error_message"] = error_message
        stmt = (update(task_runs)
                .where(task_runs.c.run_id == run_id, task_runs.c.task_id.in_(ids),
                       task_runs.c.state.in_(predecessors(state)))
                .values(**values))
        with self._write() as conn:
            # read (and on PostgreSQL lock) the current states first, so a refusal names the right task
            found = dict(conn.execute(
                select(task_runs.c.task_id, task_runs.c.state)
                .where(task_runs.c.run_id == run_id, task_runs.c.task_id.in_(ids))
                .order_by(task_runs.c.task_id).with_for_update()).all())  # one lock order: no deadlocks
            for task_id in ids:
                if task_id not in found:
                    self._raise_missing(conn, run_id, task_id)
                if found[task_id] not in predecessors(state):
                    raise _transition_error(f"run {run_id!r} task {task_id!r}", found[task_id], state)
            if conn.execute(stmt).rowcount != len(ids):  # cannot happen with the rows locked; be sure
                raise TransitionError(f"run {run_id!r}: tasks changed concurrently while moving to "
                                      f"{state.value}; try again")

    def reset_for_resume(self, run_id: str, *, slot: RunSlot | None = None,
                         pipeline_version: int | None = None) -> list[str]:
        """Make a failed, cancelled or dead run resumable, in one transaction.

        Attempts still running become abandoned; every task that did not succeed goes back to
        pending (its error, result, lineage and checks are cleared); the run moves to running.
        With ``slot`` the run is taken over by its owner and lease, after the ``max_active`` check
        (``RunLimitReached``); with ``pipeline_version`` it goes on under that version.
        Returns the ids of the tasks now pending (all that will run again), in task order.
        """
        now = _now()
        with self._write() as conn:
            head = conn.execute(select(runs.c.state, runs.c.pipeline)
                                .where(runs.c.id == run_id).with_for_update()).first()
            if head is None:
                raise RunNotFound(f"no run {run_id!r} in the metadata store")
            current = head.state
            if current not in predecessors(RunState.RUNNING):
                raise _transition_error(f"run {run_id!r}", current, RunState.RUNNING)
            if slot is not None:
                self._claim_slot(conn, head.pipeline, run_id, slot, now)
            rows = conn.execute(select(task_runs.c.task_id, task_runs.c.state)
                                .where(task_runs.c.run_id == run_id,
                                       task_runs.c.state != TaskState.SUCCEEDED.value)
                                .order_by(task_runs.c.position).with_for_update()).all()
            movable = predecessors(TaskState.PENDING)
            for task_id, state in rows:
                if state != TaskState.PENDING.value and state not in movable:
                    raise _transition_error(f"run {run_id!r} task {task_id!r}", state, TaskState.PENDING)
            conn.execute(update(attempts)
                         .where(attempts.c.run_id == run_id, attempts.c.state == AttemptState.RUNNING.value)
                         .values(state=AttemptState.ABANDONED.value, ended_at=now,
                                 error_message="abandoned: the run was resumed"))
            reset = [t for t, s in rows if s != TaskState.PENDING.value]
            if reset:
                conn.execute(update(task_runs)
                             .where(task_runs.c.run_id == run_id, task_runs.c.state.in_(movable),
                                    task_runs.c.task_id.in_(reset))
                             .values(state=TaskState.PENDING.value, started_at=None, ended_at=None,
                                     error_type=None, error_message=None, result=None))
                for table in (lineage, check_results):
                    conn.execute(delete(table).where(table.c.run_id == run_id, table.c.task_id.in_(reset)))
            values: dict[str, Any] = {"state": RunState.RUNNING.value, "ended_at": None, "error": None,
                                      "started_at": func.coalesce(runs.c.started_at, now)}
            if slot is not None:
                values.update(owner=slot.owner, lease_expires_at=now + timedelta(seconds=slot.lease_seconds))
            if pipeline_version is not None:
                values["pipeline_version"] = pipeline_version
            conn.execute(update(runs).where(runs.c.id == run_id).values(**values))
        return [t for t, _ in rows]

    def reset_for_retry(self, run_id: str, task_ids: list[str]) -> list[str]:
        """Queue an ended run again with ``task_ids`` (a task and everything downstream of it) back to
        pending, whatever their state, in one transaction; their results, lineage and checks are
        cleared, their attempts kept (the next attempt numbers follow on). The run becomes pending,
        with no owner, for an executor's resume to take over (which also runs again every other task
        that did not succeed).

        The one move out of ``succeeded`` there is: an operator's explicit request, never an
        executor's (``udop.states`` still refuses it to them). ``TransitionError`` while the run is
        pending or running: it must end (or be cancelled) first. Returns the ids reset, in task order.
        """
        ids = list(dict.fromkeys(task_ids))
        with self._write() as conn:
            current = conn.execute(select(runs.c.state).where(runs.c.id == run_id).with_for_update()).scalar()
            if current is None:
                raise RunNotFound(f"no run {run_id!r} in the metadata store")
            if not is_terminal(RunState(current)):
                raise TransitionError(f"run {run_id!r} is {current}; retry a task once the run has ended "
                                      "(or cancel it first)")
            found = [t for (t,) in conn.execute(
                select(task_runs.c.task_id).where(task_runs.c.run_id == run_id, task_runs.c.task_id.in_(ids))
                .order_by(task_runs.c.position).with_for_update()).all()]
            if missing := [t for t in ids if t not in found]:
                raise RunNotFound(f"run {run_id!r} has no task {missing[0]!r}")
            conn.execute(update(task_runs)
                         .where(task_runs.c.run_id == run_id, task_runs.c.task_id.in_(ids))
                         .values(state=TaskState.PENDING.value, started_at=None, ended_at=None,
                                 error_type=None, error_message=None, result=None))
            for table in (lineage, check_results):
                conn.execute(delete(table).where(table.c.run_id == run_id, table.c.task_id.in_(ids)))
            conn.execute(update(runs).where(runs.c.id == run_id).values(
                state=RunState.PENDING.value, ended_at=None, error=None, owner=None, lease_expires_at=None))
        return found

    # --- diagnosis of a refused change (inside the failing transaction, which then rolls back) -----

    def _raise_missing(self, conn: Connection, run_id: str, task_id: str) -> NoReturn:
        if conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is None:
            raise RunNotFound(f"no run {run_id!r} in the metadata store")
        raise RunNotFound(f"run {run_id!r} has no task {task_id!r}")

    def _raise_task_problem(self, conn: Connection, run_id: str, task_id: str, new: TaskState) -> NoReturn:
        current = conn.execute(select(task_runs.c.state).where(
            task_runs.c.run_id == run_id, task_runs.c.task_id == task_id)).scalar()
        if current is None:
            self._raise_missing(conn, run_id, task_id)
        raise _transition_error(f"run {run_id!r} task {task_id!r}", current, new)

    def _raise_attempt_problem(self, conn: Connection, run_id: str, task_id: str, number: int,
                               new: AttemptState) -> NoReturn:
        current = conn.execute(select(attempts.c.state).where(
            attempts.c.run_id == run_id, attempts.c.task_id == task_id, attempts.c.number == number)).scalar()
        if current is None:
            if conn.execute(select(task_runs.c.state).where(
                    task_runs.c.run_id == run_id, task_runs.c.task_id == task_id)).first() is None:
                self._raise_missing(conn, run_id, task_id)
            raise TransitionError(f"run {run_id!r} task {task_id!r}: attempt {number} was never started")
        raise _transition_error(f"run {run_id!r} task {task_id!r} attempt {number}", current, new)

    # --- what the tasks left behind ----------------------------------------------------------------

    def lineage_edges(self, limit: int = 100_000) -> list[LineageEdge]:
        """The newest ``limit`` lineage rows of every run (each with its pipeline), newest first."""
        query = (select(lineage.c.run_id, lineage.c.task_id, lineage.c.inputs, lineage.c.output_uri,
                        lineage.c.recorded_at, runs.c.pipeline)
                 .join(runs, runs.c.id == lineage.c.run_id)
                 .where(lineage.c.output_uri.is_not(None))
                 .order_by(lineage.c.id.desc()).limit(limit))
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [LineageEdge(pipeline=r.pipeline, run_id=r.run_id, task_id=r.task_id, inputs=list(r.inputs),
                            output_uri=r.output_uri, recorded_at=r.recorded_at) for r in rows]

    def get_lineage(self, run_id: str) -> list[LineageRecord]:
        with self._read() as conn:
            rows = conn.execute(select(lineage).where(lineage.c.run_id == run_id)
                                .order_by(lineage.c.id)).all()
        return [LineageRecord(task_id=r.task_id, inputs=list(r.inputs), output_uri=r.output_uri,
                              rows=r.rows, bytes=r.bytes, schema_fingerprint=r.schema_fingerprint,
                              recorded_at=r.recorded_at)
                for r in rows]

    def get_checks(self, run_id: str) -> list[CheckRecord]:
        with self._read() as conn:
            rows = conn.execute(select(check_results).where(check_results.c.run_id == run_id)
                                .order_by(check_results.c.id)).all()
        return [CheckRecord(task_id=r.task_id, rule=r.rule, severity=r.severity, passed=bool(r.passed),
                            failing_rows=r.failing_rows, sample=list(r.sample), message=r.message)
                for r in rows]

    def close(self) -> None:
        self._engine.dispose()


def _transition_error(what: str, current: str, new: S) -> TransitionError:
    try:
        check_transition(current, new)
    except TransitionError as exc:
        return TransitionError(f"{what}: {exc}")
    # legal now, so the row changed under us between the UPDATE and this read (PostgreSQL)
    return TransitionError(f"{what}: changed concurrently while moving to {new.value}; try again")


def _version(row: Row[Any], **override: Any) -> PipelineVersionRecord:
    data = {"pipeline": row.pipeline, "version": row.version, "content_hash": row.content_hash,
            "definition": row.definition, "created_at": row.created_at,
            "state_machine_arn": row.state_machine_arn, **override}
    return PipelineVersionRecord(**data)


#: the column order ``_run`` unpacks; every caller selects ``runs``' columns in table order
_RUN_COLUMNS = ("id", "pipeline", "pipeline_version", "state", "executor", "params", "logical_date",
                "created_at", "started_at", "ended_at", "error", "external_id", "owner", "lease_expires_at",
                "trigger")
assert tuple(runs.c.keys()) == _RUN_COLUMNS, "runs' columns changed: update _run"


def _run(row: Sequence[Any], tasks: Iterable[TaskRunRecord] = ()) -> RunRecord:
    # unpacked by position: reading 15 columns by name cost more than the query of a GET /runs page
    (id_, pipeline, version, state, executor, params, logical_date, created_at, started_at, ended_at,
     error, external_id, owner, lease_expires_at, trigger) = cast("tuple[Any, ...]", row)  # a Row is a tuple
    return RunRecord(id=id_, pipeline=pipeline, pipeline_version=version, state=RunState(state),
                     executor=executor, params=params, logical_date=logical_date, created_at=created_at,
                     started_at=started_at, ended_at=ended_at, error=error, external_id=external_id,
                     owner=owner, lease_expires_at=lease_expires_at, trigger=trigger, tasks=list(tasks))


def _lineage_output(result: dict[str, Any]) -> dict[str, Any] | None:
    """The dataset a task's lineage row names: its own output, else what it wrote outside the run
    (a load into a database, queue or API leaves a row too)."""
    output = result.get("output")
    if output:
        return output  # type: ignore[no-any-return]
    written = result.get("written") or []
    return written[0] if written else None


# --- the rows a write adds: built once here for both paths (SQLAlchemy's, and the SQLite hot path's,
# which passes the time as SQLite text and converts JSON and booleans with _sqlite_json) -------------

def _start_params(run_id: str, task_id: str, number: int, now: datetime | str) -> dict[str, Any]:
    """The parameters of ``_START_TASK`` and ``_INSERT_ATTEMPT`` (``now`` as SQLite text on the hot path)."""
    return {"r": run_id, "t": task_id, "n": number, "now": now}


def _finish_rows(run_id: str, task_id: str, number: int, now: datetime | str, task_state: TaskState, *,
                 error_type: str | None, error_message: str | None, result: dict[str, Any] | None,
                 log: dict[str, Any] | None = None,
                 ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]:
    """What ``finish_attempt`` writes: the attempt's and the task's update parameters, the lineage row
    (a result with an output, or something written outside the run) and the check rows."""
    succeeded = task_state is TaskState.SUCCEEDED
    attempt = {"r": run_id, "t": task_id, "n": number, "now": now, "etype": error_type, "emsg": error_message,
               "log": log}
    task = {"r": run_id, "t": task_id, "ended": now if is_terminal(task_state) else None,
            "etype": None if succeeded else error_type, "emsg": None if succeeded else error_message,
            "result": result}
    if not result:
        return attempt, task, None, []
    lineage_row = None
    output = _lineage_output(result)
    if output:
        lineage_row = {"run_id": run_id, "task_id": task_id,
                       "inputs": masked_uris(result.get("inputs") or []),
                       "output_uri": masked_uri(output.get("uri")), "rows": output.get("rows"),
                       "bytes": output.get("bytes"), "schema_fingerprint": output.get("schema_fingerprint"),
                       "recorded_at": now}
    check_rows = [{"run_id": run_id, "task_id": task_id, "rule": c["rule"], "severity": c["severity"],
                   "passed": bool(c["passed"]), "failing_rows": int(c.get("failing_rows") or 0),
                   "sample": list(c.get("sample") or []), "message": c.get("message") or ""}
                  for c in (result.get("checks") or [])]
    return attempt, task, lineage_row, check_rows


def _sqlite_json(row: dict[str, Any]) -> dict[str, Any]:
    """A lineage or check row as SQLAlchemy binds it on SQLite: JSON columns as text, booleans as 0/1
    (the timestamps are given as SQLite text already)."""
    out = dict(row)
    for key, value in row.items():
        if isinstance(value, list):
            out[key] = json_dumps(value)
        elif isinstance(value, bool):
            out[key] = int(value)
    return out


if TYPE_CHECKING:
    from udop.store.api import MetadataStore

    def _implements_the_protocol(store: SqlMetadataStore) -> MetadataStore:
        return store  # mypy checks every method's signature against the protocol here
