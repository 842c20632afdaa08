"""Column-level lineage of a compiled step query: which input columns each output column derives from.

Computed with sqlglot's lineage module from the SQL the transform layer hands DuckDB, so it follows
what actually runs (stars, joins, CTEs). Best effort by design: a query sqlglot cannot follow gives
no column lineage, never a failed task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: output column -> sorted list of (input relation, input column)
ColumnLineage = dict[str, list[tuple[str, str]]]


def column_lineage(sql: str, columns: Mapping[str, Sequence[str]], *,
                   dialect: str = "duckdb") -> ColumnLineage:
    """The lineage of every output column of ``sql`` over the relations ``columns`` describes
    (relation name -> its column names). Empty when the query cannot be followed.

    Remembered by the query's text and input columns (``udop.lineage.cache``): a pipeline run again
    runs the same SQL, and following it with sqlglot costs more than many queries take to run."""
    from udop.lineage.cache import lineage_cache

    cache = lineage_cache()
    key = cache.key(sql, columns, dialect)
    found = cache.get(key)
    if found is None:
        found = _follow(sql, columns, dialect)
        cache.put(key, found)
    return found


def _follow(sql: str, columns: Mapping[str, Sequence[str]], dialect: str) -> ColumnLineage:
    try:
        from sqlglot import exp, parse_one
        from sqlglot.errors import SqlglotError
        from sqlglot.lineage import lineage
        from sqlglot.optimizer.qualify import qualify
        from sqlglot.optimizer.scope import build_scope
    except ImportError:
        return {}
    # types play no part in which column feeds which: TEXT keeps odd DuckDB type names from the parser
    schema: dict[str, object] = {name: {c: "TEXT" for c in cols} for name, cols in columns.items()}
    try:
        query = qualify(parse_one(sql, dialect=dialect), schema=schema, dialect=dialect,
                        validate_qualify_columns=False)
        if not isinstance(query, exp.Query):
            return {}
        scope = build_scope(query)  # once: lineage() would qualify the query again per column
        if scope is None:
            return {}
        found: ColumnLineage = {}
        for name in query.named_selects:
            node = lineage(name, query, schema=schema, dialect=dialect, scope=scope, copy=False)
            sources: set[tuple[str, str]] = set()
            for leaf in node.walk():
                if leaf.downstream or not isinstance(leaf.source, exp.Table):
                    continue
                sources.add((leaf.source.name, exp.to_column(leaf.name).name))
            found[name] = sorted(sources)
        return found
    except (SqlglotError, ValueError, KeyError, AttributeError, RecursionError):
        return {}


def compose(later: ColumnLineage, earlier: Mapping[str, ColumnLineage]) -> ColumnLineage:
    """``later``'s lineage with columns of intermediate relations (``earlier``: relation -> its
    lineage) replaced by what they derive from: a transform that checks its data part-way restarts
    its query from a table of its own."""
    out: ColumnLineage = {}
    for column, sources in later.items():
        resolved: set[tuple[str, str]] = set()
        for relation, col in sources:
            if relation in earlier:
                resolved.update(earlier[relation].get(col, []))
            else:
                resolved.add((relation, col))
        out[column] = sorted(resolved)
    return out


def task_column_lineage(run: Any) -> dict[str, dict[str, list[list[str]]]]:
    """Task id -> the column lineage its stored result holds (a ``RunRecord``'s tasks)."""
    found: dict[str, dict[str, list[list[str]]]] = {}
    for task in getattr(run, "tasks", ()):
        columns = (task.result or {}).get("column_lineage")
        if columns:
            found[task.task_id] = dict(columns)
    return found
