"""``SqlMetadataStore``: the ``MetadataStore`` protocol on SQLite or PostgreSQL (SQLAlchemy Core; on SQLite,
every operation of a run goes to sqlite3 with the SQL text of the same statements: "the SQLite path").

Every method is one transaction. A state change is one ``UPDATE ... WHERE state IN (<legal
predecessors>)`` whose row count says whether the move was legal; the predecessor sets are derived
from ``udop.states.check_transition``, so the lifecycle rules live in one place. Only when the row
count is short does the store read the current state to say what was wrong (and roll back).
On PostgreSQL the UPDATE takes the row lock and re-checks its WHERE after a concurrent writer
commits; on SQLite write transactions begin with ``BEGIN IMMEDIATE``; either way two writers
cannot make an illegal move.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

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
    SqliteConnections,
    canonical_json,
    is_memory,
    json_dumps,
    mask_url,
    sqlite_timestamp,
    transaction,
)
from udop.store.guards import predecessors
from udop.store.sqlite_sql import SQL

if TYPE_CHECKING:
    # SQLAlchemy (and the tables and statements built on it) is imported by the methods that use it: on
    # SQLite every operation of a run goes to sqlite3 (see "the SQLite path") and never needs it
    from sqlalchemy import Connection, Engine, Row

__all__ = ["SqlMetadataStore", "canonical_json", "content_hash", "predecessors"]

S = TypeVar("S", RunState, TaskState, AttemptState)


def content_hash(definition: Any) -> str:
    """sha256 (hex) of the canonical JSON of a pipeline definition."""
    return hashlib.sha256(canonical_json(definition).encode("utf-8")).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


# --- the SQLite path ----------------------------------------------------------------------------------
# On SQLite every operation a run performs goes straight to sqlite3 with the text SQLAlchemy compiles for
# the same Core statements (``udop.store.statements``, kept as plain strings in ``udop.store.sqlite_sql``),
# values converted as SQLAlchemy would (UTC text timestamps, JSON text, booleans as 0/1): a statement costs
# the database a few microseconds, SQLAlchemy's per-execution work about 35 us, and importing SQLAlchemy
# ~0.15 s of a short run. Operations without such a path (and the diagnosis of a refused change) open the
# SQLAlchemy engine on first use.


class _Sql:
    """One statement's SQLite text (named parameters) and the values it binds itself."""

    __slots__ = ("defaults", "sql")

    def __init__(self, name: str) -> None:
        self.sql, self.defaults = SQL[name]

    def __call__(self, **values: Any) -> dict[str, Any]:
        return {**self.defaults, **values}


@cache
def _q(name: str) -> _Sql:
    return _Sql(name)


def _expanded(name: str, ids: Sequence[str], **values: Any) -> tuple[str, dict[str, Any]]:
    """A statement with ``IN (:ids)`` expanded to one parameter per id, as SQLAlchemy expands it."""
    stmt = _q(name)
    keys = [f"ids_{i}" for i in range(1, len(ids) + 1)]
    params = stmt(**values)
    params.pop("ids", None)
    params.update(zip(keys, ids, strict=True))
    return stmt.sql.replace("__[POSTCOMPILE_ids]", ", ".join(f":{k}" for k in keys)), params


class _Refused(Exception):
    """The guarded UPDATE matched no row; raised inside the transaction so that it rolls back."""


class SqlMetadataStore:
    """The metadata store on SQLite or PostgreSQL (build it with ``udop.store.open_store``).

    Given an SQLAlchemy ``engine``, or (SQLite) ``connections`` to the database file and its ``url``:
    then the engine is made on first use, by an operation without an SQLite path.
    """

    def __init__(self, engine: Engine | None = None, *, connections: SqliteConnections | None = None,
                 url: str | None = None) -> None:
        self._engine = engine
        self._connections = connections
        self._engine_lock = threading.Lock()
        self._insert_pipeline: Any = None
        if engine is not None:
            self._url: Any = engine.url
            backend = engine.dialect.name
            memory = is_memory(engine.url)
        elif connections is not None:
            self._url = url or f"sqlite:///{connections.path}"
            backend, memory = "sqlite", False
        else:
            raise TypeError("SqlMetadataStore needs an engine or SQLite connections")
        self._where = mask_url(self._url)
        self._postgres = backend == "postgresql"
        self._sqlite = backend == "sqlite"
        # a :memory: SQLite database is one shared connection: one transaction at a time
        self._lock: AbstractContextManager[Any] = threading.RLock() if memory else nullcontext()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (made on first use when the store was opened on SQLite connections)."""
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    from udop.store.engine import create_store_engine, parse_url

                    self._engine = create_store_engine(parse_url(str(self._url)))
        return self._engine

    def __repr__(self) -> str:
        return f"SqlMetadataStore({self._where!r})"

    # --- transactions ------------------------------------------------------------------------------

    @contextmanager
    def _tx(self, write: bool) -> Iterator[Connection]:
        from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError

        engine = self.engine
        with self._lock:
            try:
                with transaction(engine, write=write) as conn:
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
    def _raw(self) -> Iterator[sqlite3.Connection]:
        """A bare sqlite3 connection: one of the store's own, or the engine's when it was given one."""
        if self._connections is not None:
            db = self._connections.acquire()
            try:
                yield db
            finally:
                self._connections.release(db)
            return
        pooled = self.engine.raw_connection()
        try:
            yield pooled.driver_connection  # type: ignore[misc]
        finally:
            pooled.close()

    @contextmanager
    def _sqlite_write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on the bare sqlite3 connection (see "the SQLite path")."""
        with self._lock:
            try:
                with self._raw() as db:
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

    @contextmanager
    def _sqlite_read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction on the bare sqlite3 connection (see ``udop.store.sqlite_reads``)."""
        with self._lock:
            try:
                with self._raw() as db:
                    db.execute("BEGIN")
                    try:
                        yield db
                    finally:
                        if db.in_transaction:
                            db.commit()  # a read: nothing to keep or undo
            except sqlite3.Error as exc:
                raise StoreError(f"metadata database {self._where}: {exc}") from None

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
        if self._sqlite:
            version = self._sqlite_register(name, definition, digest, state_machine_arn, now)
        else:
            version = self._register(name, definition, digest, state_machine_arn, now)
        if isinstance(version, PipelineVersionRecord):
            return version
        return PipelineVersionRecord(pipeline=name, version=version, content_hash=digest, definition=stored,
                                     created_at=now, state_machine_arn=state_machine_arn)

    def _register(self, name: str, definition: dict[str, Any], digest: str, arn: str | None,
                  now: datetime) -> PipelineVersionRecord | int:
        """The latest version when it has this content, else the number of the version added."""
        from sqlalchemy import insert, select, update

        from udop.store.tables import pipeline_versions, pipelines

        if self._insert_pipeline is None:
            if self._postgres:  # imported only here: the PostgreSQL dialect costs ~50 ms to import
                from sqlalchemy.dialects.postgresql import insert as postgresql_insert

                self._insert_pipeline = postgresql_insert(pipelines).on_conflict_do_nothing(
                    index_elements=["name"])
            else:
                from sqlalchemy.dialects.sqlite import insert as sqlite_insert

                self._insert_pipeline = sqlite_insert(pipelines).on_conflict_do_nothing(
                    index_elements=["name"])
        with self._write() as conn:
            conn.execute(self._insert_pipeline, {"name": name, "created_at": now})
            # serialise registrations of one pipeline (PostgreSQL)
            conn.execute(select(pipelines.c.name).where(pipelines.c.name == name).with_for_update())
            latest = conn.execute(
                select(pipeline_versions).where(pipeline_versions.c.pipeline == name)
                .order_by(pipeline_versions.c.version.desc()).limit(1)).first()
            current = None if latest is None else _version(latest)
            same = _same_version(current, digest, arn)
            if same is not None:
                if same is not current:
                    conn.execute(update(pipeline_versions)
                                 .where(pipeline_versions.c.pipeline == name,
                                        pipeline_versions.c.version == same.version)
                                 .values(state_machine_arn=arn))
                return same
            row = _version_row(name, current, digest, definition, arn, now)
            conn.execute(insert(pipeline_versions), row)
        return int(row["version"])

    def _sqlite_register(self, name: str, definition: dict[str, Any], digest: str, arn: str | None,
                         now: datetime) -> PipelineVersionRecord | int:
        at = sqlite_timestamp(now)
        with self._sqlite_write() as db:  # the write lock is the database's: registrations are serialised
            insert = _q("INSERT_PIPELINE")
            db.execute(insert.sql, insert(name=name, created_at=at))
            latest_sql = _q("LATEST_VERSION")
            latest = db.execute(latest_sql.sql, latest_sql(name=name)).fetchone()
            current = None if latest is None else sqlite_reads.pipeline_version(latest)
            same = _same_version(current, digest, arn)
            if same is not None:
                if same is not current:
                    set_arn = _q("SET_VERSION_ARN")
                    db.execute(set_arn.sql, set_arn(name=name, v=same.version, arn=arn))
                return same
            row = _version_row(name, current, digest, definition, arn, now)
            insert_version = _q("INSERT_VERSION")
            db.execute(insert_version.sql, insert_version(**_sqlite_values(row)))
        return int(row["version"])

    def get_pipeline(self, name: str) -> PipelineRecord | None:
        if self._sqlite:
            with self._sqlite_read() as db:
                return sqlite_reads.get_pipeline(db, name)
        from sqlalchemy import select

        from udop.store.tables import pipeline_versions, pipelines

        with self._read() as conn:
            head = conn.execute(select(pipelines).where(pipelines.c.name == name)).first()
            if head is None:
                return None
            versions = conn.execute(select(pipeline_versions).where(pipeline_versions.c.pipeline == name)
                                    .order_by(pipeline_versions.c.version)).all()
        return PipelineRecord(name=head.name, created_at=head.created_at,
                              versions=[_version(v) for v in versions])

    def list_pipelines(self) -> list[PipelineRecord]:
        from sqlalchemy import select

        from udop.store.tables import pipeline_versions, pipelines

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
        from sqlalchemy import delete

        from udop.store.tables import pipelines

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
        task_rows = [{"run_id": run_id, "task_id": t, "position": i, "state": TaskState.PENDING.value}
                     for i, t in enumerate(task_ids)]
        try:
            stored_params = json.loads(json_dumps(params))  # what get_run will return
        except (TypeError, ValueError) as exc:
            raise StoreError(f"run {run_id!r}: its parameters cannot be stored as JSON: {exc}") from None
        if self._sqlite:
            try:
                with self._sqlite_write() as db:
                    if slot is not None:
                        self._sqlite_claim_slot(db, pipeline, run_id, slot, now)
                    insert_run = _q("INSERT_RUN")
                    db.execute(insert_run.sql, insert_run(**_sqlite_values(row)))
                    if task_rows:
                        insert_task = _q("INSERT_TASK_RUN")
                        db.executemany(insert_task.sql, [insert_task(**r) for r in task_rows])
            except sqlite3.IntegrityError:
                raise self._explain_create_failure(run_id, pipeline, pipeline_version, task_ids,
                                                   external_id) from None
        else:
            from sqlalchemy import insert
            from sqlalchemy.exc import IntegrityError

            from udop.store.tables import runs, task_runs

            try:
                with self._write() as conn:
                    if slot is not None:
                        self._claim_slot(conn, pipeline, run_id, slot, now)
                    conn.execute(insert(runs), row)
                    if task_rows:
                        conn.execute(insert(task_runs), task_rows)
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
        from sqlalchemy import select

        from udop.store.tables import pipeline_versions, runs

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
        write transaction already holds the database's write lock (``_sqlite_claim_slot``).
        """
        if slot.max_active is None:
            return
        from sqlalchemy import select

        from udop.store.tables import pipelines, runs

        conn.execute(select(pipelines.c.name).where(pipelines.c.name == pipeline).with_for_update())
        rows = conn.execute(
            select(runs.c.id, runs.c.owner, runs.c.lease_expires_at)
            .where(runs.c.pipeline == pipeline, runs.c.state == RunState.RUNNING.value,
                   runs.c.id != run_id, runs.c.lease_expires_at > now)
            .order_by(runs.c.created_at, runs.c.id)).all()
        _check_slot(pipeline, slot, [(r.id, r.owner) for r in rows])

    def _sqlite_claim_slot(self, db: sqlite3.Connection, pipeline: str, run_id: str, slot: RunSlot,
                           now: datetime) -> None:
        if slot.max_active is None:
            return
        live = _q("LIVE_RUNS")
        rows = db.execute(live.sql, live(pipeline=pipeline, run=run_id, now=sqlite_timestamp(now))).fetchall()
        _check_slot(pipeline, slot, [(r[0], r[1]) for r in rows])

    def renew_lease(self, run_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend the lease of a running run that ``owner`` holds; False if it holds it no longer."""
        lease = _now() + timedelta(seconds=lease_seconds)
        if self._sqlite:
            renew = _q("RENEW_LEASE")
            with self._sqlite_write() as db:
                return bool(db.execute(renew.sql, renew(run=run_id, who=owner,
                                                        lease=sqlite_timestamp(lease))).rowcount)
        from sqlalchemy import update

        from udop.store.tables import runs

        with self._write() as conn:
            return bool(conn.execute(
                update(runs).where(runs.c.id == run_id, runs.c.owner == owner,
                                   runs.c.state == RunState.RUNNING.value)
                .values(lease_expires_at=lease)).rowcount)

    def get_run(self, run_id: str) -> RunRecord | None:
        if self._sqlite:
            with self._sqlite_read() as db:
                return sqlite_reads.get_run(db, run_id)
        from sqlalchemy import select

        from udop.store.tables import runs

        with self._read() as conn:
            return self._load_run(conn, select(runs).where(runs.c.id == run_id))

    def attempt_state(self, run_id: str, task_id: str, number: int) -> AttemptState | None:
        """The state of one attempt (None if it was never started): what a Celery worker checks before
        it runs a delivered attempt, which may have been ended meanwhile (timed out, cancelled, resumed)."""
        from sqlalchemy import select

        from udop.store.tables import attempts

        with self._read() as conn:
            state = conn.execute(select(attempts.c.state).where(
                attempts.c.run_id == run_id, attempts.c.task_id == task_id,
                attempts.c.number == number)).scalar()
        return None if state is None else AttemptState(state)

    @property
    def dialect(self) -> str:
        """The database's SQLAlchemy dialect name (``sqlite``, ``postgresql``)."""
        return "sqlite" if self._sqlite else str(self.engine.dialect.name)

    def find_run_by_external_id(self, external_id: str) -> RunRecord | None:
        """The run started as ``external_id`` (an execution ARN), with its tasks like ``get_run``."""
        from sqlalchemy import select

        from udop.store.tables import runs

        with self._read() as conn:
            return self._load_run(conn, select(runs).where(runs.c.external_id == external_id))

    def _load_run(self, conn: Connection, stmt: Any) -> RunRecord | None:
        from sqlalchemy import select

        from udop.store.tables import attempts, task_runs

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
        from sqlalchemy import and_, or_, select

        from udop.store.tables import runs

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
        params = {"run": run_id, "err": error, "now": now, "who": owner}
        if self._sqlite:
            stmt = _q(f"RUN_STATE_{state.name}{'_OWNER' if owner is not None else ''}")
            at = sqlite_timestamp(now)
            with self._sqlite_write() as db:
                rows = db.execute(stmt.sql, stmt(**{**params, "now": at})).fetchall()
                if not rows:
                    current = _sqlite_scalar(db, "RUN_STATE", run=run_id)
                    if current is None:
                        raise RunNotFound(f"no run {run_id!r} in the metadata store")
                    raise _transition_error(f"run {run_id!r}", current, state)
            return sqlite_reads.run_record(rows[0])
        from sqlalchemy import select

        from udop.store.statements import run_state_stmt
        from udop.store.tables import runs

        with self._write() as conn:
            row = conn.execute(run_state_stmt(state, owner=owner is not None), params).first()
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
        from sqlalchemy.exc import IntegrityError

        from udop.store.statements import INSERT_ATTEMPT, START_TASK

        params = _start_params(run_id, task_id, number, _now())
        try:
            with self._write() as conn:
                if conn.execute(START_TASK, params).rowcount != 1:
                    self._raise_task_problem(conn, run_id, task_id, TaskState.RUNNING)
                conn.execute(INSERT_ATTEMPT, params)
        except IntegrityError:
            raise TransitionError(f"run {run_id!r} task {task_id!r}: attempt {number} was already started") \
                from None

    def _sqlite_start_attempt(self, run_id: str, task_id: str, number: int) -> None:
        params = _start_params(run_id, task_id, number, sqlite_timestamp(_now()))
        start, insert = _q("START_TASK"), _q("INSERT_ATTEMPT")
        try:
            with self._sqlite_write() as db:
                if db.execute(start.sql, start(**params)).rowcount != 1:
                    raise _Refused
                db.execute(insert.sql, insert(**params))
        except _Refused:
            with self._sqlite_read() as db:
                _sqlite_raise_task_problem(db, run_id, task_id, TaskState.RUNNING)
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
        from udop.store.statements import (
            INSERT_CHECK,
            INSERT_LINEAGE,
            finish_attempt_stmt,
            finish_task_stmt,
        )

        try:
            json_dumps(result)  # psycopg would raise a bare TypeError mid-transaction
        except (TypeError, ValueError) as exc:
            raise StoreError(f"run {run_id!r} task {task_id!r}: the result cannot be stored as JSON: {exc}") \
                from None
        params, task_params, lineage_row, check_rows = _finish_rows(
            run_id, task_id, number, _now(), task_state, error_type=error_type, error_message=error_message,
            result=result, log=log)
        with self._write() as conn:
            if conn.execute(finish_attempt_stmt(attempt_state), params).rowcount != 1:
                self._raise_attempt_problem(conn, run_id, task_id, number, attempt_state)
            if conn.execute(finish_task_stmt(task_state), task_params).rowcount != 1:
                self._raise_task_problem(conn, run_id, task_id, task_state)
            if lineage_row is not None:
                conn.execute(INSERT_LINEAGE, lineage_row)
            if check_rows:
                conn.execute(INSERT_CHECK, check_rows)

    def _sqlite_finish_attempt(self, run_id: str, task_id: str, number: int, attempt_state: AttemptState,
                               task_state: TaskState, *, error_type: str | None, error_message: str | None,
                               result: dict[str, Any] | None, log: dict[str, Any] | None = None) -> None:
        params, task_params, lineage_row, check_rows = _finish_rows(
            run_id, task_id, number, sqlite_timestamp(_now()), task_state, error_type=error_type,
            error_message=error_message, result=result, log=log)
        insert_lineage, insert_check = _q("INSERT_LINEAGE"), _q("INSERT_CHECK")
        try:
            params["log"] = None if log is None else json_dumps(log)
            task_params["result"] = None if result is None else json_dumps(result)
            if lineage_row is not None:
                lineage_row = insert_lineage(**_sqlite_values(lineage_row))
            check_rows = [insert_check(**_sqlite_values(row)) for row in check_rows]
        except (TypeError, ValueError) as exc:
            raise StoreError(f"run {run_id!r} task {task_id!r}: the result cannot be stored as JSON: {exc}") \
                from None
        attempt_stmt = _q(f"FINISH_ATTEMPT_{attempt_state.name}")
        task_stmt = _q(f"FINISH_TASK_{task_state.name}")
        try:
            with self._sqlite_write() as db:
                if db.execute(attempt_stmt.sql, attempt_stmt(**params)).rowcount != 1:
                    raise _Refused("attempt")
                if db.execute(task_stmt.sql, task_stmt(**task_params)).rowcount != 1:
                    raise _Refused("task")
                if lineage_row is not None:
                    db.execute(insert_lineage.sql, lineage_row)
                if check_rows:
                    db.executemany(insert_check.sql, check_rows)
        except _Refused as refused:
            with self._sqlite_read() as db:
                if refused.args == ("attempt",):
                    _sqlite_raise_attempt_problem(db, run_id, task_id, number, attempt_state)
                _sqlite_raise_task_problem(db, run_id, task_id, task_state)

    def set_task_states(self, run_id: str, task_ids: list[str], state: TaskState,
                        *, error_message: str | None = None) -> None:
        """Move several tasks to ``state`` at once (e.g. upstream_failed, cancelled); all or none."""
        state = TaskState(state)
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return
        now = _now()
        message = error_message is not None or state is TaskState.PENDING
        params = {"r": run_id, "ids": ids, "now": now, "emsg": error_message}
        if self._sqlite:
            with self._sqlite_write() as db:
                found = dict(db.execute(*_expanded("TASK_STATES", ids, r=run_id)).fetchall())
                for task_id in ids:
                    if task_id not in found:
                        run_exists = _sqlite_scalar(db, "RUN_STATE", run=run_id) is not None
                        raise _missing(run_exists, run_id, task_id)
                    if found[task_id] not in predecessors(state):
                        raise _transition_error(f"run {run_id!r} task {task_id!r}", found[task_id], state)
                name = f"TASK_STATES_{state.name}{'_MESSAGE' if message else ''}"
                sql, values = _expanded(name, ids, r=run_id, now=sqlite_timestamp(now), emsg=error_message)
                if db.execute(sql, values).rowcount != len(ids):
                    raise TransitionError(f"run {run_id!r}: tasks changed concurrently while moving to "
                                          f"{state.value}; try again")
            return
        from sqlalchemy import select

        from udop.store.statements import task_states_stmt
        from udop.store.tables import task_runs

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
            if conn.execute(task_states_stmt(state, message=message), params).rowcount != len(ids):
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
        if self._sqlite:
            return self._sqlite_reset_for_resume(run_id, slot=slot, pipeline_version=pipeline_version)
        from sqlalchemy import delete, func, select, update

        from udop.store.tables import attempts, check_results, lineage, runs, task_runs

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
            reset = _resume_reset(run_id, [(t, s) for t, s in rows])
            conn.execute(update(attempts)
                         .where(attempts.c.run_id == run_id, attempts.c.state == AttemptState.RUNNING.value)
                         .values(state=AttemptState.ABANDONED.value, ended_at=now,
                                 error_message="abandoned: the run was resumed"))
            if reset:
                movable = predecessors(TaskState.PENDING)
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

    def _sqlite_reset_for_resume(self, run_id: str, *, slot: RunSlot | None,
                                 pipeline_version: int | None) -> list[str]:
        now = _now()
        at = sqlite_timestamp(now)
        with self._sqlite_write() as db:
            head_sql = _q("RUN_HEAD")
            head = db.execute(head_sql.sql, head_sql(run=run_id)).fetchone()
            if head is None:
                raise RunNotFound(f"no run {run_id!r} in the metadata store")
            current, pipeline = head
            if current not in predecessors(RunState.RUNNING):
                raise _transition_error(f"run {run_id!r}", current, RunState.RUNNING)
            if slot is not None:
                self._sqlite_claim_slot(db, pipeline, run_id, slot, now)
            tasks_sql = _q("UNFINISHED_TASKS")
            rows = [(t, s) for t, s in db.execute(tasks_sql.sql, tasks_sql(r=run_id)).fetchall()]
            reset = _resume_reset(run_id, rows)
            abandon = _q("ABANDON_ATTEMPTS")
            db.execute(abandon.sql, abandon(r=run_id, now=at))
            if reset:
                for name in ("RESET_TASKS", "DELETE_LINEAGE", "DELETE_CHECKS"):
                    db.execute(*_expanded(name, reset, r=run_id))
            version = "_VERSION" if pipeline_version is not None else ""
            resume = _q(f"RESUME_RUN{'_SLOT' if slot else ''}{version}")
            lease = None if slot is None else sqlite_timestamp(now + timedelta(seconds=slot.lease_seconds))
            db.execute(resume.sql, resume(run=run_id, now=at, who=None if slot is None else slot.owner,
                                          lease=lease, version=pipeline_version))
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
        from sqlalchemy import delete, select, update

        from udop.store.tables import check_results, lineage, runs, task_runs

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
        from sqlalchemy import select

        from udop.store.tables import runs

        raise _missing(conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is not None,
                       run_id, task_id)

    def _raise_task_problem(self, conn: Connection, run_id: str, task_id: str, new: TaskState) -> NoReturn:
        from sqlalchemy import select

        from udop.store.tables import task_runs

        current = conn.execute(select(task_runs.c.state).where(
            task_runs.c.run_id == run_id, task_runs.c.task_id == task_id)).scalar()
        if current is None:
            self._raise_missing(conn, run_id, task_id)
        raise _transition_error(f"run {run_id!r} task {task_id!r}", current, new)

    def _raise_attempt_problem(self, conn: Connection, run_id: str, task_id: str, number: int,
                               new: AttemptState) -> NoReturn:
        from sqlalchemy import select

        from udop.store.tables import attempts, task_runs

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
        from sqlalchemy import select

        from udop.store.tables import lineage, runs

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
        if self._sqlite:
            with self._sqlite_read() as db:
                return sqlite_reads.get_lineage(db, run_id)
        from sqlalchemy import select

        from udop.store.tables import lineage

        with self._read() as conn:
            rows = conn.execute(select(lineage).where(lineage.c.run_id == run_id)
                                .order_by(lineage.c.id)).all()
        return [LineageRecord(task_id=r.task_id, inputs=list(r.inputs), output_uri=r.output_uri,
                              rows=r.rows, bytes=r.bytes, schema_fingerprint=r.schema_fingerprint,
                              recorded_at=r.recorded_at)
                for r in rows]

    def get_checks(self, run_id: str) -> list[CheckRecord]:
        if self._sqlite:
            with self._sqlite_read() as db:
                return sqlite_reads.get_checks(db, run_id)
        from sqlalchemy import select

        from udop.store.tables import check_results

        with self._read() as conn:
            rows = conn.execute(select(check_results).where(check_results.c.run_id == run_id)
                                .order_by(check_results.c.id)).all()
        return [CheckRecord(task_id=r.task_id, rule=r.rule, severity=r.severity, passed=bool(r.passed),
                            failing_rows=r.failing_rows, sample=list(r.sample), message=r.message)
                for r in rows]

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        if self._connections is not None:
            self._connections.close()


def _missing(run_exists: bool, run_id: str, task_id: str) -> RunNotFound:
    if not run_exists:
        return RunNotFound(f"no run {run_id!r} in the metadata store")
    return RunNotFound(f"run {run_id!r} has no task {task_id!r}")


def _sqlite_scalar(db: sqlite3.Connection, name: str, **values: Any) -> Any:
    stmt = _q(name)
    row = db.execute(stmt.sql, stmt(**values)).fetchone()
    return None if row is None else row[0]


def _sqlite_raise_task_problem(db: sqlite3.Connection, run_id: str, task_id: str, new: TaskState) -> NoReturn:
    """``_raise_task_problem`` on the bare sqlite3 connection."""
    current = _sqlite_scalar(db, "TASK_STATE", r=run_id, t=task_id)
    if current is None:
        raise _missing(_sqlite_scalar(db, "RUN_STATE", run=run_id) is not None, run_id, task_id)
    raise _transition_error(f"run {run_id!r} task {task_id!r}", current, new)


def _sqlite_raise_attempt_problem(db: sqlite3.Connection, run_id: str, task_id: str, number: int,
                                  new: AttemptState) -> NoReturn:
    """``_raise_attempt_problem`` on the bare sqlite3 connection."""
    current = _sqlite_scalar(db, "ATTEMPT_STATE", r=run_id, t=task_id, n=number)
    if current is None:
        if _sqlite_scalar(db, "TASK_STATE", r=run_id, t=task_id) is None:
            raise _missing(_sqlite_scalar(db, "RUN_STATE", run=run_id) is not None, run_id, task_id)
        raise TransitionError(f"run {run_id!r} task {task_id!r}: attempt {number} was never started")
    raise _transition_error(f"run {run_id!r} task {task_id!r} attempt {number}", current, new)


def _check_slot(pipeline: str, slot: RunSlot, rows: list[tuple[str, str | None]]) -> None:
    """``RunLimitReached`` when ``slot.max_active`` of ``rows`` (the other running runs whose lease has
    not expired, oldest first: id and owner) are alive."""
    assert slot.max_active is not None
    live = [(run_id, owner) for run_id, owner in rows if slot.alive(owner)]
    if len(live) >= slot.max_active:
        first_id, first_owner = live[0]
        where = f" in process {first_owner}" if first_owner else ""
        others = f" (and {len(live) - 1} more)" if len(live) > 1 else ""
        raise RunLimitReached(
            f"pipeline {pipeline!r} already has {len(live)} active run(s), its max_active_runs is "
            f"{slot.max_active}: run {first_id!r} is running{where}{others}; wait for it "
            "(udop run --wait) or stop it")


def _resume_reset(run_id: str, rows: list[tuple[str, str]]) -> list[str]:
    """The tasks a resume sets back to pending (of the ones that did not succeed: ``rows``, with their
    state); a task in a state that cannot move to pending refuses the resume."""
    movable = predecessors(TaskState.PENDING)
    for task_id, state in rows:
        if state != TaskState.PENDING.value and state not in movable:
            raise _transition_error(f"run {run_id!r} task {task_id!r}", state, TaskState.PENDING)
    return [t for t, s in rows if s != TaskState.PENDING.value]


def _same_version(latest: PipelineVersionRecord | None, digest: str,
                  arn: str | None) -> PipelineVersionRecord | None:
    """The latest version when it has this content (with ``arn`` when one is given); None: add one."""
    if latest is None or latest.content_hash != digest:
        return None
    if arn is not None and arn != latest.state_machine_arn:
        return dataclasses.replace(latest, state_machine_arn=arn)
    return latest


def _version_row(name: str, latest: PipelineVersionRecord | None, digest: str,  # noqa: PLR0917
                 definition: dict[str, Any], arn: str | None, now: datetime) -> dict[str, Any]:
    """The ``pipeline_versions`` row of a new version."""
    return {"pipeline": name, "version": 1 if latest is None else latest.version + 1, "content_hash": digest,
            "definition": definition, "state_machine_arn": arn, "created_at": now}


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
# which passes the time as SQLite text and converts JSON and booleans with _sqlite_values) -----------

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


def _sqlite_values(row: dict[str, Any]) -> dict[str, Any]:
    """A row as SQLAlchemy binds it on SQLite: timestamps as naive UTC text (``UTCDateTime``), JSON
    columns (every list or dict value) as text, booleans as 0/1."""
    out = dict(row)
    for key, value in row.items():
        if isinstance(value, list | dict):
            out[key] = json_dumps(value)
        elif isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, datetime):
            out[key] = sqlite_timestamp(value)
    return out


if TYPE_CHECKING:
    from udop.store.api import MetadataStore

    def _implements_the_protocol(store: SqlMetadataStore) -> MetadataStore:
        return store  # mypy checks every method's signature against the protocol here
