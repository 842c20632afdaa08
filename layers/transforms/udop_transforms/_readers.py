"""DuckDB table functions reading files (CSV, Parquet, JSON, NDJSON): a leaf both the engine (a task's
output) and the file connectors (a source) use."""

from __future__ import annotations

from typing import Any

from udop_transforms._sql import literal

__all__ = ["bool_sql", "reader_sql"]


def bool_sql(value: bool) -> str:
    return "true" if value else "false"


def _struct(columns: dict[str, str]) -> str:
    return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in columns.items()) + "}"


def reader_sql(connector: str, path: str | list[str], source: Any = None) -> str:
    """A DuckDB table function call reading ``path`` (a file, folder or glob, or a list of files) with
    ``source``'s options."""
    opts: list[str] = []
    hive = getattr(source, "hive_partitioning", None)
    if hive is not None:
        opts.append(f"hive_partitioning = {bool_sql(hive)}")
        if hive and getattr(source, "hive_strings", False):
            opts.append("hive_types_autocast = false")
    if getattr(source, "union_by_name", False):
        opts.append("union_by_name = true")
    columns = getattr(source, "columns", None)
    path_sql = "[" + ", ".join(literal(p) for p in path) + "]" if not isinstance(path, str) else literal(path)
    if connector == "parquet":
        return f"read_parquet({path_sql}{''.join(', ' + o for o in opts)})"
    if connector == "csv":
        delim = getattr(source, "delimiter", None) or ","
        header = getattr(source, "header", None)
        opts += [f"delim = {literal(delim)}", f"header = {bool_sql(True if header is None else header)}"]
        quote = getattr(source, "quote", None)
        if quote:
            opts.append(f"quote = {literal(quote)}")
        nulls = getattr(source, "null_values", None)
        nulls = ["NA", ""] if nulls is None else nulls
        opts.append(f"nullstr = [{', '.join(literal(n) for n in nulls)}]")
        if columns:
            opts.append(f"types = {_struct(columns)}")
        return f"read_csv({path_sql}, {', '.join(opts)})"
    if connector in ("json", "ndjson"):
        fmt = "newline_delimited" if connector == "ndjson" else "auto"
        opts.append(f"format = {literal(fmt)}")
        if columns:
            opts.append(f"columns = {_struct(columns)}")
        return f"read_json({path_sql}, {', '.join(opts)})"
    raise ValueError(f"{connector!r} is not a file connector")
