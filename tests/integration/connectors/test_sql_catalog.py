"""A PostgreSQL target is described by one catalog query (``format_type`` per column), not SQLAlchemy's
reflection: each column type must come out as reflection would give it, so loads accept and refuse the
same data with the same one-line messages, bind values the same way (jsonb, bytea, arrays), and find
tables in other schemas and under quoted mixed-case names. The process-wide caches of targets and
ledgers are bounded."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from connectors_support import PG, Tables

from udop.connectors import LoadEntry, get_connector
from udop.errors import FatalError

pytestmark = pytest.mark.postgres

#: column type, an Arrow value it takes, what PostgreSQL then holds (as psycopg returns it), and (for a
#: type that refuses text) the type named in the mismatch message
CASES: list[tuple[str, pa.Array, Any, str | None]] = [
    ("bigint", pa.array([9_000_000_000], pa.int64()), 9_000_000_000, "BIGINT"),
    ("integer", pa.array([7], pa.int32()), 7, "INTEGER"),
    ("smallint", pa.array([3], pa.int16()), 3, "SMALLINT"),
    ("text", pa.array(["x"]), "x", None),
    ("varchar(20)", pa.array(["short"]), "short", None),
    ("numeric(10,2)", pa.array([Decimal("12.34")], pa.decimal128(10, 2)), Decimal("12.34"), "NUMERIC(10, 2)"),
    ("double precision", pa.array([1.5]), 1.5, "DOUBLE PRECISION"),
    ("boolean", pa.array([True]), True, "BOOLEAN"),
    ("date", pa.array([dt.date(2024, 2, 29)]), dt.date(2024, 2, 29), "DATE"),
    ("timestamp", pa.array([dt.datetime(2024, 1, 2, 3, 4, 5)], pa.timestamp("us")),
     dt.datetime(2024, 1, 2, 3, 4, 5), "TIMESTAMP"),
    ("timestamptz", pa.array([dt.datetime(2024, 1, 2, 3, 4, 5)], pa.timestamp("us", "UTC")),
     dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "TIMESTAMP"),
    ("jsonb", pa.array([{"a": 1}], pa.struct([("a", pa.int64())])), None, None),
    ("bytea", pa.array([b"\x00\xff"], pa.binary()), b"\x00\xff", "BYTEA"),
    ("integer[]", pa.array(["{1,2}"]), [1, 2], None),
]


def _write(table: str, batch: pa.RecordBatch, **options: Any) -> int:
    with get_connector({**PG, "table": table, "mode": "append", **options}) as c:
        return c.write([batch])


def test_each_column_type_is_the_type_reflection_gives(pg: Tables) -> None:
    from udop_connectors.sql import _pg_type

    table = pg.new("types")
    types = [t for t, *_ in CASES] + [
        "timestamp(3)", "timestamptz(0)", "time", "timetz", "real", "numeric", "char(3)", "uuid", "json",
        "interval", "interval day to second(2)", "varchar[]", "numeric(5,1)[][]", "bit varying(4)", "inet",
    ]
    columns = ", ".join(f"c{i} {t}" for i, t in enumerate(types))
    pg.execute(f'CREATE TABLE "{table}" ({columns})')
    with pg.engine.connect() as conn:
        reflected = sa.Table(table, sa.MetaData(), autoload_with=conn)
        formats = conn.execute(
            sa.text("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = to_regclass(:t) AND attnum > 0 ORDER BY attnum"),
            {"t": f'"{table}"'},
        ).all()
    assert len(formats) == len(types)
    for name, format_type in formats:
        assert repr(_pg_type(format_type)) == repr(reflected.c[name].type), (name, format_type)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("use_copy", [True, False])
def test_an_existing_column_takes_its_values_and_refuses_text_by_name(
    pg: Tables, case: tuple[str, pa.Array, Any, str | None], use_copy: bool
) -> None:
    sql_type, value, stored, refuses_text_as = case
    table = pg.new("col")
    pg.execute(f'CREATE TABLE "{table}" (id bigint, v {sql_type})')
    batch = pa.RecordBatch.from_arrays([pa.array([1], pa.int64()), value], names=["id", "v"])
    if sql_type.endswith("[]") and not use_copy:
        # row by row, the column binds as reflection's ARRAY(INTEGER) does: a text value is refused
        # (COPY takes PostgreSQL's array text)
        with pytest.raises(FatalError, match="invalid input syntax for type integer"):
            _write(table, batch, use_copy=use_copy)
        return
    assert _write(table, batch, use_copy=use_copy) == 1
    [(got,)] = pg.execute(f'SELECT v FROM "{table}"')
    if sql_type == "jsonb":  # a nested value is stored as its JSON text, as through reflection
        assert got == '{"a": 1}'
    else:
        assert got == stored
    if refuses_text_as is not None:
        text = pa.RecordBatch.from_arrays([pa.array([2], pa.int64()), pa.array(["2"])], names=["id", "v"])
        with pytest.raises(FatalError, match=re.escape(f"v is string in the data but {refuses_text_as} in the table")):
            _write(table, text, use_copy=use_copy)
        assert pg.execute(f'SELECT count(*) FROM "{table}"') == [(1,)]


def test_a_table_in_another_schema_under_a_mixed_case_name(pg: Tables) -> None:
    schema = f"udop_Cat_{uuid.uuid4().hex[:8]}"
    table = f"Mixed Case_{uuid.uuid4().hex[:6]}"
    pg.execute(f'CREATE SCHEMA "{schema}"')
    try:
        pg.execute(f'CREATE TABLE "{schema}"."{table}" (id bigint, "Total" integer)')
        # a public table of the same name with other columns must not be the one found
        pg.execute(f'CREATE TABLE IF NOT EXISTS public."{table}" (other text)')
        spec = {**PG, "table": table, "schema": schema, "mode": "append"}
        batch = pa.RecordBatch.from_pydict({"id": pa.array([1], pa.int64()), "Total": pa.array([5], pa.int32())})
        entry = LoadEntry(pipeline="catalog", run_id=uuid.uuid4().hex, task_id="land")
        with get_connector(spec) as c:
            assert c.write_once([batch], "append", [], entry) == (1, False)  # type: ignore[attr-defined]
            assert c.write_once([batch], "append", [], entry) == (1, True)  # type: ignore[attr-defined]
        assert pg.execute(f'SELECT id, "Total" FROM "{schema}"."{table}"') == [(1, 5)]
        bad = pa.RecordBatch.from_pydict({"id": pa.array([2], pa.int64()), "Total": pa.array(["x"])})
        with get_connector(spec) as c, pytest.raises(
            FatalError, match=rf"table {schema}\.{table}: Total is string in the data but INTEGER in the table"
        ):
            c.write([bad])
        missing = pa.RecordBatch.from_pydict({"id": pa.array([3], pa.int64()), "total": pa.array([1])})
        with get_connector(spec) as c, pytest.raises(
            FatalError, match=r"column\(s\) total are not in the table \(it has id, Total\)"
        ):
            c.write([missing])
    finally:
        pg.execute(f'DROP SCHEMA "{schema}" CASCADE')
        pg.execute(f'DROP TABLE IF EXISTS public."{table}"')


def test_upsert_into_an_existing_table_without_reflection(pg: Tables) -> None:
    # the conflict target comes from the keys given, not from a reflected primary key
    table = pg.new("ups")
    pg.execute(f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, name text, blob bytea)')
    for use_copy in (True, False):
        for name in ("a", "b"):
            batch = pa.RecordBatch.from_pydict(
                {"id": pa.array([1, 2], pa.int64()), "name": pa.array([name, name])}
            )
            with get_connector({**PG, "table": table, "mode": "upsert", "keys": ["id"], "use_copy": use_copy}) as c:
                assert c.write([batch]) == 2
    assert pg.execute(f'SELECT id, name FROM "{table}" ORDER BY id') == [(1, "b"), (2, "b")]


def test_the_kept_tables_and_ledgers_are_bounded_and_an_evicted_one_is_read_again(
    pg: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    from udop_connectors import sql

    monkeypatch.setattr(sql, "_TABLES", sql._Lru(3))
    monkeypatch.setattr(sql, "_LEDGERS", sql._Lru(2))
    names = [pg.new("lru") for _ in range(5)]
    batch = pa.RecordBatch.from_pydict({"id": pa.array([1], pa.int64())})

    def load(table: str) -> tuple[int, bool]:
        entry = LoadEntry(pipeline="lru", run_id=uuid.uuid4().hex, task_id="land")
        with get_connector({**PG, "table": table, "mode": "append"}) as c:
            return c.write_once([batch], "append", [], entry)  # type: ignore[attr-defined,no-any-return]

    load(names[0])
    first = [v for k, v in sql._TABLES._entries.items() if names[0] in k]
    assert len(first) == 1
    for name in names[1:]:
        load(name)
    assert len(sql._TABLES) == 3  # never more than the bound
    assert not any(names[0] in k for k in sql._TABLES._entries)  # the oldest went first
    # the evicted table is described afresh (a new Table) and the load works
    pg.execute(f'ALTER TABLE "{names[0]}" ADD COLUMN extra text')
    assert load(names[0]) == (1, False)
    again = [v for k, v in sql._TABLES._entries.items() if names[0] in k]
    assert len(again) == 1 and again[0][1] is not first[0][1]
    assert "extra" in again[0][1].c
    # ledgers: fill past the bound with other schemas' keys; the evicted one is looked for again
    for i in range(3):
        sql._LEDGERS.put((f"engine{i}", "schema"), True)
    assert len(sql._LEDGERS) == 2
    assert load(names[1]) == (1, False)
    assert pg.execute(f'SELECT count(*) FROM "{names[0]}"') == [(2,)]


def test_a_target_that_is_a_sequence_is_not_taken_for_a_table(pg: Tables) -> None:
    name = pg.new("seq")
    pg.execute(f'CREATE SEQUENCE "{name}"')
    try:
        batch = pa.RecordBatch.from_pydict({"id": pa.array([1], pa.int64())})
        with pytest.raises(FatalError, match="already exists"):
            _write(name, batch)
    finally:
        pg.execute(f'DROP SEQUENCE "{name}"')

