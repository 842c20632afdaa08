"""Check every data task of a pipeline before it runs (``udop validate`` and the start of ``udop run``).

Schemas flow through the DAG: an extract's schema is read from its source files when they exist
(metadata only), a transform's is what its steps bind to over empty tables of its inputs' schemas, and
a validate passes its input's through. Where a schema is unknown (a python task, a database source,
a path with ``${...}`` or files made during the run) only the syntax is checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from udop.errors import SpecError
from udop.sandbox import SandboxViolation, current
from udop.spec.data_tasks import (
    FILE_CONNECTORS,
    AggregateStep,
    CastStep,
    CheckStep,
    DedupeSpec,
    DeriveStep,
    DistinctStep,
    ExpectRule,
    FilterStep,
    SortStep,
    SqlStep,
    data_inputs,
    rule_kind,
    step_kind,
)
from udop.spec.params import REFERENCE, coerce_param
from udop_transforms._checks import RuleError, bind_rules
from udop_transforms._engine import Column, Session
from udop_transforms._files import SNIFF_ROWS, diagnose_csv, matching_files, reader_sql
from udop_transforms._sql import Params, check_expression, clean_error, ident, missing_column_message
from udop_transforms._steps import SORT_ITEM, Plan, StepError, compile_steps

__all__ = ["check_pipeline"]


class _AnyEnv(Mapping[str, Any]):
    """Environment variables at check time: one that is not set now may be set where the run happens."""

    def __getitem__(self, key: str) -> Any:
        return os.environ.get(key)

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(os.environ)

    def __len__(self) -> int:
        return len(os.environ)


def _scope(pipeline: Any) -> dict[str, Mapping[str, Any]]:
    params: dict[str, Any] = {}
    for name, spec in pipeline.spec.params.items():
        try:
            params[name] = None if spec.default is None else coerce_param(name, spec, spec.default)
        except Exception:  # a bad default is the loader's error to report, not ours
            params[name] = None
    now = datetime.now(UTC)
    run = {"id": "check", "logical_date": now.date().isoformat(), "logical_ts": now.isoformat(),
           "attempt": 1, "pipeline": pipeline.metadata.name, "task": ""}
    return {"params": params, "run": run, "env": _AnyEnv()}


def _order(pipeline: Any) -> list[tuple[int, Any]]:
    tasks = list(enumerate(pipeline.spec.tasks))
    done: set[str] = set()
    out: list[tuple[int, Any]] = []
    progress = True
    while progress:
        progress = False
        for index, task in tasks:
            if task.id not in done and all(d in done for d in task.depends_on):
                done.add(task.id)
                out.append((index, task))
                progress = True
    return out  # tasks in a cycle are left out: the DAG check reports the cycle


def check_pipeline(pipeline: Any, base_dir: str | Path | None = None) -> list[SpecError]:
    """Every problem found in the data tasks of ``pipeline``, each a located one-line ``SpecError``."""
    if not any(t.type in ("extract", "transform", "validate", "load") for t in pipeline.spec.tasks):
        return []
    errors: list[SpecError] = []
    schemas: dict[str, list[Column] | None] = {}
    scope = _scope(pipeline)
    base = Path(base_dir) if base_dir is not None else Path(".")
    with Session() as session:
        for index, task in _order(pipeline):
            where = f"spec.tasks[{index}]"
            found: list[SpecError] = []
            schema: list[Column] | None = None
            if task.type in ("extract", "load"):
                _check_connector(task, where, found)
            if task.type == "extract":
                schema = _extract_schema(session, task, base, where, found)
            elif task.type == "transform":
                found += _engine_step_errors(task, where)
                if not found:
                    schema = _check_transform(session, task, schemas, scope=scope, where=where, found=found)
            elif task.type == "validate":
                schema = schemas.get(task.primary_input)
                _check_rules(session, task, list(task.rules), schema, scope=scope, where=f"{where}.rules",
                             found=found)
            elif task.type == "load":
                schema = schemas.get(task.primary_input)
                if schema is not None and task.target.connector in FILE_CONNECTORS:
                    names = [c[0] for c in schema]
                    for col in task.target.partition_by or []:
                        if col not in names:
                            found.append(SpecError(f"task {task.id!r}: "
                                                   + missing_column_message(col, names, " for partition_by"),
                                                   path=f"{where}.target.partition_by"))
            # a validate's or load's own errors do not change the data that flows on
            schemas[task.id] = None if found and task.type in ("extract", "transform") else schema
            errors += found
    return errors


def _check_connector(task: Any, where: str, found: list[SpecError]) -> None:
    spec, field = (task.source, "source") if task.type == "extract" else (task.target, "target")
    if spec.connector in FILE_CONNECTORS:
        return
    try:
        from udop.connectors import available_connectors
    except ImportError:
        known: list[str] = []
    else:
        known = list(available_connectors())
    if spec.connector not in known:
        names = ", ".join([*FILE_CONNECTORS, *known])
        found.append(SpecError(f"task {task.id!r}: unknown connector {spec.connector!r} (installed: {names})",
                               path=f"{where}.{field}.connector"))


def _extract_schema(session: Session, task: Any, base: Path, where: str,
                    found: list[SpecError]) -> list[Column] | None:
    source = task.source
    if source.connector not in FILE_CONNECTORS or REFERENCE.search(source.path or ""):
        return None
    path = source.path if os.path.isabs(source.path) else str(base / source.path)
    try:
        # on a server a path outside the roots is not even looked at (the policy check reports it)
        files = current().confine_files(matching_files(current().confine(path, what="source.path")),
                                        what="source.path")
    except SandboxViolation:
        return None
    if not files:
        return None  # may be written by an earlier task or exist where the run happens
    if source.connector == "csv" and (ragged := diagnose_csv(files, source.delimiter or ",", SNIFF_ROWS, 20)):
        found.append(SpecError(f"task {task.id!r}: cannot read the source: {ragged}",
                               path=f"{where}.source.path"))
        return None
    try:
        return session.describe(f"SELECT * FROM {reader_sql(source.connector, path, source)}")
    except duckdb.Error as exc:
        ragged = diagnose_csv(files, source.delimiter or ",") if source.connector == "csv" else None
        found.append(SpecError(f"task {task.id!r}: cannot read the source: {ragged or clean_error(exc)}",
                               path=f"{where}.source.path"))
        return None


def _empty_inputs(session: Session, task: Any, schemas: Mapping[str, list[Column] | None]
                  ) -> dict[str, list[Column]] | None:
    needed = data_inputs(task)
    if not all(schemas.get(d) is not None for d in needed):
        return None
    columns = {}
    try:
        for dep in needed:
            cols = schemas[dep]
            assert cols is not None
            table = ident(f"_empty_{dep}")
            body = ", ".join(f"{ident(n)} {t}" for n, t in cols)
            session.con.execute(f"CREATE OR REPLACE TEMP TABLE {table} ({body})")
            columns[dep] = session.register_view(dep, table)
    except duckdb.Error:
        return None  # a type we cannot spell back: fall back to the syntax check
    return columns


def _check_transform(session: Session, task: Any, schemas: Mapping[str, list[Column] | None], *,
                     scope: Mapping[str, Mapping[str, Any]], where: str,
                     found: list[SpecError]) -> list[Column] | None:
    params = Params(scope)
    columns = _empty_inputs(session, task, schemas)
    if columns is None:
        for index, message in _syntax_errors(task, params):
            found.append(SpecError(f"task {task.id!r}, {step_kind(task.steps[index])} step: {message}",
                                   path=f"{where}.steps[{index}]"))
        return None

    def on_check(index: int, rules: list[Any], plan: Plan) -> None:
        try:
            bind_rules(session, f"({plan.query()})", plan.columns, rules, params)
        except RuleError as exc:
            raise ValueError(str(exc)) from None

    try:
        plan = compile_steps(session, list(task.steps), task.primary_input, columns, params,
                             on_check=on_check, resolve_secrets=False)
    except StepError as exc:
        found.append(SpecError(f"task {task.id!r}, {exc.kind} step: {exc.message}",
                               path=f"{where}.steps[{exc.index}]"))
        return None
    if task.engine != "duckdb":
        # sqlglot only for another engine: its import is ~0.1 s of a DuckDB run's start
        from udop_transforms._dialects import first_unsupported_step

        bad = first_unsupported_step(plan.history, columns, task.engine)
        if bad is not None:
            index, kind, message = bad
            found.append(SpecError(f"task {task.id!r}, {kind} step: engine {task.engine}: {message}",
                                   path=f"{where}.steps[{index}]"))
            return None
    return plan.columns


def _engine_step_errors(task: Any, where: str) -> list[SpecError]:
    """Steps no engine but DuckDB runs, whatever the schemas: a ``check`` step materialises the data
    so far inside the task's own DuckDB session."""
    if getattr(task, "engine", "duckdb") == "duckdb":
        return []
    return [SpecError(f"task {task.id!r}, check step: engine {task.engine}: check steps run on duckdb only; "
                      f"put the rules in a validate task with engine: {task.engine}",
                      path=f"{where}.steps[{index}]")
            for index, step in enumerate(task.steps) if isinstance(step, CheckStep)]


def _check_rules(session: Session, task: Any, rules: list[Any], schema: list[Column] | None, *,
                 scope: Mapping[str, Mapping[str, Any]], where: str, found: list[SpecError]) -> None:
    params = Params(scope)
    if schema is None:
        for index, rule in enumerate(rules):
            if isinstance(rule, ExpectRule):
                try:
                    check_expression(params.bind(rule.expect))
                except ValueError as exc:
                    found.append(SpecError(f"task {task.id!r}, expect rule: {exc}", path=f"{where}[{index}]"))
        return
    table = ident(f"_empty_{task.id}")
    body = ", ".join(f"{ident(n)} {t}" for n, t in schema)
    try:
        session.con.execute(f"CREATE OR REPLACE TEMP TABLE {table} ({body})")
        compiled = bind_rules(session, table, schema, rules, params)
        if task.engine != "duckdb":
            from udop_transforms._dialects import EngineError, to_dialect

            name = f"_empty_{task.id}"
            for row in compiled.rows:
                sql = f"SELECT count(*) FILTER (WHERE {row.predicate}) FROM {table}"
                try:
                    to_dialect(sql, {name: schema}, task.engine)
                except EngineError as bad:
                    raise RuleError(row.index, rule_kind(rules[row.index]),
                                    f"engine {task.engine}: {bad}") from None
    except RuleError as exc:
        found.append(SpecError(f"task {task.id!r}, {exc.kind} rule: {exc.message}",
                               path=f"{where}[{exc.index}]"))
    except duckdb.Error:
        pass


def _syntax_errors(task: Any, params: Params) -> Iterator[tuple[int, str]]:
    """Without input schemas: each expression must parse, each ``${...}`` must be bindable."""
    for index, step in enumerate(task.steps):
        texts: list[str] = []
        if isinstance(step, FilterStep):
            texts = [step.filter]
        elif isinstance(step, DeriveStep):
            texts = list(step.derive.values())
        elif isinstance(step, AggregateStep):
            texts = [m for m in step.aggregate.metrics.values() if isinstance(m, str)]
        elif isinstance(step, SortStep | DistinctStep):
            items = step.sort if isinstance(step, SortStep) else (
                step.distinct.order_by if isinstance(step.distinct, DedupeSpec) else [])
            for item in items:
                m = SORT_ITEM.match(item.strip())
                texts.append(m.group("expr") if m else item)
        elif isinstance(step, CastStep):
            texts = [f"CAST(NULL AS {t})" for t in step.cast.values()]
        elif isinstance(step, CheckStep):
            texts = [r.expect for r in step.check if isinstance(r, ExpectRule)]
        elif isinstance(step, SqlStep):
            try:
                statements = duckdb.extract_statements(params.bind(step.sql.strip().rstrip(";")))
            except (duckdb.Error, ValueError) as exc:
                yield index, clean_error(exc)
                continue
            if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
                yield index, "a sql step is exactly one SELECT statement"
            continue
        for text in texts:
            try:
                check_expression(params.bind(text))
            except ValueError as exc:
                yield index, str(exc)
                break
