"""``udop stream`` on a MongoDB change stream (SecantusDB, a real wire-protocol server started in this
process) into PostgreSQL: the position is the resume token of the last change of the committed batch,
kept by udop; a process killed after a batch's load committed, after its run succeeded, or after its
position moved, then started again, lands each change exactly once; a bad definition and a position the
server's change history no longer reaches are one-line errors."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import sqlalchemy as sa
from bson import json_util
from secantus import SecantusDBServer
from streams_support import udop, wait_for

from udop.connectors import get_connector
from udop.errors import FatalError

pytestmark = [pytest.mark.postgres]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    srv = SecantusDBServer(storage_path=str(tmp_path_factory.mktemp("mongo")))
    srv.start()
    yield srv.uri
    srv.stop()


@pytest.fixture
def db(server: str) -> Iterator[pymongo.database.Database[Any]]:
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(server, tz_aware=True)
    database = client[f"h17ms_{uuid.uuid4().hex[:8]}"]
    database.create_collection("orders")
    yield database
    client.drop_database(database.name)
    client.close()


def _definition(name: str, url: str, database: str, target: str, options: str = "") -> str:
    return f"""
apiVersion: udop/v1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  connections:
    mongo: {{connector: mongodb, url: "{url}", database: {database}}}
  trigger:
    stream:
      source:
        connection: mongo
        collection: orders
        columns: {{id: int, amount: int}}
        {options}
      id: changes
      max_batch_rows: 200
      max_batch_seconds: 0.5
      retry_delay: 0
  tasks:
    - id: picked
      type: transform
      depends_on: [changes]
      steps:
        - select: [_position, _op, id, amount]
    - id: checked
      type: validate
      depends_on: [picked]
      rules: [{{not_null: [_position, id]}}]
    - id: land
      type: load
      depends_on: [checked]
      target: {target}
"""


def _rows(engine: sa.Engine, table: str) -> tuple[int, int]:
    """Rows in the target and distinct change positions among them."""
    with engine.begin() as conn:
        if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": f'"{table}"'}).scalar() is None:
            return 0, 0
        got = conn.execute(sa.text(f'SELECT count(*), count(DISTINCT _position) FROM "{table}"')).one()
    return int(got[0]), int(got[1])


@pytest.mark.slow
def test_killed_at_each_fault_point_then_restarted_lands_each_change_once(
    server: str, db: Any, pg_table: tuple[sa.Engine, str], tmp_path: Path
) -> None:
    engine, table = pg_table
    db.orders.insert_many([{"id": i, "amount": i % 5} for i in range(500)])
    db.orders.update_many({"id": {"$lt": 100}}, {"$inc": {"amount": 100}})  # 100 update changes
    db.orders.delete_many({"id": {"$gte": 450}})  # left out by the pipeline below
    target = (
        "{connector: postgres, host: 127.0.0.1, port: 5432, user: postgres, database: test, "
        f"table: {table}, mode: append}}"
    )
    name = f"h17-mongo-{uuid.uuid4().hex[:6]}"
    options = "start: earliest\n        pipeline: [{$match: {operationType: {$in: [insert, update]}}}]"
    (tmp_path / "p.yaml").write_text(_definition(name, server, db.name, target, options))

    # killed right after its first batch's rows committed, before the run or the position knew
    first = udop(tmp_path, "stream", "p.yaml", fault="load-committed")
    _out, err = first.communicate(timeout=120)
    assert first.returncode == -signal.SIGKILL, err
    after_first = _rows(engine, table)
    assert 0 < after_first[0] <= 200 and after_first[0] == after_first[1]
    # killed after the resumed batch's run succeeded, before its position moved
    second = udop(tmp_path, "stream", "p.yaml", fault="stream-run-succeeded")
    _out, err = second.communicate(timeout=120)
    assert second.returncode == -signal.SIGKILL, err
    assert _rows(engine, table) == after_first  # the resumed run found its load in the ledger
    # killed right after a batch's position moved (nothing to tell the server)
    third = udop(tmp_path, "stream", "p.yaml", fault="stream-offsets-committed")
    _out, err = third.communicate(timeout=120)
    assert third.returncode == -signal.SIGKILL, err
    after_third = _rows(engine, table)
    assert after_third[0] > after_first[0] and after_third[0] == after_third[1]

    fourth = udop(tmp_path, "stream", "p.yaml")
    wait_for(lambda: _rows(engine, table)[0] >= 600, "the 600 earlier changes")
    # live changes while it runs: 50 inserts and 10 updates
    db.orders.insert_many([{"id": 1000 + i, "amount": 1} for i in range(50)])
    db.orders.update_many({"id": {"$gte": 1040}}, {"$set": {"amount": 7}})
    wait_for(lambda: _rows(engine, table)[0] >= 660, "660 changes in the target")
    time.sleep(1.0)  # a repeat would land about now
    fourth.send_signal(signal.SIGTERM)
    _out, err = fourth.communicate(timeout=60)
    assert fourth.returncode == 0, err
    assert "stopped after" in err and "msgs/s" in err
    assert _rows(engine, table) == (660, 660)
    with engine.begin() as conn:
        ops = dict(conn.execute(sa.text(f'SELECT _op, count(*) FROM "{table}" GROUP BY _op')).all())
        last = conn.execute(sa.text(f'SELECT max(_position) FROM "{table}"')).scalar()
    assert ops == {"insert": 550, "update": 110}

    from udop.store import open_store
    from udop.stream.store import StreamStore

    store = open_store(f"sqlite:///{tmp_path / '.udop' / 'udop.db'}")
    try:  # the stored position is the last landed change's
        assert StreamStore(store).positions(name) == {f"{db.name}.orders": last}
    finally:
        store.close()


def test_a_filter_is_a_one_line_error(server: str, db: Any, tmp_path: Path) -> None:
    target = f"{{connector: parquet, path: {tmp_path / 'out'}}}"
    (tmp_path / "p.yaml").write_text(
        _definition("h17-mongo-bad", server, db.name, target, "filter: {amount: {$gt: 1}}")
    )
    proc = udop(tmp_path, "stream", "p.yaml")
    try:
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # it consumed instead of refusing
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "use 'pipeline'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_position_older_than_the_change_history_is_a_one_line_error(server: str, db: Any) -> None:
    from udop_connectors.mongodb import _position

    spec = {"connector": "mongodb", "url": server, "database": db.name, "collection": "orders", "wait": 0.1}
    with get_connector(spec) as connector:
        source = connector.stream()
        source.seek({})  # start: latest
        db.orders.insert_one({"id": 1, "amount": 2})
        batch = None
        deadline = time.monotonic() + 10
        while batch is None and time.monotonic() < deadline:
            batch = source.poll(10, 0.1, threading.Event())
        assert batch is not None and batch.table.column("_op").to_pylist() == ["insert"]
        token = batch.end[f"{db.name}.orders"].partition("|")[2]
        gone = _position(1, 1, 0, json_util.loads(token))
        with pytest.raises(FatalError, match="no longer reaches udop's stored position") as raised:
            source.seek({f"{db.name}.orders": gone})
        assert "\n" not in str(raised.value)
        source.close()


def test_udop_deploy_refuses_a_change_stream_pipeline(server: str, db: Any, tmp_path: Path) -> None:
    """Lambda event source mappings cannot read MongoDB change streams: refused before anything is made."""
    from udop.aws.streams import deploy_stream
    from udop.errors import InputError
    from udop.spec.loader import load_pipeline

    target = f"{{connector: parquet, path: {tmp_path / 'out'}}}"
    (tmp_path / "p.yaml").write_text(_definition("h17-mongo-aws", server, db.name, target))
    pipeline = load_pipeline(tmp_path / "p.yaml")
    with pytest.raises(InputError, match="'mongodb' stream cannot be deployed to AWS"):
        deploy_stream(pipeline, bucket="b", s3=None, lam=None, store=None, function_arn="arn", client=None)
