"""Compile a transform's steps to ONE DuckDB query (a chain of CTEs the optimizer inlines).

Each step is bound as it is added (``DESCRIBE``, no data read), so an unknown column or a type error
names the step that caused it, and the next step knows the columns it starts from.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb

from udop.sandbox import MASK
from udop.spec.data_tasks import (
    AggregateStep,
    CastStep,
    CheckStep,
    DedupeSpec,
    DeriveStep,
    DistinctStep,
    FilterStep,
    JoinStep,
    LimitStep,
    MaskStep,
    RenameStep,
    SelectColumns,
    SelectStep,
    SortStep,
    SqlStep,
    UnionStep,
    step_kind,
)
from udop_transforms._engine import Column, Session
from udop_transforms._sql import Params, check_expression, clean_error, ident, missing_column_message

__all__ = ["Plan", "StepError", "compile_steps", "locate_failure"]

_AGG_SQL = {"sum": "sum({})", "avg": "avg({})", "min": "min({})", "max": "max({})", "count": "count({})",
            "count_distinct": "count(DISTINCT {})"}
SORT_ITEM = re.compile(r"^(?P<expr>.+?)(?:\s+(?P<dir>asc|desc))?(?:\s+nulls\s+(?P<nulls>first|last))?\s*$",
                   re.IGNORECASE | re.DOTALL)


class StepError(Exception):
    """A step that cannot compile or bind; ``index`` is its position in ``steps``."""

    def __init__(self, index: int, kind: str, message: str) -> None:
        self.index, self.kind, self.message = index, kind, message
        super().__init__(f"steps[{index}] ({kind}): {message}")


@dataclass
class Plan:
    """The query built so far: CTEs ending in ``current``, whose columns are ``columns``."""

    session: Session
    params: Params
    current: str
    known: list[Column]  # the columns at the last describe (see ``columns``)
    inputs: dict[str, list[Column]]
    ctes: list[tuple[str, str]] = field(default_factory=list)
    #: (step index, kind, query up to and including that step): to find the step a run-time error is in
    history: list[tuple[int, str, str]] = field(default_factory=list)
    #: steps added since the last successful describe, same shape as ``history``
    pending: list[tuple[int, str, str]] = field(default_factory=list)
    #: a pending step changed the columns: ``columns`` describes the query before answering
    stale: bool = False
    #: resolve secret references (a mask step's salt) while compiling: at run time, not at validate
    resolve_secrets: bool = True

    @property
    def columns(self) -> list[Column]:
        if self.stale:
            self.verify()
        return self.known

    def query(self) -> str:
        if not self.ctes:
            return f"SELECT * FROM {self.current}"
        body = ", ".join(f"{name} AS ({sql})" for name, sql in self.ctes)
        return f"WITH {body} SELECT * FROM {self.current}"

    @property
    def names(self) -> list[str]:
        return [c[0] for c in self.columns]

    def bound_params(self) -> dict[str, Any]:
        return self.params.used_in(self.query())

    def restart(self, relation: str, columns: list[Column]) -> None:
        self.ctes, self.current, self.known, self.stale = [], relation, columns, False

    def verify(self) -> None:
        """Bind the pending steps; learn the columns, or raise ``StepError`` for the first bad step."""
        if not self.pending:
            return
        sql = self.query()
        try:
            columns = self.session.describe(sql, self.params.used_in(sql))
        except duckdb.Error as exc:
            for index, kind, prefix in self.pending[:-1]:
                try:
                    self.session.describe(prefix, self.params.used_in(prefix))
                except duckdb.Error as first:
                    raise StepError(index, kind, clean_error(first)) from None
            index, kind, _ = self.pending[-1]
            raise StepError(index, kind, clean_error(exc)) from None
        names = [c[0] for c in columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            index, kind, _ = next(p for p in reversed(self.pending) if p[1] not in _SAME_COLUMN_KINDS)
            raise StepError(index, kind, f"the result has duplicate column names {', '.join(dupes)}; "
                                         "rename one side first")
        self.known, self.stale = columns, False
        self.pending.clear()


#: called for a ``check`` step: (step index, rules, plan) -> None; may materialize and restart the plan
CheckHook = Callable[[int, list[Any], Plan], None]


#: steps after which the columns are those before
_SAME_COLUMNS = (FilterStep, SortStep, LimitStep, DistinctStep)
_SAME_COLUMN_KINDS = frozenset({"filter", "sort", "limit", "distinct", "mask"})


def compile_steps(session: Session, steps: list[Any], primary: str, inputs: dict[str, list[Column]],
                  params: Params, *, on_check: CheckHook | None = None, verify: bool = True,
                  resolve_secrets: bool = True) -> Plan:
    """Build the plan of ``steps`` over the view ``primary``; ``inputs`` are the views' columns.

    Steps are bound (``DESCRIBE``, no data read) only when a later step needs the columns they
    produce, and at the end; a binding failure is traced back to the first step whose prefix fails.
    With ``verify=False`` the final binding is left to the caller (the run binds the query anyway and
    calls ``plan.verify()`` if it fails), so a task like filter + aggregate needs no describe at all.
    """
    plan = Plan(session, params, ident(primary), list(inputs[primary]), inputs,
                resolve_secrets=resolve_secrets)
    for index, step in enumerate(steps):
        kind = step_kind(step)
        try:
            if isinstance(step, CheckStep):
                plan.verify()
                if on_check is not None:
                    on_check(index, list(step.check), plan)
                continue
            sql = _STEP_SQL[type(step)](plan, step)
        except ValueError as exc:
            raise StepError(index, kind, str(exc)) from None
        plan.ctes.append((f"s{len(plan.ctes)}", sql))
        plan.current = plan.ctes[-1][0]
        plan.history.append((index, kind, plan.query()))
        plan.pending.append((index, kind, plan.query()))
        if not isinstance(step, _SAME_COLUMNS):
            plan.stale = True
    if verify:
        plan.verify()
    return plan


def locate_failure(plan: Plan, max_steps: int = 20) -> tuple[int, str, str] | None:
    """After the whole query failed at run time: the first step whose prefix fails by itself
    (index, kind, message). Reruns prefixes, so only for short step lists; failures only."""
    if len(plan.history) > max_steps:
        return None
    for index, kind, query in plan.history:
        # hash every column so that none is pruned away unevaluated
        probe = f"SELECT min(hash(COLUMNS(*))) FROM ({query})"
        try:
            plan.session.con.execute(probe, plan.params.used_in(probe) or None).fetchall()
        except duckdb.InterruptException:
            raise
        except duckdb.Error as exc:
            return index, kind, clean_error(exc)
    return None


def _unique(names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"the result has duplicate column names {', '.join(dupes)}; rename one side first")


def _need(plan: Plan, names: list[str], where: str = "") -> None:
    for name in names:
        if name not in plan.names:
            raise ValueError(missing_column_message(name, plan.names, where))


def _expr(plan: Plan, text: str) -> str:
    bound = plan.params.bind(text)
    check_expression(bound)
    return bound


def _select(plan: Plan, step: SelectStep) -> str:
    spec = step.select
    if isinstance(spec, SelectColumns) and spec.exclude is not None:
        _need(plan, spec.exclude)
        return f"SELECT * EXCLUDE ({', '.join(map(ident, spec.exclude))}) FROM {plan.current}"
    columns = spec.columns if isinstance(spec, SelectColumns) else spec
    assert columns is not None
    _need(plan, columns)
    _unique(columns)
    return f"SELECT {', '.join(map(ident, columns))} FROM {plan.current}"


def _rename(plan: Plan, step: RenameStep) -> str:
    _need(plan, list(step.rename))
    _unique([step.rename.get(n, n) for n in plan.names])
    pairs = ", ".join(f"{ident(old)} AS {ident(new)}" for old, new in step.rename.items())
    return f"SELECT * RENAME ({pairs}) FROM {plan.current}"


def _cast(plan: Plan, step: CastStep) -> str:
    _need(plan, list(step.cast))
    parts = []
    for column, type_ in step.cast.items():
        expr = f"CAST({ident(column)} AS {type_})"
        try:
            check_expression(expr)
        except ValueError:
            raise ValueError(f"column {column!r}: {type_!r} is not a SQL type "
                             "(e.g. bigint, double, decimal(15,2), date, timestamp, varchar)") from None
        parts.append(f"{expr} AS {ident(column)}")
    return f"SELECT * REPLACE ({', '.join(parts)}) FROM {plan.current}"


def _filter(plan: Plan, step: FilterStep) -> str:
    return f"SELECT * FROM {plan.current} WHERE ({_expr(plan, step.filter)})"


def _derive(plan: Plan, step: DeriveStep) -> str:
    # one SELECT layer per entry: a later entry sees the new value of an earlier (replaced) one; a
    # replaced column keeps its place, new ones are appended
    names = list(plan.names)
    sql = f"SELECT * FROM {plan.current}"
    for name, text in step.derive.items():
        expr = _expr(plan, text)
        if name in names:
            sql = f"SELECT * REPLACE (({expr}) AS {ident(name)}) FROM ({sql})"
        else:
            sql = f"SELECT *, ({expr}) AS {ident(name)} FROM ({sql})"
            names.append(name)
    return sql


def _aggregate(plan: Plan, step: AggregateStep) -> str:
    spec = step.aggregate
    _need(plan, spec.by)
    items = [ident(c) for c in spec.by]
    for name, metric in spec.metrics.items():
        if isinstance(metric, dict):
            ((fn, column),) = metric.items()
            if column == "*" or column in plan.names:
                arg = "*" if column == "*" else ident(column)
            else:  # an expression such as `delay > 15` (a plain unknown name fails binding, located)
                arg = _expr(plan, column)
            expr = _AGG_SQL[fn].format(arg)
        else:
            expr = _expr(plan, metric)
        items.append(f"{expr} AS {ident(name)}")
    _unique([*spec.by, *spec.metrics])
    group = f" GROUP BY {', '.join(map(ident, spec.by))}" if spec.by else ""
    return f"SELECT {', '.join(items)} FROM {plan.current}{group}"


def _join(plan: Plan, step: JoinStep) -> str:
    spec = step.join
    other = plan.inputs[spec.with_]
    other_names = [c[0] for c in other]
    pairs = list(zip(spec.on, spec.on, strict=True)) if isinstance(spec.on, list) else list(spec.on.items())
    for left, right in pairs:
        if left not in plan.names:
            raise ValueError(f"join key {left!r} is missing on the left side; "
                             + missing_column_message(left, plan.names).split("; ", 1)[1])
        if right not in other_names:
            raise ValueError(f"join key {right!r} is missing in {spec.with_!r}; "
                             + missing_column_message(right, other_names).split("; ", 1)[1])
    right_rel = ident(spec.with_)
    how = spec.how
    if how in ("semi", "anti"):
        cond = " AND ".join(f"l.{ident(a)} = r.{ident(b)}" for a, b in pairs)
        return f"SELECT l.* FROM {plan.current} AS l {how.upper()} JOIN {right_rel} AS r ON {cond}"
    suffix = spec.suffix if spec.suffix is not None else f"_{spec.with_}"
    right_keys = {b for _, b in pairs}
    left_keys = {a for a, _ in pairs}
    cond = " AND ".join(f"l.{ident(a)} = r.{ident(b)}" for a, b in pairs)
    items = []
    names = list(plan.names)
    for name in names:
        if name in left_keys and how in ("right", "full"):
            b = next(b for a, b in pairs if a == name)
            items.append(f"coalesce(l.{ident(name)}, r.{ident(b)}) AS {ident(name)}")
        else:
            items.append(f"l.{ident(name)}")
    for name in other_names:
        if name in right_keys:
            continue  # equal to the left key (or merged into it)
        alias = name + suffix if name in plan.names else name
        items.append(f"r.{ident(name)} AS {ident(alias)}")
        names.append(alias)
    _unique(names)
    sql_how = {"inner": "INNER", "left": "LEFT", "right": "RIGHT", "full": "FULL OUTER"}[how]
    return f"SELECT {', '.join(items)} FROM {plan.current} AS l {sql_how} JOIN {right_rel} AS r ON {cond}"


def _union(plan: Plan, step: UnionStep) -> str:
    spec = step.union
    op = ("UNION" if spec.distinct else "UNION ALL") + (" BY NAME" if spec.by_name else "")
    parts = [f"SELECT * FROM {plan.current}", *(f"SELECT * FROM {ident(w)}" for w in spec.with_)]
    return f" {op} ".join(parts)


def _order_items(plan: Plan, items: list[str]) -> str:
    out = []
    for item in items:
        m = SORT_ITEM.match(item.strip())
        if not m:
            raise ValueError(f"cannot read sort order {item!r}; write 'column', 'column desc' or "
                             "'expr asc nulls last'")
        expr = m.group("expr")
        try:
            expr = _expr(plan, expr)
        except ValueError:
            if expr not in plan.names:  # a column whose name is not an expression, e.g. "my col"
                raise
            expr = ident(expr)
        part = expr + (f" {m.group('dir').upper()}" if m.group("dir") else "")
        if m.group("nulls"):
            part += f" NULLS {m.group('nulls').upper()}"
        out.append(part)
    return ", ".join(out)


def _distinct(plan: Plan, step: DistinctStep) -> str:
    spec = step.distinct
    if not isinstance(spec, DedupeSpec):
        return f"SELECT DISTINCT * FROM {plan.current}"
    _need(plan, spec.on)
    order = f" ORDER BY {_order_items(plan, spec.order_by)}" if spec.order_by else ""
    keys = ", ".join(map(ident, spec.on))
    return (f"SELECT * FROM {plan.current} "
            f"QUALIFY row_number() OVER (PARTITION BY {keys}{order}) = 1")


def _sort(plan: Plan, step: SortStep) -> str:
    return f"SELECT * FROM {plan.current} ORDER BY {_order_items(plan, step.sort)}"


def _limit(plan: Plan, step: LimitStep) -> str:
    return f"SELECT * FROM {plan.current} LIMIT {int(step.limit)}"


def _sql(plan: Plan, step: SqlStep) -> str:
    text = plan.params.bind(step.sql.strip().rstrip(";"))
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as exc:
        raise ValueError(clean_error(exc)) from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise ValueError("a sql step is exactly one SELECT statement")
    return f"WITH this AS (SELECT * FROM {plan.current}) SELECT * FROM ({text})"


def _mask(plan: Plan, step: MaskStep) -> str:
    spec = step.mask
    _need(plan, list(spec.columns))
    salt_placeholder = ""
    if spec.salt is not None and "hash" in spec.columns.values():
        salt = ""
        if plan.resolve_secrets:
            from udop.connectors.secrets import SecretRef
            from udop.errors import ConfigError

            try:
                salt = SecretRef.parse(spec.salt).get_secret_value()
            except ConfigError as exc:  # the step's error: one line naming the task and the step
                raise ValueError(f"salt: {exc}") from None
            if not salt:
                raise ValueError("the salt resolved to an empty value; give a non-empty secret")
        salt_placeholder = plan.params.add(salt)  # bound, never spliced into the query text
    parts = []
    for column, method in spec.columns.items():
        col = f"CAST({ident(column)} AS VARCHAR)"
        if method == "hash":
            expr = f"sha256({salt_placeholder} || {col})"
        elif method == "redact":
            expr = f"'{MASK}'"
        else:
            n = method.keep_last
            expr = f"repeat('*', greatest(length({col}) - {n}, 0)) || right({col}, {n})"
        parts.append(f"CASE WHEN {ident(column)} IS NULL THEN NULL ELSE {expr} END AS {ident(column)}")
    return f"SELECT * REPLACE ({', '.join(parts)}) FROM {plan.current}"


_STEP_SQL: dict[type, Callable[[Plan, Any], str]] = {
    SelectStep: _select, RenameStep: _rename, CastStep: _cast, FilterStep: _filter, DeriveStep: _derive,
    AggregateStep: _aggregate, JoinStep: _join, UnionStep: _union, DistinctStep: _distinct,
    SortStep: _sort, LimitStep: _limit, SqlStep: _sql, MaskStep: _mask,
}
