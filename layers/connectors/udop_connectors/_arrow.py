"""Arrow helpers shared by the built-in connectors."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Annotated, Any

import pyarrow as pa
from pydantic import AfterValidator

_TYPE_NAMES: dict[str, pa.DataType] = {
    "string": pa.string(), "str": pa.string(), "text": pa.string(), "varchar": pa.string(),
    "int": pa.int64(), "int64": pa.int64(), "bigint": pa.int64(), "integer": pa.int64(),
    "int32": pa.int32(), "smallint": pa.int16(),
    "float": pa.float64(), "float64": pa.float64(), "double": pa.float64(), "real": pa.float32(),
    "bool": pa.bool_(), "boolean": pa.bool_(), "date": pa.date32(),
    "timestamp": pa.timestamp("us"), "timestamptz": pa.timestamp("us", "UTC"),
    "timestamp with time zone": pa.timestamp("us", "UTC"), "datetime": pa.timestamp("us", "UTC"),
    "json": pa.string(), "binary": pa.binary(), "blob": pa.binary(),
}  # fmt: skip


def parse_type(name: str) -> pa.DataType:
    """A type named in a ``columns:`` option: string, int, float, bool, date, timestamp, timestamptz,
    json, binary, ``decimal(p,s)``, or the SQL spelling of one (VARCHAR, BIGINT, DOUBLE, ...)."""
    key = name.strip().lower()
    for prefix in ("decimal(", "numeric("):
        if key.startswith(prefix) and key.endswith(")"):
            p, _, s = key[len(prefix) : -1].partition(",")
            return pa.decimal128(int(p), int(s or 0))
    if key not in _TYPE_NAMES:
        raise ValueError(
            f"unknown type {name!r}; use one of {', '.join(sorted(_TYPE_NAMES))} or decimal(p,s)"
        )
    return _TYPE_NAMES[key]


def _check_columns(value: dict[str, str] | None) -> dict[str, str] | None:
    for column_type in (value or {}).values():
        parse_type(column_type)
    return value


#: a ``columns: {name: type}`` option, its type names checked when the settings are validated
ColumnTypes = Annotated[dict[str, str] | None, AfterValidator(_check_columns)]


def schema_from_mapping(columns: Mapping[str, str] | None) -> pa.Schema | None:
    if not columns:
        return None
    return pa.schema([(k, parse_type(v)) for k, v in columns.items()])


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, ensure_ascii=False)
    return value


def records_to_batch(records: Sequence[Mapping[str, Any]], schema: pa.Schema | None = None) -> pa.RecordBatch:
    """JSON-like records -> one batch. Nested objects and lists become JSON text unless ``schema``
    says otherwise; with ``schema`` only its columns are kept."""
    if schema is not None:
        columns = {f.name: [r.get(f.name) for r in records] for f in schema}
        arrays = []
        for f in schema:
            values = columns[f.name]
            if pa.types.is_string(f.type):
                values = [
                    _jsonable(v) if v is None or isinstance(v, str | dict | list) else str(v) for v in values
                ]
            try:
                arrays.append(pa.array(values, type=f.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                arrays.append(pa.array(values).cast(f.type))  # e.g. ISO date text -> date32
        return pa.RecordBatch.from_arrays(arrays, schema=schema)
    names: dict[str, None] = {}
    for r in records:
        for k in r:
            names.setdefault(k, None)
    arrays = []
    for name in names:
        values = [_jsonable(r.get(name)) for r in records]
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arr = pa.array([None if v is None else str(v) for v in values], type=pa.string())
        if pa.types.is_null(arr.type):
            arr = arr.cast(pa.string())
        arrays.append(arr)
    return pa.RecordBatch.from_arrays(arrays, names=list(names))


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def messages_table(values: Sequence[bytes | None], meta: Mapping[str, pa.Array], fmt: str,
                   schema: pa.Schema | None = None) -> pa.Table:
    """Message bodies and their metadata columns (``_partition``, ``_offset``...) as one table.

    ``json``: each body is an object whose fields become columns (parsed by Arrow's JSON reader; when a
    body is not a JSON object, every row is parsed on its own and such rows keep their body in ``_raw``
    with the fields null, so one bad message does not stop the batch: a validate rule can send it to the
    dead letter). ``text``: one ``value`` column; ``bytes``: one binary ``value`` column.
    """
    import pyarrow.json as pajson

    if fmt == "text":
        texts = [None if v is None else v.decode("utf-8", "replace") for v in values]
        body = pa.table({"value": pa.array(texts, type=pa.string())})
    elif fmt == "bytes":
        body = pa.table({"value": pa.array(list(values), type=pa.binary())})
    else:
        body = None
        # the usual batch, checked at C speed: no body missing, none with a newline, each starts with "{"
        n = len(values)
        joined = b"\n".join(values) if n and None not in values else b""  # type: ignore[arg-type]
        objects = joined[:1] == b"{" and joined.count(b"\n") == n - 1 == joined.count(b"\n{")
        if not objects:
            # a body over several lines (pretty-printed): its line breaks can only be whitespace between
            # tokens (a JSON string holds none raw), so blank them to keep the body on its one line
            joined = b"\n".join(
                b"null" if v is None else v.replace(b"\r", b" ").replace(b"\n", b" ") for v in values
            )
            objects = bool(values) and all(v and v.lstrip()[:1] == b"{" for v in values)
        if objects:
            parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore") \
                if schema is not None else None
            try:
                body = pajson.read_json(pa.BufferReader(joined), parse_options=parse)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                body = None
            if body is not None and body.num_rows != len(values):
                body = None
        if body is None:
            records: list[dict[str, Any]] = []
            for v in values:
                try:
                    parsed = json.loads(v) if v is not None else None
                except ValueError:
                    parsed = None
                if isinstance(parsed, dict):
                    records.append(parsed)
                else:
                    records.append({"_raw": None if v is None else v.decode("utf-8", "replace")})
            body = pa.Table.from_batches([records_to_batch(records, None)]) if records else pa.table({})
            if schema is not None:
                keep = [f for f in schema] + ([pa.field("_raw", pa.string())] if "_raw" in body.column_names
                                              else [])
                body = pa.Table.from_batches([records_to_batch(body.to_pylist(), pa.schema(keep))])
    for name, array in meta.items():
        body = body.append_column(name, array)
    return body
