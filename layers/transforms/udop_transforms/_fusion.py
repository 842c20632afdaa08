"""Fusion: a transform whose output only a file load, or a load into a SQL database, reads runs inside
that load's query.

The transform records a *view* instead of writing Parquet: ``_view.json`` in its output folder names
the task and the inputs it read (their manifests, so snapshots are checked as for any reader), and
its manifest carries the schema fingerprint its query produces. The load then writes
``COPY (SELECT * FROM (<the transform's query>)) TO <target>``: one DuckDB query from the sources to
the target, with projections and filters pushed into the source scan, no intermediate table.

``run_fused`` runs the pair in one attempt (the local executor calls it through the entry point group
``udop.task_chains``); each task still gets its own result: the transform's rows are the rows the
load wrote. A load that runs on its own later (a retry, a resume after a crash between the two)
finds the view and runs the transform's query again inside its own.

A load into a SQL database (``postgres``, ``mysql``/``mariadb``, ``sqlite``) fuses in the local executor
too: DuckDB's result of the transform's query goes as Arrow batches straight into the connector's write
(PostgreSQL: ``COPY``), in the load's one transaction with its ledger entry, instead of through Parquet.
The compiler (AWS) keeps ``udop.spec.data_tasks.fusable``: file loads only.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from udop.lineage.columns import ColumnLineage, column_lineage
from udop.spec.data_tasks import SqlStep, data_inputs
from udop.spec.data_tasks import fusable as _shared_fusable
from udop.tasks.contract import Manifest, TaskContext, TaskResult
from udop_transforms._engine import Column, Session, publish_dir, query_fingerprint, scratch_dir
from udop_transforms._views import VIEW_FORMAT, VIEW_NAME, compile_transform, keep_compiled, view_query

__all__ = ["SQL_TARGETS", "VIEW_FORMAT", "VIEW_NAME", "fusable", "run_fused", "view_query"]

#: database connectors whose load takes the transform's rows as they come and writes each of them once
#: (``rows_written`` is the transform's row count, as a file load's is)
SQL_TARGETS = frozenset({"postgres", "mysql", "mariadb", "sqlite"})


def fusable(transform: Any, load: Any) -> bool:
    """The local executor's rule: ``udop.spec.data_tasks.fusable`` with loads into ``SQL_TARGETS`` too."""
    return _shared_fusable(transform, load, databases=SQL_TARGETS)


def run_fused(context: TaskContext, task: Any, inputs: Mapping[str, TaskResult],
              load_context: TaskContext, load: Any) -> tuple[TaskResult, TaskResult]:
    """The transform ``task`` and the file ``load`` reading it, as one query: (transform's result,
    load's result). Raises whatever either raises; the caller then runs the transform on its own, so
    that an error is reported by the task it belongs to."""
    from udop_transforms._tasks import run_load

    view = _record_view(context, task, inputs, load.id)
    loaded = run_load(load_context, load, {task.id: view})
    rows = loaded.metrics.get("rows_written")
    rows = rows if isinstance(rows, int) else None
    assert view.output is not None
    output = dataclasses.replace(view.output, rows=rows)
    return dataclasses.replace(view, output=output, metrics={**view.metrics, "rows": rows}), loaded


#: a stream's transform compiled over its batches' schema, by (task, its definition, the inputs' schema
#: fingerprints): (query, parameters, its columns, its schema fingerprint, its column lineage). Only
#: stream batches (``_tasks._known_batch_columns``: their columns follow from their schema alone) and
#: queries without bound parameters (whose text and columns depend on nothing but the steps and the
#: input columns) are kept; a batch of another schema compiles again.
_COMPILED: dict[tuple[str, ...], tuple[str, dict[str, Any], list[Column], str | None, ColumnLineage]] = {}
_COMPILED_LOCK = threading.Lock()


def _compiled_key(context: TaskContext, task: Any,
                  inputs: Mapping[str, TaskResult]) -> tuple[str, ...] | None:
    from udop_transforms._tasks import _known_batch_schema

    fingerprints = []
    for dep in data_inputs(task):
        fp = _known_batch_schema(context, dep, inputs)
        if fp is None:
            return None
        fingerprints.append(f"{dep}={fp}")
    if not fingerprints or task.memory_limit or any(isinstance(step, SqlStep) for step in task.steps):
        return None  # a sql step may read more than the inputs (a file whose schema may change)
    return (task.id, task.model_dump_json(), *fingerprints)


def _record_view(context: TaskContext, task: Any, inputs: Mapping[str, TaskResult],
                 load_id: str) -> TaskResult:
    from udop_transforms._tasks import _column_uris, _input_manifest, _register_inputs

    key = _compiled_key(context, task, inputs)
    with _COMPILED_LOCK:
        known = _COMPILED.get(key) if key is not None else None
    if known is not None:  # a stream's earlier batch of the same schema compiled this
        sql, params, described, schema_fp, lineage = known
    else:
        with Session(memory_limit=task.memory_limit, context=context) as session:
            columns, sql, params = compile_transform(session, context, task, inputs, widen=False,
                                                     register=_register_inputs)
            described = session.describe(f"SELECT * FROM ({sql})", params)
            schema_fp = query_fingerprint(session, f"SELECT * FROM ({sql})", params, columns=described)
        relations = {name: [c[0] for c in cols] for name, cols in columns.items()}
        lineage = column_lineage(sql, relations)
        if key is not None and not params:  # parameters (run dates, a secret salt) may differ per run
            with _COMPILED_LOCK:
                if len(_COMPILED) >= 64:
                    _COMPILED.clear()
                _COMPILED[key] = (sql, params, described, schema_fp, lineage)
    recipe = {"version": 1, "task": task.id, "attempt": context.attempt,
              "inputs": {d: _input_manifest(task.id, d, inputs).to_dict() for d in data_inputs(task)}}
    final = Path(context.output_uri)
    tmp = scratch_dir(final)
    text = json.dumps(recipe, indent=1)
    try:
        (tmp / VIEW_NAME).write_text(text)
        publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # the load about to run in this attempt reads the view: it need not compile the steps again
    keep_compiled(final / VIEW_NAME, text, list(described), sql, dict(params))
    manifest = Manifest(uri=context.output_uri, rows=None, bytes=0, schema_fingerprint=schema_fp,
                        format=VIEW_FORMAT, files=0)
    return TaskResult(output=manifest,
                      inputs=tuple(_input_manifest(task.id, d, inputs).uri for d in data_inputs(task)),
                      metrics={"rows": None, "fused_into": load_id},
                      columns=_column_uris(task, inputs, lineage))
