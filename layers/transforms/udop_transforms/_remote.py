"""``engine: spark`` on AWS, the task runner's two calls around the EMR Serverless job run.

``prepare_spark``: the job spec (the steps' Spark SQL, typed parameters, the S3 files of each input,
the output folder) from the inputs' schemas read from their Parquet footers on S3 (ranged reads, no
data downloaded). ``finish_spark``: the task's result from what the job wrote: rows and schema from
the output's Parquet footers, column lineage from the DuckDB query, and the job run's billed vCPU-hours.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

from udop.errors import FatalError
from udop.lineage.columns import column_lineage
from udop.spec.data_tasks import data_inputs
from udop.tasks.contract import CheckResult, Manifest, TaskContext, TaskResult
from udop_transforms._dialects import EngineError, to_dialect
from udop_transforms._engine import Session, fingerprint
from udop_transforms._snapshot import SNAPSHOT_FORMAT, list_s3, read_snapshot, s3_footers
from udop_transforms._spark import base_path, job_spec, spark_sql
from udop_transforms._sql import Params, ident
from udop_transforms._steps import StepError, compile_steps
from udop_transforms.spark_entry import encode_params

__all__ = [
    "ATHENA",
    "SPARK",
    "checks_uri",
    "finish_athena",
    "finish_spark",
    "finish_spark_validate",
    "glue_table_name",
    "prepare_athena",
    "prepare_spark",
    "prepare_spark_validate",
]


def _s3_inputs(
    task: Any, inputs: Mapping[str, TaskResult], *, s3: Any
) -> tuple[dict[str, list[str]], dict[str, str], dict[str, Any]]:
    """Each input's S3 Parquet files, hive base paths and Arrow schema (from the footers)."""
    files: dict[str, list[str]] = {}
    base_paths: dict[str, str] = {}
    schemas: dict[str, Any] = {}
    for dep in data_inputs(task):
        result = inputs.get(dep)
        manifest = result.output if result is not None else None
        if manifest is None:
            raise FatalError(f"task {task.id!r}: input {dep!r} has no dataset")
        if manifest.format == SNAPSHOT_FORMAT:
            snap = read_snapshot(manifest)
            found = snap.files
            base = (
                base_path(snap.path, [f.path for f in found]) if snap.hive_partitioning is not False else None
            )
            if base is not None:
                base_paths[dep] = base
        elif manifest.format == "parquet" and manifest.uri.startswith("s3://"):
            found = list_s3(s3, manifest.uri.rstrip("/") + "/*.parquet")
        else:
            raise FatalError(
                f"task {task.id!r}: engine spark on AWS reads Parquet on S3; input {dep!r} is "
                f"{manifest.format} at {manifest.uri}"
            )
        if not found:
            raise FatalError(f"task {task.id!r}: input {dep!r} has no Parquet files at {manifest.uri}")
        try:
            _, schemas[dep] = s3_footers(s3, found, dep in base_paths)
        except FatalError as exc:
            raise FatalError(f"task {task.id!r}: input {dep!r}: {exc}") from None
        files[dep] = [f.path for f in found]
    return files, base_paths, schemas


def prepare_spark(
    context: TaskContext, task: Any, inputs: Mapping[str, TaskResult], *, s3: Any, output_uri: str
) -> dict[str, Any]:
    """The job spec for ``spark_entry`` (plus what ``finish_spark`` needs: the DuckDB query and the
    input relations' columns, for lineage). A snapshot input's manifest must be readable locally."""
    files, base_paths, schemas = _s3_inputs(task, inputs, s3=s3)
    with Session(context=context) as session:
        columns = {}
        for dep, schema in schemas.items():
            holder = f"_schema_{dep}"
            session.con.register(holder, schema.empty_table())
            columns[dep] = session.register_view(dep, ident(holder))
        params = Params(context.template_scope())
        try:
            plan = compile_steps(session, list(task.steps), task.primary_input, columns, params)
        except StepError as exc:
            raise FatalError(f"task {task.id!r}: {exc}") from None
        spec = job_spec(spark_sql(task, plan, columns), plan.bound_params(), files, output_uri, base_paths)
        spec["duckdb_query"] = plan.query()
        spec["relations"] = {name: [c[0] for c in cols] for name, cols in columns.items()}
        spec["input_uris"] = {dep: inputs[dep].output.uri for dep in files}  # type: ignore[union-attr]
    return spec


def _job_run_ids(job_run: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(application id, job run id) from the ``.sync`` state's answer, whichever shape it has."""
    inner = job_run.get("JobRun") if isinstance(job_run.get("JobRun"), Mapping) else job_run
    assert isinstance(inner, Mapping)
    app = inner.get("ApplicationId") or inner.get("applicationId")
    run = inner.get("JobRunId") or inner.get("jobRunId")
    return (str(app) if app else None), (str(run) if run else None)



#: EMR Serverless ``billedResourceUtilization`` fields (GetJobRun) -> the attempt's metrics
_EMR_BILLED = {"vCPUHour": "emr_vcpu_hours", "memoryGBHour": "emr_memory_gb_hours",
               "storageGBHour": "emr_storage_gb_hours"}


def _emr_cost(emr: Any, job_run: Mapping[str, Any]) -> dict[str, Any]:
    """The job run's id and billed resources (vCPU-, memory- and storage-hours, as GetJobRun answers
    them), recorded with the attempt as its cost."""
    app, run = _job_run_ids(job_run)
    out: dict[str, Any] = {}
    if run is not None:
        out["emr_job_run_id"] = run
    if emr is not None and app is not None and run is not None:
        job = emr.get_job_run(applicationId=app, jobRunId=run)["jobRun"]
        billed = job.get("billedResourceUtilization") or {}
        out.update({name: float(billed[field]) for field, name in _EMR_BILLED.items()
                    if billed.get(field) is not None})
    return out


def _output_manifest(s3: Any, spec: Mapping[str, Any], pattern: str) -> Manifest:
    """The manifest of the Parquet an engine job wrote under ``spec['output']`` (row count and schema
    from the files' footers)."""
    output = str(spec["output"]).rstrip("/") + "/"
    found = list_s3(s3, output + pattern)
    rows, schema = s3_footers(s3, found, False) if found else (0, None)
    return Manifest(
        uri=output,
        rows=rows,
        bytes=sum(f.size for f in found),
        schema_fingerprint=fingerprint(schema) if schema is not None else None,
        format="parquet",
        files=len(found),
    )

def finish_spark(
    task: Any, spec: Mapping[str, Any], *, s3: Any, job_run: Mapping[str, Any], emr: Any = None
) -> TaskResult:
    """The task's result from the Parquet the job wrote under ``spec['output']``."""
    manifest = _output_manifest(s3, spec, "*.parquet")
    rows = manifest.rows
    metrics: dict[str, Any] = {"rows": rows, "engine": "spark"}
    metrics.update(_emr_cost(emr, job_run))
    uris: Mapping[str, str] = spec.get("input_uris", {})
    found_columns = column_lineage(str(spec["duckdb_query"]), dict(spec.get("relations", {})))
    columns = {
        col: [[uris.get(rel, rel), name] for rel, name in sources] for col, sources in found_columns.items()
    }
    return TaskResult(output=manifest, inputs=tuple(uris.values()), metrics=metrics, columns=columns)


# ------------------------------------------------------------------------------- spark: validate


class _Recorder:
    """A DuckDB cursor over empty tables of the inputs' schemas that notes every query the rule
    evaluator sends. Its counts answer 1 instead of 0, so the evaluator also sends the sample queries
    it would send for failing rules: the job runs all of them, the finish call uses what it needs."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.queries: list[tuple[str, dict[str, Any]]] = []
        self.description: list[tuple[str]] | None = None
        self._cursor: Any = None

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> _Recorder:
        if sql not in {q for q, _ in self.queries}:
            self.queries.append((sql, dict(params or {})))
        self._cursor = self.session.con.execute(sql, params or None)
        self.description = [(d[0],) for d in self._cursor.description or []]
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        row = self._cursor.fetchone()
        return None if row is None else tuple(1 if v == 0 and isinstance(v, int) else v for v in row)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._cursor.fetchall())


class _Replay:
    """The rule evaluator's cursor answered from the job's results, by the DuckDB query sent."""

    def __init__(self, answers: Mapping[str, dict[str, Any]]) -> None:
        self.answers = answers
        self.description: list[tuple[str]] | None = None
        self._rows: list[tuple[Any, ...]] = []

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> _Replay:
        from udop_transforms.spark_entry import decode_value

        if sql not in self.answers:
            raise FatalError(
                "the job's check results do not answer a rule query (was the job spec "
                "written by another udop version?)"
            )
        found = self.answers[sql]
        self.description = [(name,) for name in found["columns"]]
        self._rows = [tuple(decode_value(v) for v in row) for row in found["rows"]]
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._rows)


class _RuleShim:
    """What ``evaluate_rules`` uses of a ``Session``: ``describe`` (binding) and ``con``."""

    def __init__(self, con: Any, session: Session | None = None) -> None:
        self.con, self.session = con, session

    def describe(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        return self.session.describe(sql, params) if self.session is not None else []


def checks_uri(output_uri: str) -> str:
    """Where a spark validate job writes its check results: beside the task's output folder."""
    return output_uri.rstrip("/") + ".checks/"


def _rules(
    context: TaskContext, task: Any, session: Any, columns: list[Any], now: datetime | None = None
) -> list[CheckResult]:
    from udop_transforms._checks import RuleError, evaluate_rules

    params = Params(context.template_scope())
    try:
        return evaluate_rules(
            cast(Session, session),
            ident(task.primary_input),
            columns,
            list(task.rules),
            params,
            sample_rows=task.sample_rows,
            logical_date=context.logical_date,
            now=now,
        )
    except RuleError as exc:
        raise FatalError(f"task {task.id!r}: {exc}") from None


def prepare_spark_validate(
    context: TaskContext, task: Any, inputs: Mapping[str, TaskResult], *, s3: Any, output_uri: str
) -> dict[str, Any]:
    """The job spec of a validate task: the rules' queries (DuckDB SQL bound over empty tables of the
    input's schema, transpiled to Spark SQL) and where to write their rows."""
    from udop.redaction import MASK

    files, base_paths, schemas = _s3_inputs(task, inputs, s3=s3)
    with Session(context=context) as session:
        columns: dict[str, Any] = {}
        for dep, schema in schemas.items():
            holder = f"_schema_{dep}"
            session.con.register(holder, schema.empty_table())
            columns[dep] = session.register_view(dep, ident(holder))
        recorder = _Recorder(session)
        _rules(context, task, _RuleShim(recorder, session), columns[task.primary_input])
        queries = []
        for sql, params in recorder.queries:
            try:
                queries.append({"sql": to_dialect(sql, columns, "spark"), "params": encode_params(params)})
            except EngineError as exc:
                raise FatalError(f"task {task.id!r}: rules: engine spark: {exc}") from None
    masking = getattr(context.pipeline.spec, "masking", None)
    manifest = inputs[task.primary_input].output
    assert manifest is not None  # _s3_inputs refused an input without a dataset
    return {
        "queries": queries,
        "duckdb_queries": [sql for sql, _ in recorder.queries],
        "inputs": files,
        "base_paths": base_paths,
        "results": checks_uri(output_uri),
        "output": output_uri,
        "mask": {
            "columns": [c.lower() for c in (masking.columns if masking else ())],
            "patterns": list(masking.patterns if masking else ()),
            "text": MASK,
        },
        "input_manifest": manifest.to_dict(),
        "relation": [c[0] for c in columns[task.primary_input]],
    }


def _copy_through(s3: Any, manifest: Manifest, output_uri: str) -> Manifest:
    """The validated dataset at the task's own location (server-side copies), as a duckdb validate
    passes it through; a source read in place passes through as its snapshot."""
    if manifest.format == SNAPSHOT_FORMAT:
        return manifest
    found = list_s3(s3, manifest.uri.rstrip("/") + "/*")
    out_bucket, _, out_prefix = output_uri.removeprefix("s3://").partition("/")
    src_prefix = manifest.uri.removeprefix("s3://").partition("/")[2].rstrip("/") + "/"
    for f in found:
        bucket, _, key = f.path.removeprefix("s3://").partition("/")
        target = out_prefix.rstrip("/") + "/" + key.removeprefix(src_prefix)
        s3.copy_object(Bucket=out_bucket, Key=target, CopySource={"Bucket": bucket, "Key": key})
    return Manifest(
        uri=output_uri,
        rows=manifest.rows,
        bytes=manifest.bytes,
        schema_fingerprint=manifest.schema_fingerprint,
        format=manifest.format,
        files=len(found),
    )


def finish_spark_validate(
    context: TaskContext,
    task: Any,
    spec: Mapping[str, Any],
    *,
    s3: Any,
    job_run: Mapping[str, Any],
    emr: Any = None,
) -> TaskResult:
    """The check results from the rows the job wrote (the rule evaluator replayed over them); an
    ``error`` rule that failed raises ``DataQualityError`` carrying them, as a duckdb validate does."""
    from udop_transforms._tasks import _quality_error

    found = list_s3(s3, str(spec["results"]).rstrip("/") + "/*")
    if not found:
        raise FatalError(f"task {task.id!r}: the Spark job wrote no check results at {spec['results']}")
    text = "".join(
        s3.get_object(Bucket=b, Key=k)["Body"].read().decode()
        for b, _, k in (f.path.removeprefix("s3://").partition("/") for f in found)
    )
    document = json.loads(text)
    answers = dict(zip(spec["duckdb_queries"], document["results"], strict=True))
    names = list(spec["relation"])
    # a freshness rule measures age at the time the job counted, not now (the record call runs later)
    counted_at = datetime.fromisoformat(document["counted_at"]) if document.get("counted_at") else None
    checks = _rules(context, task, _RuleShim(_Replay(answers)), [(n, "") for n in names], now=counted_at)
    if any(not c.passed and c.severity == "error" for c in checks):
        raise _quality_error(task.id, checks)
    upstream = Manifest.from_dict(spec["input_manifest"])
    output = _copy_through(s3, upstream, str(spec["output"]))
    metrics: dict[str, Any] = {
        "rows": output.rows,
        "rules_failed_warn": sum(not c.passed for c in checks),
        "engine": "spark",
    }
    metrics.update(_emr_cost(emr, job_run))
    columns = {n: [[upstream.uri, n]] for n in names}
    return TaskResult(
        output=output, checks=tuple(checks), inputs=(upstream.uri,), metrics=metrics, columns=columns
    )


#: found by the task runner through the entry point group ``udop.engine_jobs`` (the core never imports
#: a layer by name): the calls before and after an EMR Serverless job run (``*_validate``: a validate
#: task's; they take the task's context)
SPARK = {
    "prepare": prepare_spark,
    "finish": finish_spark,
    "prepare_validate": prepare_spark_validate,
    "finish_validate": finish_spark_validate,
}


# ------------------------------------------------------------------------------------------ athena

#: Arrow types as Glue/Hive column types (what Athena reads Parquet columns as)
_HIVE_TYPES = {
    "int8": "tinyint",
    "int16": "smallint",
    "int32": "int",
    "int64": "bigint",
    "uint8": "smallint",
    "uint16": "int",
    "uint32": "bigint",
    "float": "float",
    "double": "double",
    "bool": "boolean",
    "string": "string",
    "large_string": "string",
    "string_view": "string",
    "date32[day]": "date",
    "binary": "binary",
    "large_binary": "binary",
}


def _hive_type(arrow_type: Any) -> str:
    import pyarrow as pa

    if pa.types.is_decimal(arrow_type):
        return f"decimal({arrow_type.precision},{arrow_type.scale})"
    if pa.types.is_timestamp(arrow_type):
        return "timestamp"
    name = str(arrow_type)
    if name not in _HIVE_TYPES:
        raise FatalError(f"a {name} column has no Athena table type udop maps; cast it in an earlier task")
    return _HIVE_TYPES[name]


def glue_table_name(pipeline: str, run_id: str, dep: str) -> str:
    """One table per input dataset of a run: lower case, letters, digits and '_' (Glue's rules)."""
    import re

    return re.sub(r"[^a-z0-9_]", "_", f"udop_{pipeline}_{run_id}_{dep}".lower())[:255]


#: Athena's limit on a query string (StartQueryExecution's QueryString, 262,144 bytes)
ATHENA_QUERY_MAX_BYTES = 262_144


def _is_snapshot(result: TaskResult | None) -> bool:
    return result is not None and result.output is not None and result.output.format == SNAPSHOT_FORMAT


def _athena_input(task: Any, dep: str, result: TaskResult | None, s3: Any) -> tuple[str, Any, bool]:
    """(Glue table location, Parquet objects, hive folders?) of one input of an athena task: a task's
    Parquet output under the run's prefix, or the objects a snapshot of a source read in place names
    (the location is their common folder; the query keeps to exactly those objects)."""
    manifest = result.output if result is not None else None
    if manifest is not None and manifest.format == SNAPSHOT_FORMAT:
        snap = read_snapshot(manifest)
        paths = [f.path for f in snap.files]
        if not paths:
            raise FatalError(f"task {task.id!r}: input {dep!r} has no files at {snap.path}")
        buckets = {p.removeprefix("s3://").partition("/")[0] for p in paths}
        if not all(p.startswith("s3://") for p in paths) or len(buckets) != 1:
            raise FatalError(
                f"task {task.id!r}: engine athena reads sources in place from one S3 bucket; input {dep!r} "
                f"reads {snap.path} (set materialize: true on its extract)"
            )
        folders = [p.split("/")[:-1] for p in paths]  # ['s3:', '', bucket, folder...]
        common = folders[0]
        for parts in folders[1:]:
            common = common[: next((i for i, (a, b) in enumerate(zip(common, parts, strict=False)) if a != b),
                                   min(len(common), len(parts)))]
        location = "/".join(common) + "/"
        hive = snap.hive_partitioning is not False and bool(_hive_keys(location, snap.files))
        return location, snap.files, hive
    if manifest is not None and manifest.format == "parquet" and manifest.uri.startswith("s3://"):
        found = list_s3(s3, manifest.uri.rstrip("/") + "/*")
        if not found:
            raise FatalError(f"task {task.id!r}: input {dep!r} has no files at {manifest.uri}")
        return manifest.uri.rstrip("/") + "/", found, False
    raise FatalError(
        f"task {task.id!r}: engine athena reads Parquet on S3 (a task's output or a source read in place); "
        f"input {dep!r} is {'nothing' if manifest is None else manifest.format + ' at ' + manifest.uri}"
    )


def _hive_keys(location: str, files: Any) -> list[str]:
    """The ``key=value`` folder keys between ``location`` and the files, in order (as DuckDB adds them)."""
    keys: list[str] = []
    for f in files:
        for part in f.path.removeprefix(location).split("/")[:-1]:
            name, eq, _ = part.partition("=")
            if eq and name and name not in keys:
                keys.append(name)
    return keys


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _in_place_select(table: str, files: list[str], columns: list[str], keys: list[str]) -> str:
    """A source read in place as Athena reads it: the table's rows from exactly the snapshot's objects
    (``"$path"``, the object each row comes from), each hive key's value cut from that path (text, as
    the ``s3`` connector reads it)."""
    items = [_quote(c) for c in columns]
    items += [f"regexp_extract(\"$path\", {_literal('/' + k + '=([^/]*)/')}, 1) AS {_quote(k)}" for k in keys]
    listed = ", ".join(_literal(f) for f in files)
    return f'SELECT {", ".join(items)} FROM {table} WHERE "$path" IN ({listed})'


def prepare_athena(
    context: TaskContext,
    task: Any,
    inputs: Mapping[str, TaskResult],
    *,
    s3: Any,
    output_uri: str,
    glue: Any,
    database: str,
) -> dict[str, Any]:
    """Register a Glue table per input dataset and answer the ``UNLOAD`` query writing the task's
    output as Parquet under ``output_uri`` (plus what ``finish_athena`` needs)."""
    from sqlglot import exp, parse_one

    tables: dict[str, str] = {}
    schemas: dict[str, Any] = {}
    in_place: dict[str, tuple[list[str], list[str], list[str]]] = {}  # files, file columns, hive keys
    table_inputs: list[dict[str, Any]] = []  # registered once the query is made (nothing left on an error)
    for dep in data_inputs(task):
        location, found, hive = _athena_input(task, dep, inputs.get(dep), s3)
        try:
            _, schemas[dep] = s3_footers(s3, found, hive)
        except FatalError as exc:
            raise FatalError(f"task {task.id!r}: engine athena: input {dep!r}: {exc}") from None
        keys: list[str] = []  # the hive keys s3_footers appended after the footer's own columns
        folder_keys = _hive_keys(location, found) if hive else []
        for field in reversed(schemas[dep]):
            if field.name not in folder_keys or field.name in keys:
                break
            keys.insert(0, field.name)
        file_columns = [f for f in schemas[dep] if f.name not in keys]
        if _is_snapshot(inputs.get(dep)):
            in_place[dep] = ([f.path for f in found], [f.name for f in file_columns], keys)
        name = glue_table_name(context.pipeline.metadata.name, context.run_id, dep)
        try:
            columns = [{"Name": f.name, "Type": _hive_type(f.type)} for f in file_columns]
        except FatalError as exc:
            raise FatalError(f"task {task.id!r}: engine athena: input {dep!r}: {exc}") from None
        table = {
            "Name": name,
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {"classification": "parquet", "udop:run": context.run_id},
            "StorageDescriptor": {
                "Columns": columns,
                "Location": location,
                "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
                "OutputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
                "SerdeInfo": {
                    "SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
                },
            },
        }
        table_inputs.append(table)
        tables[dep] = name
    with Session(context=context) as session:
        relations = {}
        for dep, schema in schemas.items():
            holder = f"_schema_{dep}"
            session.con.register(holder, schema.empty_table())
            relations[dep] = session.register_view(dep, ident(holder))
        params = Params(context.template_scope())
        try:
            plan = compile_steps(session, list(task.steps), task.primary_input, relations, params)
        except StepError as exc:
            raise FatalError(f"task {task.id!r}: {exc}") from None
        query = plan.query()
    try:
        athena_sql = to_dialect(query, relations, "athena")
    except ValueError as exc:
        raise FatalError(f"task {task.id!r}: engine athena: {exc}") from None
    tree = parse_one(athena_sql, read="athena")
    for node in list(tree.find_all(exp.Table)):
        if node.name in tables and not node.args.get("db"):
            dep, alias = node.name, node.alias or node.name
            table_sql = f"{_quote(database)}.{_quote(tables[dep])}"
            if dep in in_place:  # exactly the snapshot's files, hive folders' values as columns
                node.replace(parse_one(f"({_in_place_select(table_sql, *in_place[dep])}) AS {_quote(alias)}",
                                       read="athena"))
            else:
                node.set("this", exp.to_identifier(tables[dep], quoted=True))
                node.set("db", exp.to_identifier(database, quoted=True))
                if not node.alias:
                    node.set("alias", exp.TableAlias(this=exp.to_identifier(dep, quoted=True)))
    select = tree.sql("athena")
    location = output_uri.replace("'", "''")
    unload = f"UNLOAD ({select}) TO '{location}' WITH (format = 'PARQUET', compression = 'ZSTD')"
    if len(unload.encode()) > ATHENA_QUERY_MAX_BYTES:
        raise FatalError(
            f"task {task.id!r}: engine athena: the query naming the files of its inputs read in place is "
            f"{len(unload.encode())} bytes, over Athena's {ATHENA_QUERY_MAX_BYTES}: set materialize: true "
            "on the extract of the input with the most files"
        )
    for table in table_inputs:
        try:
            glue.create_table(DatabaseName=database, TableInput=table)
        except glue.exceptions.AlreadyExistsException:  # a retried prepare: same run, same table
            glue.update_table(DatabaseName=database, TableInput=table)
    return {
        "query": unload,
        "output": output_uri,
        "tables": sorted(tables.values()),
        "database": database,
        "duckdb_query": query,
        "relations": {name: [c[0] for c in cols] for name, cols in relations.items()},
        "input_uris": {dep: inputs[dep].output.uri for dep in tables},  # type: ignore[union-attr]
    }


def finish_athena(
    task: Any, spec: Mapping[str, Any], *, s3: Any, job_run: Mapping[str, Any], glue: Any = None
) -> TaskResult:
    """The task's result from the Parquet ``UNLOAD`` wrote (its files have no extension); the run's
    Glue tables are dropped; the query's bytes scanned are the task's cost."""
    manifest = _output_manifest(s3, spec, "*")  # UNLOAD's files have no extension
    rows = manifest.rows
    metrics: dict[str, Any] = {"rows": rows, "engine": "athena"}
    if job_run.get("query_execution_id"):
        metrics["athena_query_execution_id"] = str(job_run["query_execution_id"])
    if job_run.get("bytes_scanned") is not None:
        metrics["athena_bytes_scanned"] = int(job_run["bytes_scanned"])
    if glue is not None:
        for name in spec.get("tables", []):
            with contextlib.suppress(glue.exceptions.EntityNotFoundException):
                glue.delete_table(DatabaseName=spec["database"], Name=name)
    uris: Mapping[str, str] = spec.get("input_uris", {})
    found_columns = column_lineage(str(spec["duckdb_query"]), dict(spec.get("relations", {})))
    columns = {
        col: [[uris.get(rel, rel), name] for rel, name in sources] for col, sources in found_columns.items()
    }
    return TaskResult(output=manifest, inputs=tuple(uris.values()), metrics=metrics, columns=columns)


ATHENA = {"prepare": prepare_athena, "finish": finish_athena}
