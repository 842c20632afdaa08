"""Data-quality rules: each becomes a predicate that marks failing rows; all row rules (and the row count
and freshness maxima) are counted in ONE scan, then a few failing rows are sampled per failed rule."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import duckdb

from udop.spec.data_tasks import (
    AcceptedValuesRule,
    ExpectRule,
    FreshnessRule,
    NotNullRule,
    RangeRule,
    RegexRule,
    RowCountRule,
    UniqueRule,
    rule_kind,
)
from udop.tasks.contract import CheckResult
from udop_transforms._engine import Column, Session
from udop_transforms._sql import Params, check_expression, clean_error, ident, missing_column_message

__all__ = ["RuleError", "bind_rules", "evaluate_rules", "jsonable"]


class RuleError(Exception):
    """A rule that cannot bind (unknown column, bad predicate); ``index`` is its position."""

    def __init__(self, index: int, kind: str, message: str) -> None:
        self.index, self.kind, self.message = index, kind, message
        super().__init__(f"rules[{index}] ({kind}): {message}")


@dataclass
class _Row:
    """A rule counted in the shared scan: failing rows are those where ``predicate`` is true."""

    index: int
    name: str
    severity: str
    predicate: str


@dataclass
class _Compiled:
    rows: list[_Row]
    uniques: list[tuple[int, str, str, list[str]]]  # index, name, severity, columns
    counts: list[tuple[int, str, str, RowCountRule]]
    fresh: list[tuple[int, str, str, FreshnessRule]]


def _compile(rules: list[Any], columns: list[Column], params: Params) -> _Compiled:
    names = [c[0] for c in columns]
    out = _Compiled([], [], [], [])
    for index, rule in enumerate(rules):
        kind = rule_kind(rule)

        def need(cols: list[str], index: int = index, kind: str = kind) -> None:
            for col in cols:
                if col not in names:
                    raise RuleError(index, kind, missing_column_message(col, names))

        sev = rule.severity
        if isinstance(rule, NotNullRule):
            need(rule.not_null)
            for col in rule.not_null:
                name = rule.name or f"not_null({col})"
                out.rows.append(_Row(index, name, sev, f"{ident(col)} IS NULL"))
        elif isinstance(rule, UniqueRule):
            need(rule.unique)
            out.uniques.append((index, rule.name or f"unique({', '.join(rule.unique)})", sev, rule.unique))
        elif isinstance(rule, AcceptedValuesRule):
            accepted = rule.accepted_values
            need([accepted.column])
            col = ident(accepted.column)
            values = ", ".join(params.add(v) for v in accepted.values)
            out.rows.append(_Row(index, rule.name or f"accepted_values({accepted.column})", sev,
                                 f"{col} IS NOT NULL AND {col} NOT IN ({values})"))
        elif isinstance(rule, RangeRule):
            bounds = rule.range
            need([bounds.column])
            col = ident(bounds.column)
            parts = []
            if bounds.min is not None:
                parts.append(f"{col} < {params.add(bounds.min)}")
            if bounds.max is not None:
                parts.append(f"{col} > {params.add(bounds.max)}")
            out.rows.append(_Row(index, rule.name or f"range({bounds.column})", sev,
                                 f"{col} IS NOT NULL AND ({' OR '.join(parts)})"))
        elif isinstance(rule, RegexRule):
            regex = rule.regex
            need([regex.column])
            col = ident(regex.column)
            out.rows.append(_Row(index, rule.name or f"regex({regex.column})", sev,
                                 f"{col} IS NOT NULL AND NOT regexp_full_match(CAST({col} AS VARCHAR), "
                                 f"{params.add(regex.pattern)})"))
        elif isinstance(rule, ExpectRule):
            try:
                text = params.bind(rule.expect)
                check_expression(text)
            except ValueError as exc:
                raise RuleError(index, kind, str(exc)) from None
            short = rule.expect if len(rule.expect) <= 60 else rule.expect[:57] + "..."
            out.rows.append(_Row(index, rule.name or f"expect({short})", sev, f"NOT ({text})"))
        elif isinstance(rule, RowCountRule):
            out.counts.append((index, rule.name or "row_count", sev, rule))
        elif isinstance(rule, FreshnessRule):
            need([rule.freshness.column])
            out.fresh.append((index, rule.name or f"freshness({rule.freshness.column})", sev, rule))
    return out


def bind_rules(session: Session, relation: str, columns: list[Column], rules: list[Any],
               params: Params) -> _Compiled:
    """Compile and bind every rule against ``relation`` (no data read); raises ``RuleError``."""
    compiled = _compile(rules, columns, params)
    for row in compiled.rows:
        sql = f"SELECT count(*) FILTER (WHERE {row.predicate}) FROM {relation}"
        try:
            session.describe(sql, params.used_in(sql))
        except duckdb.Error as exc:
            raise RuleError(row.index, rule_kind(rules[row.index]), clean_error(exc)) from None
    for index, _, _, rule in compiled.fresh:
        col = ident(rule.freshness.column)
        try:
            session.describe(f"SELECT max(CAST({col} AS TIMESTAMP)) FROM {relation}")
        except duckdb.Error:
            raise RuleError(index, "freshness", f"column {rule.freshness.column!r} is not a date or "
                                                "timestamp") from None
    return compiled


def evaluate_rules(session: Session, relation: str, columns: list[Column], rules: list[Any],
                   params: Params, *, sample_rows: int = 5,
                   logical_date: datetime | None = None,
                   now: datetime | None = None) -> list[CheckResult]:
    """Run every rule over ``relation`` (a view, table or parenthesised query); never raises for a
    failed rule: the caller decides what a failed ``error`` rule means. ``now``: when the data was
    counted (a freshness rule's reference time), if not now (a Spark job's counts, replayed later)."""
    compiled = bind_rules(session, relation, columns, rules, params)
    items = ["count(*)"]
    items += [f"count(*) FILTER (WHERE {r.predicate})" for r in compiled.rows]
    items += [f"max(CAST({ident(f.freshness.column)} AS TIMESTAMP))" for *_, f in compiled.fresh]
    sql = f"SELECT {', '.join(items)} FROM {relation}"
    row = session.con.execute(sql, params.used_in(sql) or None).fetchone()
    assert row is not None
    total = int(row[0])
    failing = [int(v) for v in row[1 : 1 + len(compiled.rows)]]
    newest = list(row[1 + len(compiled.rows) :])

    results: dict[tuple[int, str], CheckResult] = {}
    for r, n in zip(compiled.rows, failing, strict=True):
        failing_sql = f"SELECT * FROM {relation} WHERE {r.predicate}"
        sample = _sample(session, failing_sql, params, sample_rows) if n else []
        results[(r.index, r.name)] = CheckResult(
            rule=r.name, severity=r.severity, passed=n == 0, failing_rows=n, sample=sample,
            message=f"{n} of {total} rows fail" if n else f"all {total} rows pass")
    for index, name, sev, cols in compiled.uniques:
        keys = ", ".join(map(ident, cols))
        not_null = " AND ".join(f"{ident(c)} IS NOT NULL" for c in cols)
        dupes = (f"SELECT {keys}, count(*) AS duplicates FROM {relation} WHERE {not_null} "
                 f"GROUP BY {keys} HAVING count(*) > 1")
        groups, rows_in = session.con.execute(f"SELECT count(*), coalesce(sum(duplicates), 0) FROM ({dupes})"
                                              ).fetchone() or (0, 0)
        sample = _sample(session, f"{dupes} ORDER BY duplicates DESC", params, sample_rows) if groups else []
        results[(index, name)] = CheckResult(
            rule=name, severity=sev, passed=groups == 0, failing_rows=int(rows_in), sample=sample,
            message=f"{groups} duplicated keys over {rows_in} rows" if groups else f"all {total} rows unique")
    for index, name, sev, rule in compiled.counts:
        count_spec = rule.row_count
        low = count_spec.min is not None and total < count_spec.min
        high = count_spec.max is not None and total > count_spec.max
        wanted = []
        if count_spec.min is not None:
            wanted.append(f"at least {count_spec.min}")
        if count_spec.max is not None:
            wanted.append(f"at most {count_spec.max}")
        bounds = " and ".join(wanted)
        results[(index, name)] = CheckResult(
            rule=name, severity=sev, passed=not (low or high), failing_rows=0,
            message=f"{total} rows; expected {bounds}")
    now = _naive_utc(now) if now is not None else datetime.now(UTC).replace(tzinfo=None)
    for (index, name, sev, fresh_rule), value in zip(compiled.fresh, newest, strict=True):
        fresh = fresh_rule.freshness
        ref = now
        if fresh.relative_to == "logical_date" and logical_date is not None:
            ref = _naive_utc(logical_date)
        if value is None:
            results[(index, name)] = CheckResult(rule=name, severity=sev, passed=False,
                                                 message=f"no values in {fresh.column!r}")
            continue
        age = ref - _naive_utc(value)
        ok = age <= timedelta(seconds=fresh.max_age)
        results[(index, name)] = CheckResult(
            rule=name, severity=sev, passed=ok, failing_rows=0,
            message=f"newest {fresh.column} is {value.isoformat()}, {_age(age)} old; "
                    f"max_age {_age(timedelta(seconds=fresh.max_age))}")
    return [results[k] for k in sorted(results, key=lambda k: k[0])]


def _naive_utc(value: datetime) -> datetime:
    if value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _age(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _sample(session: Session, sql: str, params: Params, limit: int) -> list[dict[str, Any]]:
    if limit <= 0:
        return []
    sql = f"{sql} LIMIT {int(limit)}"
    cur = session.con.execute(sql, params.used_in(sql) or None)
    names = [d[0] for d in cur.description or []]
    return [{n: jsonable(v) for n, v in zip(names, row, strict=True)} for row in cur.fetchall()]


def jsonable(value: Any) -> Any:
    """A value as JSON can carry it (samples are stored with the run)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)
