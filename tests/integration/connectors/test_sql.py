"""SQL connectors against the real PostgreSQL and MariaDB (and a SQLite file): round trips, write
modes, one-transaction writes, bound parameters, quoting, streaming and the bad-input errors."""

from __future__ import annotations

import datetime as dt
import re
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from connectors_support import MYSQL, MYSQL_URL, PG, PG_URL, Tables

from udop.connectors import get_connector, load_from_parquet
from udop.errors import ConfigError, ConnectionFailed, FatalError, TaskTimeout
from udop.spec.models import Pipeline
from udop.state import MemoryStateStore
from udop.tasks.contract import Manifest, TaskContext, TaskResult


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
        "sqlite",
    ]
)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[dict[str, Any], Tables]]:
    if request.param == "postgres":
        tables, spec = Tables(PG_URL), dict(PG)
    elif request.param == "mysql":
        tables, spec = Tables(MYSQL_URL), dict(MYSQL)
    else:
        path = tmp_path / "db.sqlite"
        tables, spec = Tables(f"sqlite:///{path}"), {"connector": "sqlite", "database": str(path)}
    yield spec, tables
    tables.drop_all()


def people(ids: list[int], suffix: str = "") -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "id": pa.array(ids, pa.int64()),
            "name": [f"name-{i}{suffix}" if i % 5 else ("" if i % 10 else None) for i in ids],
            "amount": pa.array([Decimal(i) / 4 for i in ids], pa.decimal128(12, 2)),
            "seen": pa.array(
                [dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i) for i in ids],
                pa.timestamp("us", "UTC"),
            ),
            "flag": [i % 2 == 0 for i in ids],
        }
    )


def read_all(spec: dict[str, Any], **options: Any) -> list[dict[str, Any]]:
    with get_connector({**spec, **options}) as c:
        rows = [r for b in c.read() for r in b.to_pylist()]
    return sorted(rows, key=lambda r: r["id"])


def normalise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Comparable across backends: MySQL/SQLite keep timestamps as naive UTC, MySQL booleans as 0/1."""
    out = []
    for r in rows:
        seen = r["seen"]
        if isinstance(seen, dt.datetime) and seen.tzinfo is not None:
            seen = seen.astimezone(dt.UTC).replace(tzinfo=None)
        out.append({**r, "seen": seen, "flag": None if r["flag"] is None else bool(r["flag"])})
    return out


def test_round_trip_creates_table_and_keeps_values(db: tuple[dict[str, Any], Tables]) -> None:
    spec, tables = db
    table = tables.new()
    batch = people(list(range(1, 21)))
    with get_connector({**spec, "table": table}) as c:
        assert c.write([batch]) == 20
    got = normalise(read_all(spec, table=table))
    assert got == normalise(batch.to_pylist())
    # the empty string and NULL stay apart
    assert [r["name"] for r in got if r["id"] in (5, 10)] == ["", None]


def test_append_overwrite_upsert(db: tuple[dict[str, Any], Tables]) -> None:
    spec, tables = db
    table = tables.new()
    target = {**spec, "table": table}
    with get_connector(target) as c:
        c.write([people([1, 2, 3])], "upsert", ["id"])  # creates the table with id as primary key
        c.write([people([4])], "append")
        c.write([people([2, 3, 5], suffix="-new")], "upsert", ["id"])
    rows = read_all(spec, table=table)
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5]
    assert {r["id"]: r["name"] for r in rows} == {
        1: "name-1",
        2: "name-2-new",
        3: "name-3-new",
        4: "name-4",
        5: "",
    }
    with get_connector(target) as c:
        assert c.write([people([7, 8])], "overwrite") == 2
    assert [r["id"] for r in read_all(spec, table=table)] == [7, 8]


def test_failed_overwrite_leaves_the_target_unchanged(db: tuple[dict[str, Any], Tables]) -> None:
    spec, tables = db
    table = tables.new()
    tables.execute(f"CREATE TABLE {table} (id BIGINT NOT NULL, name VARCHAR(50))")
    tables.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'keep'), (2, 'keep too')")
    good = pa.RecordBatch.from_pydict({"id": pa.array([10, 11], pa.int64()), "name": ["a", "b"]})
    bad = pa.RecordBatch.from_pydict({"id": pa.array([12, None], pa.int64()), "name": ["c", "d"]})
    with get_connector({**spec, "table": table}) as c, pytest.raises(FatalError) as info:
        c.write(iter([good, bad]), "overwrite")
    assert table in str(info.value)
    assert sorted(tables.execute(f"SELECT id, name FROM {table}")) == [(1, "keep"), (2, "keep too")]


def test_query_with_bound_parameters(db: tuple[dict[str, Any], Tables]) -> None:
    spec, tables = db
    table = tables.new()
    with get_connector({**spec, "table": table}) as c:
        c.write([people(list(range(1, 11)))])
    got = read_all(
        spec,
        query=f"SELECT id, name FROM {table} WHERE id > :low AND name <> :skip",
        params={"low": 6, "skip": "name-7"},
    )
    assert [r["id"] for r in got] == [8, 9]
    # a parameter is a value, never SQL
    evil = read_all(spec, query=f"SELECT id FROM {table} WHERE name = :n", params={"n": "x' OR '1'='1"})
    assert evil == []


def test_identifiers_are_quoted(db: tuple[dict[str, Any], Tables]) -> None:
    spec, tables = db
    table = tables.new("Mixed Case")
    batch = pa.RecordBatch.from_pydict(
        {"id": pa.array([1, 2], pa.int64()), "select": ["x", "y"], "Odd Name": [1.5, 2.5]}
    )
    with get_connector({**spec, "table": table}) as c:
        c.write([batch], "upsert", ["id"])
        c.write([batch], "upsert", ["id"])
    assert read_all(spec, table=table) == batch.to_pylist()


def test_reads_stream_in_batches(db: tuple[dict[str, Any], Tables]) -> None:
    spec, tables = db
    table = tables.new()
    with get_connector({**spec, "table": table}) as c:
        c.write([people(list(range(5000)))])
    with get_connector({**spec, "table": table, "batch_size": 1000, "use_copy": False}) as c:
        sizes = [b.num_rows for b in c.read()]
    assert sizes == [1000] * 5
    with get_connector({**spec, "query": f"SELECT * FROM {table} WHERE id < 0"}) as c:
        empty = list(c.read())
    assert sum(b.num_rows for b in empty) == 0
    assert empty and "id" in empty[0].schema.names


def test_missing_table_is_fatal_and_named(db: tuple[dict[str, Any], Tables]) -> None:
    spec, _ = db
    with get_connector({**spec, "table": "udop_no_such_table_x"}) as c, pytest.raises(FatalError) as info:
        list(c.read())
    assert "udop_no_such_table_x" in str(info.value)
    assert f"connector {spec['connector']!r}" in str(info.value)


def test_schema_mismatch_is_fatal_and_changes_nothing(db: tuple[dict[str, Any], Tables]) -> None:
    spec, tables = db
    table = tables.new()
    tables.execute(f"CREATE TABLE {table} (id BIGINT, name VARCHAR(20))")
    tables.execute(f"INSERT INTO {table} VALUES (1, 'a')")
    batch = pa.RecordBatch.from_pydict({"id": pa.array([2], pa.int64()), "colour": ["red"]})
    with get_connector({**spec, "table": table}) as c, pytest.raises(FatalError, match="colour") as info:
        c.write([batch], "overwrite")
    assert "not in the table" in str(info.value)
    assert tables.execute(f"SELECT id, name FROM {table}") == [(1, "a")]


def test_upsert_needs_keys(db: tuple[dict[str, Any], Tables]) -> None:
    spec, tables = db
    with get_connector({**spec, "table": tables.new()}) as c, pytest.raises(FatalError, match="keys"):
        c.write([people([1])], "upsert", [])


@pytest.mark.postgres
def test_postgres_unreachable_host_is_retryable() -> None:
    conn = {
        "connector": "postgres",
        "host": "127.0.0.1",
        "port": 1,
        "user": "postgres",
        "password": "s3cret-pw",
        "database": "test",
        "table": "t",
        "connect_timeout": 2,
    }
    with get_connector(conn) as c, pytest.raises(ConnectionFailed) as info:
        c.check()
    message = str(info.value)
    assert "connector 'postgres'" in message
    assert "s3cret-pw" not in message
    assert "\n" not in message


@pytest.mark.postgres
def test_postgres_unknown_user_is_fatal_without_the_password() -> None:
    connections = {
        "warehouse": {
            "connector": "postgres",
            "host": "127.0.0.1",
            "user": "udop_nobody",
            "password": "hunter2-secret",
            "database": "test",
        }
    }
    with (
        get_connector({"connection": "warehouse", "table": "t"}, connections=connections) as c,
        pytest.raises(FatalError) as info,
    ):
        c.check()
    message = str(info.value)
    assert message.startswith("connection 'warehouse' (postgres): ")
    assert "login refused" in message
    assert "hunter2-secret" not in message


@pytest.mark.mysql
def test_mysql_wrong_password_is_fatal_and_masked() -> None:
    url = "mysql://root:wrong-pass-123@127.0.0.1:3306/test"
    with (
        get_connector({"connector": "mysql", "url": url, "table": "t"}) as c,
        pytest.raises(FatalError) as info,
    ):
        c.check()
    message = str(info.value)
    assert "login refused" in message
    assert "wrong-pass-123" not in message
    assert "wrong-pass-123" not in repr(c)


@pytest.mark.mysql
def test_mysql_unreachable_is_retryable() -> None:
    with (
        get_connector({**MYSQL, "port": 1, "table": "t", "connect_timeout": 2}) as c,
        pytest.raises(ConnectionFailed, match="connector 'mysql'"),
    ):
        list(c.read())


def test_bad_settings_name_the_connection() -> None:
    connections = {"wh": {"connector": "postgres", "host": "h", "port": "not-a-port"}}
    with pytest.raises(ConfigError, match=r"^connection 'wh' \(postgres\): port: "):
        get_connector({"connection": "wh", "table": "t"}, connections=connections)
    with pytest.raises(ConfigError, match="both"):
        get_connector({"connector": "sqlite", "database": "x", "table": "t", "query": "select 1"})


@pytest.mark.postgres
def test_postgres_schema_option_and_copy_upsert(pg: Tables) -> None:
    schema = f"udop_s_{uuid.uuid4().hex[:8]}"
    pg.execute(f"CREATE SCHEMA {schema}")
    try:
        spec = {**PG, "schema": schema, "table": "items"}
        with get_connector(spec) as c:
            c.write([people([1, 2])], "upsert", ["id"])
            c.write([people([2, 3], suffix="!")], "upsert", ["id"])
        rows = pg.execute(f"SELECT id, name FROM {schema}.items ORDER BY id")
        assert rows == [(1, "name-1"), (2, "name-2!"), (3, "name-3!")]
    finally:
        pg.execute(f"DROP SCHEMA {schema} CASCADE")


def test_upsert_with_a_key_twice_in_one_load_keeps_the_last_row(db: tuple[dict[str, Any], Tables]) -> None:
    spec, tables = db
    table = tables.new()
    with get_connector({**spec, "table": table}) as c:
        c.write([people([1, 2])], "upsert", ["id"])
        again = pa.RecordBatch.from_pydict(
            {"id": pa.array([2, 3, 2], pa.int64()), "name": ["first", "x", "last"]}
        )
        c.write([again], "upsert", ["id"])
    rows = tables.execute(f"SELECT id, name FROM {table} ORDER BY id")
    assert rows == [(1, "name-1"), (2, "last"), (3, "x")]


def test_text_into_a_number_column_is_refused_before_writing(db: tuple[dict[str, Any], Tables]) -> None:
    spec, tables = db
    table = tables.new()
    tables.execute(f"CREATE TABLE {table} (id BIGINT, amount NUMERIC(10, 2))")
    tables.execute(f"INSERT INTO {table} VALUES (1, 2.5)")
    batch = pa.RecordBatch.from_pydict({"id": pa.array([2], pa.int64()), "amount": ["lots"]})
    with get_connector({**spec, "table": table}) as c, pytest.raises(FatalError) as info:
        c.write([batch], "overwrite")
    clash = r"amount is string in the data but (NUMERIC|DECIMAL)\(10, 2\) in the table"
    assert re.search(clash, str(info.value))
    assert [(r[0], float(r[1])) for r in tables.execute(f"SELECT id, amount FROM {table}")] == [(1, 2.5)]


@pytest.mark.parametrize("use_copy", [True, False])
def test_stopping_a_read_early_is_clean(db: tuple[dict[str, Any], Tables], use_copy: bool) -> None:
    spec, tables = db
    table = tables.new()
    with get_connector({**spec, "table": table}) as c:
        c.write([people(list(range(20_000)))])
    with get_connector({**spec, "table": table, "batch_size": 1000, "use_copy": use_copy}) as c:
        stream = c.read()
        first = next(stream)
        stream.close()  # a consumer that had enough: no warning, no stuck connection
        assert first.num_rows > 0
        c.check()
        assert sum(b.num_rows for b in c.read()) == 20_000


class _CancelOnceStarted(threading.Event):
    """A cancel signal that arrives once the load took its first batch: the overwrite has begun
    (TRUNCATE/DELETE and that batch's COPY/INSERT ran in the load's open transaction)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def is_set(self) -> bool:
        self.asked += 1
        if self.asked == 2:
            self.set()
        return super().is_set()


def test_a_load_cancelled_part_way_through_an_overwrite_rolls_back(db, tmp_path: Path) -> None:
    spec, tables = db
    table = tables.new("cancel")
    with get_connector({**spec, "table": table}) as c:
        c.write(iter([people([1, 2, 3])]), "overwrite", [])
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for i in range(2):  # two files: two batches
        pq.write_table(pa.Table.from_batches([people(list(range(100 + 500 * i, 600 + 500 * i)))]),
                       dataset / f"part-{i}.parquet")
    manifest = Manifest(uri=str(dataset))
    pipeline = Pipeline.model_validate({
        "apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": f"p-{uuid.uuid4().hex[:8]}"},
        "spec": {"tasks": [
            {"id": "ext", "type": "python", "callable": "x:y"},
            {"id": "load", "type": "load", "depends_on": "ext",
             "target": {**spec, "table": table, "mode": "overwrite"}},
        ]},
    })
    context = TaskContext(pipeline=pipeline, task_id="load", run_id="r1", attempt=1,
                          logical_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), params={},
                          data_root=str(tmp_path / "data"), services={"state": MemoryStateStore()})
    cancel = _CancelOnceStarted()
    context.cancel_event = cancel
    with pytest.raises(TaskTimeout, match="cancelled or timed out"):
        load_from_parquet(context, pipeline.task("load").target, manifest, {"ext": TaskResult(output=manifest)})
    assert cancel.asked == 2  # stopped before the second batch, after the first was written
    assert [r["id"] for r in read_all(spec, table=table)] == [1, 2, 3]
