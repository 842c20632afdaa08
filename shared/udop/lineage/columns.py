"""Column-level lineage of a compiled step query: which input columns each output column derives from.

Computed with sqlglot's lineage module from the SQL the transform layer hands DuckDB, so it follows
what actually runs (stars, joins, CTEs). Best effort by design: a query sqlglot cannot follow gives
no column lineage, never a failed task.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

#: output column -> sorted list of (input relation, input column)
ColumnLineage = dict[str, list[tuple[str, str]]]


#: sha256 of (dialect, SQL, input relations and columns) -> lineage: the compiled step SQL of a
#: transform is the same run after run (parameters are bound, not inlined), so a process that runs a
#: pipeline again (``udop serve``, a scheduler, a warm Lambda) follows it once
_CACHE: OrderedDict[str, ColumnLineage] = OrderedDict()
_CACHE_SIZE = 512
_cache_lock = threading.Lock()


def column_lineage(sql: str, columns: Mapping[str, Sequence[str]], *,
                   dialect: str = "duckdb") -> ColumnLineage:
    """The lineage of every output column of ``sql`` over the relations ``columns`` describes
    (relation name -> its column names). Empty when the query cannot be followed. Kept by the hash of
    its inputs: the same query over the same columns is followed once per process."""
    key = hashlib.sha256(json.dumps([dialect, sql, sorted((k, list(v)) for k, v in columns.items())])
                         .encode()).hexdigest()
    with _cache_lock:
        found = _CACHE.get(key)
        if found is not None:
            _CACHE.move_to_end(key)
    if found is None:
        found = _follow(sql, columns, dialect)
        with _cache_lock:
            _CACHE[key] = found
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return {k: list(v) for k, v in found.items()}


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
