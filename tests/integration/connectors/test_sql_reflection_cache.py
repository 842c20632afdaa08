"""A PostgreSQL target's reflection is kept across the loads of a process (a stream's micro-batches) and
checked against the table's catalog signature on each load: a table dropped or changed between two loads
is reflected afresh, so the second load creates it again or fails with the same one-line mismatch
message as a first load would, never with the database's raw error."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pytest
from connectors_support import PG, Tables

from udop.connectors import LoadEntry, get_connector
from udop.errors import FatalError

pytestmark = pytest.mark.postgres


def _batch(ids: list[int]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"id": pa.array(ids, pa.int64()), "total": pa.array(ids, pa.int64())})


def _load(table: str, ids: list[int]) -> tuple[int, bool]:
    entry = LoadEntry(pipeline="cache", run_id=uuid.uuid4().hex, task_id="land")
    with get_connector({**PG, "table": table, "mode": "append"}) as c:
        return c.write_once([_batch(ids)], "append", [], entry)  # type: ignore[attr-defined,no-any-return]


def test_a_table_dropped_between_loads_is_created_again(pg: Tables) -> None:
    table = pg.new("cache")
    assert _load(table, [1, 2]) == (2, False)
    assert _load(table, [3]) == (1, False)  # the kept reflection, checked
    pg.execute(f'DROP TABLE "{table}"')
    assert _load(table, [4, 5]) == (2, False)
    assert pg.execute(f'SELECT id FROM "{table}" ORDER BY id') == [(4,), (5,)]


def test_a_column_dropped_between_loads_gives_the_mismatch_message(pg: Tables) -> None:
    table = pg.new("cache")
    _load(table, [1])
    pg.execute(f'ALTER TABLE "{table}" DROP COLUMN total')
    with pytest.raises(FatalError, match=r"column\(s\) total are not in the table"):
        _load(table, [2])
    assert pg.execute(f'SELECT id FROM "{table}"') == [(1,)]


def test_a_ledger_dropped_between_loads_is_created_again(pg: Tables) -> None:
    schema = f"udop_cache_{uuid.uuid4().hex[:8]}"
    pg.execute(f'CREATE SCHEMA "{schema}"')
    try:
        table = f"t_{uuid.uuid4().hex[:6]}"
        entry = LoadEntry(pipeline="cache", run_id=uuid.uuid4().hex, task_id="land")
        spec = {**PG, "table": table, "schema": schema, "mode": "append"}
        with get_connector(spec) as c:
            assert c.write_once([_batch([1])], "append", [], entry) == (1, False)  # type: ignore[attr-defined]
        pg.execute(f'DROP TABLE "{schema}".udop_load_ledger')
        with get_connector(spec) as c:
            assert c.write_once([_batch([2])], "append", [], entry) == (1, False)  # type: ignore[attr-defined]
            # the ledger made again holds this load: a repeat writes nothing
            assert c.write_once([_batch([2])], "append", [], entry) == (1, True)  # type: ignore[attr-defined]
        assert pg.execute(f'SELECT count(*) FROM "{schema}"."{table}"') == [(2,)]
    finally:
        pg.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _held(pg: Tables, app: str) -> int:
    rows = pg.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = :app", {"app": app})
    return int(rows[0][0])


def test_loads_keep_one_connection_while_held_and_drop_it_on_a_failed_write(pg: Tables) -> None:
    # what ``udop stream`` does around its batches: one connection for consecutive loads, none after
    from udop.connectors.held import hold_connections

    table = pg.new("held")
    app = f"udop-held-{uuid.uuid4().hex[:8]}"
    spec = {"connector": "postgres", "url": f"postgresql://postgres@127.0.0.1:5432/test?application_name={app}",
            "table": table, "mode": "append"}

    def load(ids: list[int]) -> tuple[int, bool]:
        entry = LoadEntry(pipeline="held", run_id=uuid.uuid4().hex, task_id="land")
        with get_connector(spec) as c:
            return c.write_once([_batch(ids)], "append", [], entry)  # type: ignore[attr-defined,no-any-return]

    load([1])
    assert _held(pg, app) == 0  # outside: a connection per load, closed after it
    with hold_connections():
        load([2])
        load([3])
        assert _held(pg, app) == 1  # kept for the next batch, and only one
        pg.execute(f'ALTER TABLE "{table}" DROP COLUMN total')
        with pytest.raises(FatalError, match=r"column\(s\) total are not in the table"):
            load([4])
        assert _held(pg, app) == 0  # a failed write drops it
        pg.execute(f'ALTER TABLE "{table}" ADD COLUMN total bigint')
        load([5])
        assert _held(pg, app) == 1
    assert _held(pg, app) == 0  # closed when the stream ends
    assert pg.execute(f'SELECT id FROM "{table}" ORDER BY id') == [(1,), (2,), (3,), (5,)]
