"""``engine: spark`` on this machine: the steps' DuckDB SQL, transpiled to Spark SQL, run on PySpark in
local mode over the input Parquet, written as Parquet where the DuckDB engine writes.

The DuckDB side still compiles and binds the steps (input schemas read from Parquet footers, no data
read), so errors name the step as for DuckDB, and column lineage is computed from the same query. One
SparkSession per process (starting the JVM takes seconds); each task gets ``newSession()`` so its
temp views are private, and its own job group, which a timeout or cancel cancels.
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pyarrow.parquet as pq

from udop.errors import FatalError, TaskTimeout
from udop.spec.data_tasks import data_inputs
from udop.tasks.contract import Manifest, TaskContext, TaskResult
from udop_transforms._dialects import EngineError, first_unsupported_step, to_dialect
from udop_transforms._engine import Column, Session, dataset_files, manifest_for, publish_dir, scratch_dir
from udop_transforms._snapshot import SNAPSHOT_FORMAT, read_snapshot, verified_files
from udop_transforms._sql import Params
from udop_transforms._steps import Plan, StepError, compile_steps
from udop_transforms.spark_entry import encode_params, run_job

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "Register",
    "base_path",
    "evaluate_on_spark",
    "job_spec",
    "spark_session",
    "spark_sql",
    "stop_spark",
    "transform_on_spark",
]

#: ``_tasks._register_inputs``, handed in (this module must not import ``_tasks``)
Register = Callable[..., dict[str, list[Column]]]

_lock = threading.Lock()
_sessions: dict[str, SparkSession] = {}  # the one session, under "local"

_COMMIT_PROTOCOL = "org.apache.spark.sql.execution.datasources.SQLHadoopMapReduceCommitProtocol"
#: Spark settings for one machine: no UI, few shuffle partitions (the default 200 costs seconds on small
#: data), UTC, Parquet timestamps as int64 micros (not INT96), and no ``parquet.`/path``` file queries
#: in SQL (a step reads only the inputs udop registers)
_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.parquet.compression.codec": "zstd",
    "spark.sql.runSQLOnFiles": "false",
    "spark.sql.sources.commitProtocolClass": _COMMIT_PROTOCOL,
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
}


def spark_session() -> SparkSession:
    """The process's SparkSession (local mode, all cores), started on first use."""
    with _lock:
        if "local" not in _sessions:
            try:
                from pyspark.sql import SparkSession
            except ModuleNotFoundError:
                raise FatalError(
                    "engine: spark needs PySpark: install udop[spark] (and Java 17 or later)"
                ) from None
            builder = SparkSession.builder.master("local[*]").appName("udop")
            for key, value in _CONF.items():
                builder = builder.config(key, value)
            session = builder.getOrCreate()
            session.sparkContext.setLogLevel("ERROR")
            _sessions["local"] = session
        return _sessions["local"]


def stop_spark() -> None:
    """Stop the process's SparkSession (tests; a later task starts a new one)."""
    with _lock:
        session = _sessions.pop("local", None)
    if session is not None:
        session.stop()


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:400]


class _Job:
    """A task's Spark session and job group; the executor's cancel hook cancels the group."""

    def __init__(self, context: TaskContext) -> None:
        self.spark = spark_session().newSession()
        self.group = f"udop-{context.task_id}-{uuid.uuid4().hex[:8]}"
        self.cancel = context.cancel_event
        self._done = threading.Event()
        self.spark.sparkContext.setJobGroup(
            self.group, f"udop task {context.task_id}", interruptOnCancel=True
        )
        if context.on_cancel is not None:
            context.on_cancel(self.stop)
        threading.Thread(target=self._watch, daemon=True, name=f"udop-spark-cancel-{context.task_id}").start()

    def stop(self) -> None:
        if not self._done.is_set():
            self.spark.sparkContext.cancelJobGroup(self.group)

    def _watch(self) -> None:
        # keeps cancelling until the task is done: a stop that came before the job was submitted (the
        # task was still compiling) must still cancel the job it submits afterwards
        while not self._done.is_set():
            if self.cancel.wait(0.1):
                self.stop()
                self._done.wait(0.5)

    def stopped(self) -> bool:
        return self.cancel.is_set()

    def close(self) -> None:
        self._done.set()
        for name in self.spark.catalog.listTables():
            if name.isTemporary:
                self.spark.catalog.dropTempView(name.name)


def base_path(pattern: str, files: list[str]) -> str | None:
    """The folder above hive-style ``key=value`` folders of a source read in place (Spark's
    ``basePath``), so their keys become columns as they do in DuckDB; None when there are none."""
    cut = min([i for i, ch in enumerate(pattern) if ch in "*?[{"] or [len(pattern)])
    base = pattern[:cut].rsplit("/", 1)[0] if cut < len(pattern) else str(Path(pattern).parent)
    if any("=" in part for f in files for part in Path(f).relative_to(base).parts[:-1]):
        return base
    return None


def _input_paths(
    context: TaskContext,
    task: Any,
    inputs: Mapping[str, TaskResult],
    session: Session,
    base_paths: dict[str, str] | None = None,
) -> dict[str, list[str]]:
    """The Parquet files of each input: a task's output folder, or a source read in place."""
    out: dict[str, list[str]] = {}
    for dep in data_inputs(task):
        result = inputs.get(dep)
        manifest = result.output if result is not None else None
        if manifest is None:
            raise FatalError(f"task {task.id!r}: input {dep!r} has no dataset")
        if manifest.format == SNAPSHOT_FORMAT:
            snap = read_snapshot(manifest)
            if snap.connector != "parquet":
                raise FatalError(
                    f"task {task.id!r}: engine spark reads Parquet; input {dep!r} is "
                    f"{snap.connector} read in place: set materialize: true on {dep!r}"
                )
            files = session.cleanup.enter_context(verified_files(context, task.id, dep, snap))
            out[dep] = [str(f) for f in files]
            base = base_path(snap.path, out[dep]) if snap.hive_partitioning is not False else None
            if base is not None and base_paths is not None:
                base_paths[dep] = base
        elif manifest.format == "parquet":
            out[dep] = [str(f) for f in dataset_files(Path(manifest.uri))]
        else:
            raise FatalError(
                f"task {task.id!r}: engine spark reads Parquet; input {dep!r} is {manifest.format}"
            )
        if not out[dep]:
            raise FatalError(f"task {task.id!r}: input {dep!r} has no Parquet files at {manifest.uri}")
    return out


def job_spec(
    sql: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, list[str]],
    output: str,
    base_paths: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The spec ``spark_entry`` runs (locally here, on EMR Serverless from S3): JSON all the way, so the
    local path exercises exactly what a remote job reads."""
    spec = {
        "sql": sql,
        "params": encode_params(dict(params)),
        "inputs": dict(inputs),
        "output": output,
        "base_paths": dict(base_paths or {}),
    }
    return dict(json.loads(json.dumps(spec)))


def _views(job: _Job, paths: Mapping[str, list[str]], base_paths: Mapping[str, str]) -> None:
    for name, files in paths.items():
        reader = job.spark.read
        if name in base_paths:
            reader = reader.option("basePath", base_paths[name])
        reader.parquet(*files).createOrReplaceTempView(name)


def spark_sql(task: Any, plan: Plan, columns: Mapping[str, list[Column]]) -> str:
    try:
        return to_dialect(plan.query(), columns, "spark")
    except EngineError as exc:
        bad = first_unsupported_step(plan.history, columns, "spark")
        if bad is None:
            raise FatalError(f"task {task.id!r}: engine spark: {exc}") from None
        index, kind, message = bad
        raise FatalError(f"task {task.id!r}: steps[{index}] ({kind}): engine spark: {message}") from None


def _locate(job: _Job, task: Any, plan: Plan, columns: Mapping[str, list[Column]]) -> str | None:
    """The first step whose query Spark cannot analyse (analysis reads no data)."""
    for index, kind, query in plan.history:
        try:
            job.spark.sql(to_dialect(query, columns, "spark"), args=plan.params.used_in(query)).schema  # noqa: B018
        except Exception as exc:  # Spark's errors come as several Py4J/pyspark classes
            return f"steps[{index}] ({kind}): {_error_text(exc)}"
    return None


def _write(
    job: _Job,
    sql: str,
    params: Mapping[str, Any],
    paths: Mapping[str, list[str]],
    context: TaskContext,
    *,
    base_paths: Mapping[str, str],
) -> Manifest:
    final = Path(context.output_uri)
    if job.stopped():
        raise TaskTimeout("the attempt was told to stop (timeout or cancel) before its Spark job started")
    tmp = scratch_dir(final)
    try:
        run_job(job.spark, job_spec(sql, params, paths, str(tmp), base_paths))
        for junk in [*tmp.rglob(".*.crc"), *tmp.rglob("_SUCCESS")]:
            junk.unlink()
        if job.stopped():
            raise TaskTimeout(
                "the attempt was told to stop (timeout or cancel) before its output was "
                "published; the target is unchanged"
            )
        files = dataset_files(tmp)
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)  # from the footers
        publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest_for(context.output_uri, dataset_files(final), rows)


def transform_on_spark(
    context: TaskContext, task: Any, inputs: Mapping[str, TaskResult], *, register: Register
) -> tuple[Manifest, str, dict[str, list[Column]]]:
    """Run the steps on Spark: (manifest, the DuckDB query lineage is read from, input columns)."""
    with Session(context=context) as session:
        columns = register(session, context, task, inputs, widen=False)
        params = Params(context.template_scope())
        try:
            plan = compile_steps(session, list(task.steps), task.primary_input, columns, params)
        except StepError as exc:
            raise FatalError(f"task {task.id!r}: {exc}") from None
        sql = spark_sql(task, plan, columns)
        base_paths: dict[str, str] = {}
        paths = _input_paths(context, task, inputs, session, base_paths)
        job = _Job(context)
        try:
            manifest = _write(job, sql, plan.bound_params(), paths, context, base_paths=base_paths)
        except TaskTimeout:
            raise
        except Exception as exc:
            if job.stopped():
                raise TaskTimeout(
                    f"task {task.id!r}: Spark job cancelled because the attempt timed out or was cancelled"
                ) from None
            where = _locate(job, task, plan, columns) or f"running on spark: {_error_text(exc)}"
            raise FatalError(f"task {task.id!r}: {where}") from None
        finally:
            job.close()
        return manifest, plan.query(), columns


class _SparkCursor:
    """What the rule evaluator needs of a DuckDB connection, answered by Spark (SQL transpiled)."""

    def __init__(self, job: _Job, columns: Mapping[str, list[Column]], task_id: str) -> None:
        self.job, self.columns, self.task_id = job, columns, task_id
        self.description: list[tuple[str]] | None = None
        self._rows: list[tuple[Any, ...]] = []

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> _SparkCursor:
        try:
            spark_sql = to_dialect(sql, self.columns, "spark")
        except EngineError as exc:
            raise FatalError(f"task {self.task_id!r}: rules: engine spark: {exc}") from None
        frame = self.job.spark.sql(spark_sql, args=params or {})
        self.description = [(name,) for name in frame.columns]
        self._rows = [tuple(row) for row in frame.collect()]
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._rows)


class _RuleSession:
    """A ``Session`` for ``evaluate_rules``: binds on DuckDB (schemas), counts on Spark."""

    def __init__(self, session: Session, cursor: _SparkCursor) -> None:
        self.session, self.con = session, cursor

    def describe(self, sql: str, params: dict[str, Any] | None = None) -> list[Column]:
        return self.session.describe(sql, params)


def evaluate_on_spark(
    context: TaskContext,
    task: Any,
    inputs: Mapping[str, TaskResult],
    *,
    register: Register,
    evaluate: Callable[..., Any],
) -> tuple[Any, list[str]]:
    """A validate task's rules counted on Spark: (``evaluate(session, columns)``'s answer, input's columns).

    ``evaluate`` is called with a session whose ``con`` runs transpiled SQL on Spark."""
    with Session(context=context) as session:
        columns = register(session, context, task, inputs, widen=False)
        base_paths: dict[str, str] = {}
        paths = _input_paths(context, task, inputs, session, base_paths)
        job = _Job(context)
        try:
            _views(job, paths, base_paths)
            shim = _RuleSession(session, _SparkCursor(job, columns, task.id))
            try:
                # duck-typed: evaluate_rules uses only describe() and con.execute/fetch*/description
                answer = evaluate(cast(Session, shim), columns)
            except (FatalError, TaskTimeout):
                raise
            except Exception as exc:
                if job.stopped():
                    raise TaskTimeout(
                        f"task {task.id!r}: Spark job cancelled because the attempt timed out "
                        "or was cancelled"
                    ) from None
                raise FatalError(f"task {task.id!r}: evaluating rules on spark: {_error_text(exc)}") from None
        finally:
            job.close()
        return answer, [c[0] for c in columns[task.primary_input]]
