"""SQL text helpers: quoting, bound parameters for ``${...}`` references, and DuckDB error messages."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

import duckdb

from udop.spec.params import REFERENCE

__all__ = ["Params", "check_expression", "clean_error", "ident", "literal", "missing_column_message"]


def ident(name: str) -> str:
    """A quoted SQL identifier (task ids may hold '-', column names anything)."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A quoted SQL string literal; only for values udop itself controls (file paths)."""
    return "'" + text.replace("'", "''") + "'"


class Params:
    """Turns ``${ns.name}`` in SQL text into ``$pN`` bound parameters (values are never spliced).

    ``scope`` is ``TaskContext.template_scope()``; in checks before a run it holds defaults or ``None``.
    """

    def __init__(self, scope: Mapping[str, Mapping[str, Any]]) -> None:
        self.scope = scope
        self.values: dict[str, Any] = {}

    def bind(self, text: str) -> str:
        out: list[str] = []
        pos = 0
        for m in REFERENCE.finditer(text):
            if text[: m.start()].count("'") % 2 == 1:
                raise ValueError(f"'{m.group(0)}' is inside a quoted string; write it outside quotes "
                                 "(it is bound as a typed value, e.g. `col = ${params.x}`)")
            ns, name = m.group(1), m.group(2)
            space = self.scope.get(ns)
            if space is None or name not in space:
                raise ValueError(f"unknown reference '${{{ns}.{name}}}'")
            out.append(text[pos : m.start()])
            out.append(self.add(_typed(ns, name, space[name])))
            pos = m.end()
        out.append(text[pos:])
        return "".join(out).replace("$${", "${")

    def add(self, value: Any) -> str:
        """Bind one value; returns its ``$pN`` placeholder."""
        key = f"p{len(self.values)}"
        self.values[key] = value
        return f"${key}"

    def used_in(self, sql: str) -> dict[str, Any]:
        """Only the parameters a statement refers to (DuckDB rejects unused ones)."""
        used = set(re.findall(r"\$(p\d+)\b", sql))
        return {k: v for k, v in self.values.items() if k in used}


def _typed(ns: str, name: str, value: Any) -> Any:
    """The run's dates bind as DATE / TIMESTAMP (the template scope holds them as ISO text for paths),
    so ``${run.logical_date} - INTERVAL 1 DAY`` works in SQL."""
    if ns == "run" and isinstance(value, str):
        try:
            if name == "logical_date":
                return date.fromisoformat(value)
            if name == "logical_ts":
                return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def check_expression(text: str) -> None:
    """Raise ``ValueError`` unless ``text`` is exactly one SQL expression (no statement splicing)."""
    try:
        duckdb.SQLExpression(text)
    except duckdb.Error as exc:
        raise ValueError(f"not a valid SQL expression {text!r}: {clean_error(exc)}") from None


def clean_error(exc: BaseException) -> str:
    """One line from a DuckDB error: no 'LINE 1:' excerpt, no caret, candidates folded in."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    first = re.sub(r"^[A-Za-z ]*Error: ", "", lines[0])
    for ln in lines[1:]:
        if ln.startswith("Candidate bindings:"):
            first += f" (candidates: {ln.split(':', 1)[1].strip()})"
        elif ln.startswith("Did you mean"):
            first += f" ({ln})"
    if "extension" in first and ("INSTALL" in text or "not in the catalog" in text):
        first += "; udop does not install DuckDB extensions while running"
    return first


def missing_column_message(name: str, columns: Iterable[str], where: str = "") -> str:
    cols = list(columns)
    close = difflib.get_close_matches(name, cols, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; columns are: {', '.join(cols)}"
    return f"column {name!r} not found{where}{hint}"
