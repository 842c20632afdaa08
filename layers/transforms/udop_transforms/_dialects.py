"""The DuckDB SQL of the step compiler, transpiled by sqlglot to Spark SQL and Trino/Athena SQL.

udop's own step compiler (``_steps``) stays the single source: it builds and binds DuckDB SQL; this
module rewrites that SQL for another engine. Stars (``*``, ``EXCLUDE``, ``REPLACE``, ``RENAME``) are
expanded first from the known input schemas, so the target never sees a DuckDB-only star; anything
the target cannot express raises ``EngineError`` naming what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, SqlglotError
from sqlglot.optimizer.qualify import qualify

__all__ = ["ENGINES", "Engine", "EngineError", "first_unsupported_step", "round_trip", "to_dialect"]

Engine = Literal["duckdb", "spark", "athena"]
ENGINES: tuple[str, ...] = ("duckdb", "spark", "athena")
#: the sqlglot dialect each engine's SQL is written in
DIALECTS: dict[str, str] = {"spark": "spark", "athena": "athena"}


class EngineError(ValueError):
    """The SQL uses something the engine cannot express (the message says what)."""


def _regex_full_match(node: exp.Expression) -> exp.Expression:
    """DuckDB's ``regexp_full_match`` (the regex rule) exists in neither Spark nor Trino: an anchored
    ``regexp_like`` means the same (RE2 and Java regexes agree on the patterns rules use)."""
    if isinstance(node, exp.RegexpFullMatch):
        anchored = exp.Concat(
            expressions=[exp.Literal.string("^(?:"), node.expression, exp.Literal.string(")$")]
        )
        return exp.RegexpLike(this=node.this, expression=anchored)
    return node


def _interval_of_expression(node: exp.Expression) -> exp.Expression:
    """``INTERVAL (expr) DAY`` (DuckDB, e.g. a bound parameter) as ``(expr) * INTERVAL '1' DAY``: Spark
    and Trino take only a literal inside INTERVAL but both multiply an interval by a number."""
    if (
        isinstance(node, exp.Interval)
        and node.this is not None
        and not (isinstance(node.this, exp.Literal) and node.this.is_string)
    ):
        if node.unit is None:
            return node
        one = exp.Interval(this=exp.Literal.string("1"), unit=node.unit.copy())
        return exp.Mul(this=exp.Paren(this=node.this.copy()), expression=one)
    return node


def _refuse(tree: exp.Expression, engine: str) -> None:
    for node in tree.walk():
        if isinstance(node, exp.Anonymous):
            raise EngineError(
                f"function {node.name!r} is unknown to the SQL transpiler, so udop cannot "
                f"tell whether {engine} has it; use a function both engines share"
            )
        if isinstance(node, exp.Union) and node.args.get("by_name"):
            raise EngineError(
                f"{engine} has no UNION BY NAME; union by position (by_name: false) "
                "after select steps that line the columns up"
            )
        if engine == "athena" and isinstance(node, exp.Placeholder | exp.Parameter):
            raise EngineError(
                "athena tasks cannot bind ${...} references yet (their SQL is fixed at "
                "deploy time); write the value into the step"
            )


def to_dialect(sql: str, schemas: Mapping[str, Sequence[tuple[str, str]]], engine: str) -> str:
    """``sql`` (DuckDB, bound parameters ``$pN``) in ``engine``'s SQL (parameters ``:pN``)."""
    dialect = DIALECTS[engine]
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
        schema: dict[str, object] = {name: dict(cols) for name, cols in schemas.items()}
        tree = qualify(
            tree, schema=schema, dialect="duckdb", quote_identifiers=True, validate_qualify_columns=False
        )
        tree = tree.transform(_regex_full_match).transform(_interval_of_expression)
        _refuse(tree, engine)
        return tree.sql(dialect, unsupported_level=ErrorLevel.RAISE)
    except EngineError:
        raise
    except SqlglotError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EngineError(f"cannot be written in {engine} SQL: {first}") from None


def round_trip(sql: str, engine: str) -> str:
    """Parse ``sql`` as ``engine`` SQL and write it again: the check available here for SQL no local
    engine can run (Athena). Raises ``EngineError`` when the text does not parse or changes."""
    dialect = DIALECTS[engine]
    try:
        again = sqlglot.parse_one(sql, read=dialect).sql(dialect, unsupported_level=ErrorLevel.RAISE)
    except SqlglotError as exc:
        raise EngineError(f"the {engine} SQL does not parse again: {str(exc).splitlines()[0]}") from None
    if again != sql:
        raise EngineError(f"the {engine} SQL changes when read back by the transpiler")
    return again


def first_unsupported_step(
    history: Sequence[tuple[int, str, str]], schemas: Mapping[str, Sequence[tuple[str, str]]], engine: str
) -> tuple[int, str, str] | None:
    """(step index, kind, message) of the first step whose query ``engine`` cannot express: the
    compiler's queries up to each step (``Plan.history``) are transpiled in order."""
    for index, kind, query in history:
        try:
            to_dialect(query, schemas, engine)
        except EngineError as exc:
            return index, kind, str(exc)
    return None
