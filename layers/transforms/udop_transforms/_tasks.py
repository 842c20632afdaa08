"""The handlers of the task types extract, transform, validate and load (entry points ``udop.task_types``).

Each has the one task signature ``(context, task, inputs) -> TaskResult``, writes its output atomically
under ``context.output_uri`` and raises ``FatalError`` (bad data or definition; a retry cannot help),
``DataQualityError`` (a rule of severity error failed; ``exc.checks`` holds every result) or
``TaskTimeout`` (interrupted by the cancel hook).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from udop import faults
from udop.errors import DataQualityError, FatalError, InputError, TaskTimeout
from udop.lineage.columns import ColumnLineage, column_lineage, compose
from udop.sandbox import SandboxViolation
from udop.spec.data_tasks import FILE_CONNECTORS, data_inputs
from udop.tasks.contract import VIEW_FORMAT, CheckResult, Manifest, TaskContext, TaskResult
from udop_transforms._checks import RuleError, evaluate_rules
from udop_transforms._engine import (
    Session,
    dataset_files,
    dataset_reader,
    fingerprint,
    manifest_for,
    publish_dir,
    query_fingerprint,
    scratch_dir,
)
from udop_transforms._files import SNIFF_ROWS, diagnose_csv, matching_files, reader_sql, write_target
from udop_transforms._snapshot import (
    SNAPSHOT_FORMAT,
    Snapshot,
    SourceFile,
    list_s3,
    read_snapshot,
    s3_client,
    s3_footers,
    stat_local,
    verified_files,
    write_snapshot,
)
from udop_transforms._sql import Params, clean_error, ident, missing_column_message
from udop_transforms._steps import Plan, StepError, compile_steps, locate_failure

__all__ = ["run_extract", "run_load", "run_transform", "run_validate"]


# ------------------------------------------------------------------------------------- helpers


def _resolve(context: TaskContext, path: str, what: str) -> str:
    """Relative paths are relative to the definition's folder (``services['base_dir']``) if known; on a
    server the result must lie below the policy's roots (``what`` names the field in the error)."""
    base = context.services.get("base_dir") if context.services else None
    if base and not os.path.isabs(path):
        path = os.path.join(str(base), path)
    return context.policy.confine(path, what=f"task {context.task_id!r}: {what}")


@contextmanager
def _duckdb_errors(task_id: str, where: str) -> Iterator[None]:
    """DuckDB errors while running become one-line udop task errors naming the task and the place."""
    try:
        yield
    except duckdb.InterruptException:
        raise TaskTimeout(f"task {task_id!r}: interrupted ({where}) because it was cancelled or timed out"
                          ) from None
    except duckdb.PermissionException as exc:
        raise SandboxViolation(f"task {task_id!r}: {where}: refused by the server's sandbox "
                               f"({clean_error(exc)}); a server reads and writes only below its "
                               "configured folders") from None
    except duckdb.OutOfMemoryException as exc:
        raise FatalError(f"task {task_id!r}: {where}: out of memory even with spilling ({clean_error(exc)}); "
                         "raise memory_limit (or UDOP_DUCKDB_MEMORY_LIMIT) or give the spill folder "
                         "more room") from None
    except duckdb.Error as exc:
        err = FatalError(f"task {task_id!r}: {where}: {clean_error(exc)}")
        err.locatable = True  # type: ignore[attr-defined]  # a data error: worth finding its step
        err.decimal_overflow = (isinstance(exc, duckdb.OutOfRangeException)  # type: ignore[attr-defined]
                                and "DECIMAL" in str(exc))
        raise err from None


@contextmanager
def _input_errors(task_id: str, where: str) -> Iterator[None]:
    """A connector's configuration error (unknown connector or option) cannot be fixed by a retry."""
    try:
        yield
    except InputError as exc:
        raise FatalError(f"task {task_id!r}: {where}: {exc}") from None


def _input_manifest(task_id: str, dep: str, inputs: Mapping[str, TaskResult]) -> Manifest:
    result = inputs.get(dep)
    if result is None or result.output is None:
        raise FatalError(f"task {task_id!r}: input {dep!r} has no dataset (a python task must return a "
                         "table to be used as data)")
    return result.output


def _register_inputs(session: Session, context: TaskContext, task: Any, inputs: Mapping[str, TaskResult], *,
                     widen: bool) -> dict[str, list[tuple[str, str]]]:
    columns = {}
    for dep in data_inputs(task):
        manifest = _input_manifest(task.id, dep, inputs)
        if not Path(manifest.uri).exists():
            raise FatalError(f"task {task.id!r}: input {dep!r}: dataset {manifest.uri} does not exist "
                             "(was it removed after its run?)")
        if manifest.format == "view":  # a fused transform's output: its query runs inside this one's
            from udop_transforms._views import view_query

            columns[dep], sql, bound = view_query(session, context, task.id, dep, manifest, widen=widen,
                                                  register=_register_inputs)
            if task.type == "load":
                session.deferred[dep] = (sql, bound)  # a subquery of the load's COPY
            else:
                session.con.execute(f"CREATE TEMP TABLE {ident(dep)} AS {sql}", bound or None)
            continue
        if manifest.format == SNAPSHOT_FORMAT:
            snap = read_snapshot(manifest)
            files = session.cleanup.enter_context(verified_files(context, task.id, dep, snap))
            with _duckdb_errors(task.id, f"input {dep!r} ({snap.path})"):
                columns[dep] = session.register_view(dep, reader_sql(snap.connector, files, snap),
                                                     widen_decimals=widen)
            continue
        with _duckdb_errors(task.id, f"input {dep!r} ({manifest.uri})"):
            # a stream's batch (one Parquet file written by the stream runner) of a schema seen before:
            # its DESCRIBE is known
            known = _stream_batch_schema(context, dep, manifest) if not widen else None
            described = _DESCRIBED.get(known) if known else None
            columns[dep] = session.register_view(dep, dataset_reader(manifest), widen_decimals=widen,
                                                 columns=list(described) if described else None)
            if known and described is None:
                if len(_DESCRIBED) >= 256:
                    _DESCRIBED.clear()
                _DESCRIBED[known] = tuple(columns[dep])
    return columns


#: DESCRIBE of a stream's batch by its Arrow schema's fingerprint (``Manifest.schema_fingerprint``): the
#: batches are single Parquet files written by one writer (``udop.tasks.datasets.write_parquet``), so
#: their columns and DuckDB types follow from that schema alone
_DESCRIBED: dict[str, tuple[tuple[str, str], ...]] = {}


def _known_batch_schema(context: TaskContext, dep: str, inputs: Mapping[str, TaskResult]) -> str | None:
    """The schema fingerprint of input ``dep`` if it is a stream's batch whose DESCRIBE is already known
    (its columns and types follow from that fingerprint alone), else None."""
    result = inputs.get(dep)
    if result is None or result.output is None:
        return None
    known = _stream_batch_schema(context, dep, result.output)
    return known if known is not None and known in _DESCRIBED else None


def _stream_batch_schema(context: TaskContext, dep: str, manifest: Manifest) -> str | None:
    stream = getattr(context.pipeline, "stream", None)
    if stream is None or stream.id != dep or manifest.format != "parquet" or "=" in manifest.uri:
        return None
    return manifest.schema_fingerprint


def _write_output(session: Session, context: TaskContext, sql: str, params: dict[str, Any],
                  where: str) -> Manifest:
    final = Path(context.output_uri)
    tmp = scratch_dir(final)
    try:
        with _duckdb_errors(context.task_id, where):
            rows = session.copy_parquet(sql, params, tmp / "part-0.parquet")
        publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest_for(context.output_uri, dataset_files(final), rows)


def _quality_error(task_id: str, checks: list[CheckResult]) -> DataQualityError:
    failed = [c for c in checks if not c.passed and c.severity == "error"]
    listed = ", ".join(f"{c.rule} ({c.message})" for c in failed)
    err = DataQualityError(f"task {task_id!r}: {len(failed)} of {len(checks)} data-quality rules failed: "
                           f"{listed}")
    err.checks = tuple(checks)  # type: ignore[attr-defined]  # the executor stores them with the run
    return err


def _connectors(task_id: str, name: str) -> Any:
    try:
        return importlib.import_module("udop.connectors")
    except ModuleNotFoundError as exc:
        if exc.name not in ("udop.connectors", "udop"):
            raise
        raise FatalError(f"task {task_id!r}: connector {name!r} is not installed (the file connectors are "
                         f"{', '.join(FILE_CONNECTORS)}); install the udop connectors package") from None


# ------------------------------------------------------------------------------------- handlers


def run_extract(context: TaskContext, task: Any, inputs: Mapping[str, TaskResult]) -> TaskResult:
    source = task.source
    in_place = (not task.materialize and task.foreach is None
                and read_in_place_downstream(context.pipeline, task.id))
    if in_place and source.connector == "parquet":
        return _snapshot_local(context, task)
    if in_place and source.connector == "s3" and _s3_parquet(source):
        result = _snapshot_s3(context, task)
        if result is not None:
            return result
    if source.connector not in FILE_CONNECTORS:
        connectors = _connectors(task.id, source.connector)
        with _input_errors(task.id, "source"):
            spec = source.model_dump(exclude_unset=True)
            manifest = connectors.extract_to_parquet(context, spec, context.output_uri)
        return TaskResult(output=manifest, inputs=(connectors.dataset_of(context, spec),))
    path = _resolve(context, str(context.render(source.path)), "source.path")
    files = context.policy.confine_files(matching_files(path), what=f"task {task.id!r}: source.path")
    if not files:
        raise FatalError(f"task {task.id!r}: source: no {source.connector} file matches {path!r}")
    if source.connector == "csv" and (ragged := diagnose_csv(files, source.delimiter or ",", SNIFF_ROWS, 20)):
        raise FatalError(f"task {task.id!r}: source: {ragged}")
    with Session(memory_limit=task.memory_limit, context=context) as session:
        try:
            session.register_view("_source", reader_sql(source.connector, path, source), widen_decimals=False)
            manifest = _write_output(session, context, "SELECT * FROM _source", {}, f"reading {path}")
        except duckdb.Error as exc:
            raise _source_error(task, source, files, path, exc) from None
        except FatalError as exc:
            if source.connector == "csv" and (ragged := diagnose_csv(files, source.delimiter or ",")):
                raise FatalError(f"task {task.id!r}: source: {ragged}") from None
            raise exc from None
    return TaskResult(output=manifest, inputs=(path,),
                      metrics={"rows": manifest.rows, "files_read": len(files)})


def read_in_place_downstream(pipeline: Any, task_id: str) -> bool:
    """Whether every task reading ``task_id``'s data reads through DuckDB here (transform, validate
    whose own readers do, load to a file), so the data may stay where it is. A python task, a foreach,
    or a load through a connector gets a Parquet copy."""
    for t in pipeline.spec.tasks:
        if task_id not in t.depends_on:
            continue
        if t.foreach is not None or t.type not in ("transform", "validate", "load"):
            return False
        if task_id not in data_inputs(t):
            continue  # only orders the run
        if t.type == "load" and t.target.connector not in FILE_CONNECTORS:
            return False
        if t.type == "validate" and not read_in_place_downstream(pipeline, t.id):
            return False
    return True


def _snapshot_local(context: TaskContext, task: Any) -> TaskResult:
    source = task.source
    path = _resolve(context, str(context.render(source.path)), "source.path")
    names = matching_files(path)
    if not names:
        raise FatalError(f"task {task.id!r}: source: no {source.connector} file matches {path!r}")
    files = stat_local(names)  # before reading: a change while we read is caught by the readers
    return _snapshot_files(context, task, path, files)


def _s3_parquet(source: Any) -> bool:
    """An ``s3`` source DuckDB can read as the connector would: Parquet (or no format given), no options
    beyond the path and hive partitioning, no named connection (its credentials are the connector's)."""
    # defaults left out: a definition read back from its stored form has every field set
    spec = source.model_dump(exclude_defaults=True)
    return (set(spec) <= {"connector", "path", "format", "hive_partitioning"}
            and str(spec.get("path") or "").startswith("s3://") and spec.get("format") in (None, "parquet"))


def _snapshot_s3(context: TaskContext, task: Any) -> TaskResult | None:
    """The snapshot of an S3 Parquet source, or None when its objects are not all Parquet (the connector
    then reads each by its extension, as before)."""
    spec = task.source.model_dump(exclude_defaults=True)
    path = str(context.render(spec["path"]))
    with _input_errors(task.id, "source"):
        files = list_s3(s3_client(context), path)
    if not files:
        raise FatalError(f"task {task.id!r}: source: no object matches {path!r}")
    if spec.get("format") is None and not all(f.path.lower().endswith((".parquet", ".pq")) for f in files):
        return None
    hive = bool(spec.get("hive_partitioning", True))
    try:
        rows, schema = s3_footers(s3_client(context), files, hive)
    except FatalError as exc:
        raise FatalError(f"task {task.id!r}: source: {exc}") from None
    snap = Snapshot(task=task.id, connector="parquet", path=path, files=files, rows=rows,
                    schema_fingerprint=fingerprint(schema), hive_partitioning=hive, hive_strings=True,
                    on_change=task.on_source_change)
    manifest = write_snapshot(snap, context.output_uri)
    return TaskResult(output=manifest, inputs=(path,),
                      metrics={"rows": manifest.rows, "files_read": len(files), "read_in_place": True})


def _snapshot_files(context: TaskContext, task: Any, path: str, files: tuple[SourceFile, ...]) -> TaskResult:
    source = task.source
    snap = Snapshot(task=task.id, connector=source.connector, path=path, files=files, rows=0,
                    schema_fingerprint=None, hive_partitioning=source.hive_partitioning,
                    union_by_name=source.union_by_name, on_change=task.on_source_change)
    local = [f.path for f in files]
    with Session(memory_limit=task.memory_limit, context=context) as session:
        try:
            session.register_view("_source", reader_sql(snap.connector, local, snap), widen_decimals=False)
            # Parquet row counts come from the footers; DuckDB answers count(*) without a scan
            row = session.con.execute("SELECT count(*) FROM _source").fetchall()[0]
            schema_fp = query_fingerprint(session, "SELECT * FROM _source")
        except duckdb.Error as exc:
            raise FatalError(f"task {task.id!r}: source {path}: {clean_error(exc)}") from None
    snap = dataclasses.replace(snap, rows=int(row[0]) if row else 0, schema_fingerprint=schema_fp)
    manifest = write_snapshot(snap, context.output_uri)
    return TaskResult(output=manifest, inputs=(path,),
                      metrics={"rows": manifest.rows, "files_read": len(files), "read_in_place": True})


def _source_error(task: Any, source: Any, files: list[str], path: str, exc: duckdb.Error) -> FatalError:
    if source.connector == "csv" and (ragged := diagnose_csv(files, source.delimiter or ",")):
        return FatalError(f"task {task.id!r}: source: {ragged}")
    return FatalError(f"task {task.id!r}: source {path}: {clean_error(exc)}")


def run_transform(context: TaskContext, task: Any, inputs: Mapping[str, TaskResult]) -> TaskResult:
    if task.engine == "spark":
        return _transform_spark(context, task, inputs)
    columns: ColumnLineage = {}
    try:
        manifest, checks, usage = _transform(context, task, inputs, widen=False, lineage=columns)
    except FatalError as exc:
        if not getattr(exc, "decimal_overflow", False):
            raise
        # DuckDB multiplies decimals of up to 18 digits in 18 digits (fast) and stops on overflow;
        # run again with every decimal input as DECIMAL(38, s): exact, a little slower
        manifest, checks, usage = _transform(context, task, inputs, widen=True, lineage=columns)
    metrics: dict[str, Any] = {"rows": manifest.rows}
    if task.memory_limit:
        # what a user tuning memory_limit needs to see: the limit DuckDB applied, and whether it spilled
        metrics.update(usage)
    return TaskResult(output=manifest, checks=tuple(checks),
                      inputs=tuple(_input_manifest(task.id, d, inputs).uri for d in data_inputs(task)),
                      metrics=metrics, columns=_column_uris(task, inputs, columns))


def _transform_spark(context: TaskContext, task: Any, inputs: Mapping[str, TaskResult]) -> TaskResult:
    """``engine: spark``: the same steps on local PySpark (``athena`` runs on DuckDB off AWS)."""
    from udop_transforms._spark import transform_on_spark

    manifest, query, columns = transform_on_spark(context, task, inputs, register=_register_inputs)
    relations = {name: [c[0] for c in cols] for name, cols in columns.items()}
    uris = tuple(_input_manifest(task.id, d, inputs).uri for d in data_inputs(task))
    return TaskResult(output=manifest, inputs=uris,
                      metrics={"rows": manifest.rows, "engine": "spark"},
                      columns=_column_uris(task, inputs, column_lineage(query, relations)))


def _column_uris(task: Any, inputs: Mapping[str, TaskResult],
                 found: ColumnLineage) -> dict[str, list[list[str]]]:
    """Column lineage with each input relation (a task id) named by its dataset's URI."""
    uris = {d: _input_manifest(task.id, d, inputs).uri for d in data_inputs(task)}
    return {col: [[uris.get(rel, rel), name] for rel, name in sources] for col, sources in found.items()}


def _transform(context: TaskContext, task: Any, inputs: Mapping[str, TaskResult], *,
               widen: bool, lineage: ColumnLineage) -> tuple[Manifest, list[CheckResult], dict[str, Any]]:
    """Run the steps; fills ``lineage`` with the output's column lineage (over input task ids)."""
    checks: list[CheckResult] = []
    with Session(memory_limit=task.memory_limit, context=context) as session:
        columns = _register_inputs(session, context, task, inputs, widen=widen)
        params = Params(context.template_scope())
        relations = {name: [c[0] for c in cols] for name, cols in columns.items()}
        earlier: dict[str, ColumnLineage] = {}  # the tables checks restart the query from

        def on_check(index: int, rules: list[Any], plan: Plan) -> None:
            table = f"_check_{index}"
            with _duckdb_errors(task.id, f"steps[{index}] (check)"):
                session.con.execute(f"CREATE TEMP TABLE {ident(table)} AS {plan.query()}",
                                    plan.bound_params() or None)
                cols = session.describe(f"SELECT * FROM {ident(table)}")
                earlier[table] = compose(column_lineage(plan.query(), relations), earlier)
                relations[table] = [c[0] for c in cols]
                try:
                    results = evaluate_rules(session, ident(table), cols, rules, params,
                                             logical_date=context.logical_date)
                except RuleError as exc:
                    raise ValueError(str(exc)) from None
            checks.extend(results)
            if any(not r.passed and r.severity == "error" for r in results):
                raise _quality_error(task.id, checks)
            plan.restart(ident(table), cols)

        try:
            plan = compile_steps(session, list(task.steps), task.primary_input, columns, params,
                                 on_check=on_check, verify=False)
        except StepError as exc:
            raise FatalError(f"task {task.id!r}: {exc}") from None
        try:
            manifest = _write_output(session, context, plan.query(), plan.bound_params(), "running the steps")
        except TaskTimeout:
            raise
        except FatalError as exc:
            if not getattr(exc, "locatable", False) or getattr(exc, "decimal_overflow", False):
                raise
            try:
                plan.verify()  # the steps whose binding was left to the run itself
            except StepError as bad:
                raise FatalError(f"task {task.id!r}: {bad}") from None
            found = locate_failure(plan)
            if found is None:
                raise
            index, kind, message = found
            raise FatalError(f"task {task.id!r}: steps[{index}] ({kind}): {message}") from exc.__cause__
        usage = session.usage()
        lineage.clear()
        lineage.update(compose(column_lineage(plan.query(), relations), earlier))
    return manifest, checks, usage


def run_validate(context: TaskContext, task: Any, inputs: Mapping[str, TaskResult]) -> TaskResult:
    manifest = _input_manifest(task.id, task.primary_input, inputs)
    names: list[str] = []
    try:
        if task.engine == "spark":
            checks = _evaluate_spark(context, task, inputs, names=names)
        else:
            checks = _evaluate(context, task, inputs, widen=False, names=names)
    except FatalError as exc:
        if not getattr(exc, "decimal_overflow", False):
            raise
        checks = _evaluate(context, task, inputs, widen=True, names=names)  # see run_transform
    if any(not c.passed and c.severity == "error" for c in checks):
        raise _quality_error(task.id, checks)
    output = _pass_through(context, manifest)
    # a validate task passes its input through: each column is the input's column of that name
    columns = {n: [[manifest.uri, n]] for n in names}
    return TaskResult(output=output, checks=tuple(checks), inputs=(manifest.uri,),
                      metrics={"rows": output.rows, "rules_failed_warn": sum(not c.passed for c in checks)},
                      columns=columns)


def _evaluate(context: TaskContext, task: Any, inputs: Mapping[str, TaskResult], *,
              widen: bool, names: list[str]) -> list[CheckResult]:
    """The rules' results; fills ``names`` with the validated input's columns."""
    with Session(memory_limit=task.memory_limit, context=context) as session:
        columns = _register_inputs(session, context, task, inputs, widen=widen)
        names[:] = [c[0] for c in columns[task.primary_input]]
        params = Params(context.template_scope())
        try:
            with _duckdb_errors(task.id, "evaluating rules"):
                return evaluate_rules(session, ident(task.primary_input), columns[task.primary_input],
                                      list(task.rules), params, sample_rows=task.sample_rows,
                                      logical_date=context.logical_date)
        except RuleError as exc:
            raise FatalError(f"task {task.id!r}: {exc}") from None


def _evaluate_spark(context: TaskContext, task: Any, inputs: Mapping[str, TaskResult], *,
                    names: list[str]) -> list[CheckResult]:
    """The rules counted on local PySpark, their SQL transpiled from the DuckDB the rules compile to."""
    from udop_transforms._spark import evaluate_on_spark

    params = Params(context.template_scope())

    def evaluate(session: Session, columns: dict[str, list[tuple[str, str]]]) -> list[CheckResult]:
        try:
            return evaluate_rules(session, ident(task.primary_input), columns[task.primary_input],
                                  list(task.rules), params, sample_rows=task.sample_rows,
                                  logical_date=context.logical_date)
        except RuleError as exc:
            raise FatalError(f"task {task.id!r}: {exc}") from None

    checks, found = evaluate_on_spark(context, task, inputs, register=_register_inputs, evaluate=evaluate)
    names[:] = found
    return list(checks)


def _pass_through(context: TaskContext, manifest: Manifest) -> Manifest:
    """The validated input at this task's own location: hard links (a copy across file systems)."""
    source = Path(manifest.uri)
    final = Path(context.output_uri)
    tmp = scratch_dir(final)
    try:
        files = [source] if source.is_file() else [f for f in sorted(source.rglob("*"))
                                                   if f.is_file() and not f.name.startswith(".")]
        for file in files:
            dest = tmp / (file.name if source.is_file() else file.relative_to(source))
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(file, dest)
            except OSError:
                shutil.copy2(file, dest)
        publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # a snapshot passes through as itself: its count is of the source files it names
    return Manifest(uri=context.output_uri, rows=manifest.rows, bytes=manifest.bytes,
                    schema_fingerprint=manifest.schema_fingerprint, format=manifest.format,
                    files=manifest.files if manifest.format == SNAPSHOT_FORMAT else len(files))


def run_load(context: TaskContext, task: Any, inputs: Mapping[str, TaskResult]) -> TaskResult:
    target = task.target
    manifest = _input_manifest(task.id, task.primary_input, inputs)
    if target.connector not in FILE_CONNECTORS:
        connectors = _connectors(task.id, target.connector)
        # a stored (canonical) definition spells out every field, unset ones as None: drop those,
        # or the connector refuses the file-only options (path, partition_by, ...) as unknown
        spec = {k: v for k, v in target.model_dump(exclude_unset=True).items() if v is not None}
        if manifest.format == VIEW_FORMAT:  # a fused transform's: its query's result goes straight in
            with Session(memory_limit=task.memory_limit, context=context) as session:
                _register_inputs(session, context, task, inputs, widen=False)
                sql, bound = session.deferred[task.primary_input]
                with _duckdb_errors(task.id, f"reading input {task.primary_input!r}"):
                    relation = session.con.sql(f"SELECT * FROM ({sql})", params=bound or None)
                    reader = relation.to_arrow_reader(65_536)
                    # the query runs as the connector reads it: its errors (a cast, an interrupt) too
                    with _input_errors(task.id, "target"):
                        metrics = connectors.load_from_parquet(context, spec, manifest, inputs,
                                                               batches=reader)
                        target_uri = connectors.dataset_of(context, spec)
        else:
            with _input_errors(task.id, "target"):
                metrics = connectors.load_from_parquet(context, spec, manifest, inputs)
                target_uri = connectors.dataset_of(context, spec)
        rows = (metrics or {}).get("rows_written")
        written = Manifest(uri=target_uri, rows=rows if isinstance(rows, int) else None,
                           schema_fingerprint=manifest.schema_fingerprint, format=target.connector)
        return TaskResult(inputs=(manifest.uri,), metrics=dict(metrics or {}), written=(written,))
    path = _resolve(context, str(context.render(target.path)), "target.path")
    from udop.connectors.io import load_entry, state_for

    state = state_for(context)
    entry = load_entry(context, manifest, state=state)
    # the file target's ledger: in the state store, written once the files are published; a load
    # repeated after a crash before it writes the same file names again (see write_target)
    ledger_key = f"udop:load-ledger:file:{entry.key}:{path}"
    found = state.get(ledger_key)
    if found is not None:
        done = json.loads(found)
        rows, files = int(done["rows"]), [Path(f) for f in done["files"] if Path(f).exists()]
    else:
        rows, files = _write_file_target(context, task, inputs, target=target, path=path,
                                          token=entry.key[:16])
        state.set(ledger_key, json.dumps({"rows": rows, "files": [str(f) for f in files]}), ttl=15 * 86400.0)
    if target.connector == "parquet":
        import pyarrow.parquet as pq  # only for a Parquet target: most runs never need pyarrow

        total: int | None = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    else:
        total = rows if target.mode == "overwrite" else None
    out = manifest_for(path, files, total or 0, fmt=target.connector)
    if total is None:
        out = Manifest(uri=out.uri, rows=None, bytes=out.bytes, schema_fingerprint=None, format=out.format,
                       files=out.files)
    faults.point("load-committed")
    if _has_incremental_extract(context.pipeline):
        # the files are published: incremental extracts upstream may now advance their watermarks
        from udop.connectors import commit_watermarks

        commit_watermarks(context)
    faults.point("watermark-committed")
    return TaskResult(output=out, inputs=(manifest.uri,),
                      metrics={"rows_written": rows, "ledger": "already loaded" if found else "recorded"})


def _write_file_target(context: TaskContext, task: Any, inputs: Mapping[str, TaskResult], *, target: Any,
                       path: str, token: str) -> tuple[int, list[Path]]:
    with Session(memory_limit=task.memory_limit, context=context) as session:
        columns = _register_inputs(session, context, task, inputs, widen=False)
        names = [c[0] for c in columns[task.primary_input]]
        for col in target.partition_by or []:
            if col not in names:
                raise FatalError(f"task {task.id!r}: target.partition_by: "
                                 + missing_column_message(col, names))
        with _duckdb_errors(task.id, f"writing {path}"):
            try:
                query = f"SELECT * FROM {ident(task.primary_input)}"
                sql, bound = session.deferred.get(task.primary_input, (None, {}))
                if sql is not None:
                    query = f"SELECT * FROM ({sql}) AS {ident(task.primary_input)}"
                return write_target(session, query, bound, target, path,
                                    foreign_ok=not context.policy.is_server, token=token)
            except ValueError as exc:
                raise FatalError(f"task {task.id!r}: target: {exc}") from None


def _has_incremental_extract(pipeline: Any) -> bool:
    for t in pipeline.spec.tasks:
        source = getattr(t, "source", None) if t.type == "extract" else None
        if source is not None:
            fields = source.model_dump() if hasattr(source, "model_dump") else dict(source)
            if fields.get("incremental"):
                return True
    return False
