"""The ``mongodb`` connector against a real MongoDB wire-protocol server (SecantusDB, started in this
process once per module): filtered and projected scans, BSON -> Arrow rules, incremental runs, upserts,
the load ledger with and without transactions, change streams resumed from the stored position, and
one-line errors for bad credentials and unknown collections."""

from __future__ import annotations

import datetime as dt
import decimal
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pymongo
import pytest
from bson import Decimal128, ObjectId
from connectors_support import make_pipeline
from secantus import SecantusDBServer

from udop.connectors import LoadEntry, get_connector
from udop.errors import FatalError
from udop.executor.local import LocalExecutor
from udop.state.sqlite import SQLiteStateStore
from udop.store import open_store


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A replica-set member (transactions and change streams on). A transaction left open by a killed
    process is aborted after 3 s idle (MongoDB's transactionLifetimeLimitSeconds, 60 by default)."""
    srv = SecantusDBServer(
        storage_path=str(tmp_path_factory.mktemp("mongo")), transaction_lifetime_seconds=3.0
    )
    srv.start()
    yield srv.uri
    srv.stop()


@pytest.fixture
def db(server: str) -> Iterator[tuple[pymongo.database.Database[Any], dict[str, Any]]]:
    """A database of this test's own and the connector options pointing at it."""
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(server, tz_aware=True)
    name = f"h17m_{uuid.uuid4().hex[:8]}"
    yield client[name], {"connector": "mongodb", "url": server, "database": name}
    client.drop_database(name)
    client.close()


def read_rows(spec: dict[str, Any], since: Any = None) -> tuple[pa.Schema, list[dict[str, Any]]]:
    with get_connector(spec) as c:
        batches = list(c.read(since=since))
    return batches[0].schema, [r for b in batches for r in b.to_pylist()]


def test_filtered_projected_scan_equals_the_documents(db: Any) -> None:
    database, spec = db
    oid = ObjectId()
    docs = [
        {"_id": oid, "sku": "a", "qty": 3, "price": Decimal128("1.25"), "at": dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
         "tags": ["x", "y"], "dims": {"w": 2, "ref": oid}},
        *({"sku": f"s{i}", "qty": i, "price": Decimal128("2.5"), "at": dt.datetime(2024, 1, 3, tzinfo=dt.UTC),
           "tags": [], "dims": {"w": i}} for i in range(10)),
    ]  # fmt: skip
    database.items.insert_many(docs)
    database.items.create_index("qty")
    schema, rows = read_rows(
        {**spec, "collection": "items", "filter": {"qty": {"$gte": 3}}, "batch_size": 3,
         "projection": {"sku": 1, "qty": 1, "price": 1, "at": 1, "tags": 1, "dims": 1}}
    )  # fmt: skip
    assert schema == pa.schema(
        [("_id", pa.string()), ("sku", pa.string()), ("qty", pa.int64()), ("price", pa.decimal128(38, 2)),
         ("at", pa.timestamp("ms", "UTC")), ("tags", pa.string()), ("dims", pa.string())]
    )  # fmt: skip
    expected = [d for d in docs if d["qty"] >= 3]
    assert sorted(r["sku"] for r in rows) == sorted(d["sku"] for d in expected)
    first = next(r for r in rows if r["sku"] == "a")
    assert first == {
        "_id": str(oid), "sku": "a", "qty": 3, "price": decimal.Decimal("1.25"),
        "at": dt.datetime(2024, 1, 2, tzinfo=dt.UTC), "tags": '["x", "y"]',
        "dims": f'{{"w": 2, "ref": {{"$oid": "{oid}"}}}}',
    }  # fmt: skip
    # declared columns: only those fields, in those types (the projection follows from them)
    schema, rows = read_rows(
        {
            **spec,
            "collection": "items",
            "filter": {"qty": {"$lt": 2}},
            "columns": {"sku": "string", "qty": "float"},
        }
    )
    assert schema == pa.schema([("sku", pa.string()), ("qty", pa.float64())])
    assert sorted(rows, key=lambda r: r["sku"]) == [{"sku": "s0", "qty": 0.0}, {"sku": "s1", "qty": 1.0}]
    # a date as YAML gives it, and extended JSON, in a filter
    _, rows = read_rows({**spec, "collection": "items", "filter": {"at": {"$gte": dt.date(2024, 1, 3)}}})
    assert len(rows) == 10
    _, rows = read_rows({**spec, "collection": "items", "filter": {"_id": {"$oid": str(oid)}}})
    assert [r["sku"] for r in rows] == ["a"]
    with pytest.raises(FatalError, match=r"^connector 'mongodb': filter: .*not a valid ObjectId") as err:
        read_rows({**spec, "collection": "items", "filter": {"_id": {"$oid": "not-hex"}}})
    assert "\n" not in str(err.value)
    # an aggregation pipeline instead of a find
    _, rows = read_rows(
        {**spec, "collection": "items",
         "pipeline": [{"$match": {"qty": {"$lt": 5}}}, {"$group": {"_id": "$price", "n": {"$sum": 1}}}]}
    )  # fmt: skip
    assert sorted((r["_id"], r["n"]) for r in rows) == [
        (decimal.Decimal("1.25"), 1),
        (decimal.Decimal("2.5"), 5),
    ]


def test_a_field_that_appears_after_the_first_batch_is_a_one_line_error(db: Any) -> None:
    database, spec = db
    database.loose.insert_many([{"_id": i, "a": i} for i in range(3)] + [{"_id": 9, "a": 9, "late": True}])
    with pytest.raises(FatalError) as err:
        read_rows({**spec, "collection": "loose", "batch_size": 3})
    assert "late" in str(err.value) and "columns" in str(err.value) and "\n" not in str(err.value)
    _, rows = read_rows(
        {**spec, "collection": "loose", "batch_size": 3, "columns": {"a": "int", "late": "bool"}}
    )
    assert rows[-1] == {"a": 9, "late": True}
    # a decimal with more places than the first batch's column fails rather than being rounded
    database.prices.insert_many(
        [{"_id": i, "p": Decimal128("1.5")} for i in range(3)] + [{"_id": 3, "p": Decimal128("9.125")}]
    )
    with pytest.raises(FatalError, match="field 'p' does not fit decimal128"):
        read_rows({**spec, "collection": "prices", "batch_size": 3})
    _, rows = read_rows({**spec, "collection": "prices", "batch_size": 3, "columns": {"p": "string"}})
    assert [r["p"] for r in rows] == ["1.5", "1.5", "1.5", "9.125"]


def run(pipeline: Any, tmp_path: Path, state: SQLiteStateStore, run_id: str | None = None) -> Any:
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    try:
        executor = LocalExecutor(store, workers=1, data_root=str(tmp_path / "data"),
                                 services={"state": state, "base_dir": str(tmp_path)})  # fmt: skip
        record = executor.run(pipeline, run_id=run_id or f"r-{uuid.uuid4().hex[:6]}")
        assert record.state.value == "succeeded", record.error
        full = store.get_run(record.id)
        assert full is not None
        return {t.task_id: t.result for t in full.tasks}
    finally:
        store.close()


def test_incremental_runs_pick_up_only_new_documents_and_upsert_them(db: Any, tmp_path: Path) -> None:
    database, spec = db
    database.orders.create_index("updated")
    database.orders.insert_many(
        [{"_id": ObjectId(), "n": i, "updated": dt.datetime(2024, 1, 1, i, tzinfo=dt.UTC)} for i in range(4)]
    )
    pipeline = make_pipeline(
        [
            {"id": "orders", "type": "extract",
             "source": {**spec, "collection": "orders", "projection": ["n"],  # 'updated' is added
                        "incremental": {"column": "updated"}}},
            {"id": "copy", "type": "load", "depends_on": ["orders"],
             "target": {**spec, "collection": "copy", "mode": "upsert", "keys": ["n"]}},
        ]
    )  # fmt: skip
    state = SQLiteStateStore(tmp_path / "state.db")
    try:
        first = run(pipeline, tmp_path, state)
        assert first["orders"]["output"]["rows"] == 4
        database.orders.insert_many(
            [
                {"_id": ObjectId(), "n": i, "updated": dt.datetime(2024, 1, 2, i, tzinfo=dt.UTC)}
                for i in (2, 7)
            ]
        )
        second = run(pipeline, tmp_path, state)
        assert second["orders"]["output"]["rows"] == 2  # only the new ones
        assert second["copy"]["metrics"]["rows_written"] == 2
        third = run(pipeline, tmp_path, state)
        assert third["orders"]["output"]["rows"] == 0
    finally:
        state.close()
    copied = {d["n"]: d["updated"] for d in database.copy.find({}, {"_id": 0})}
    assert copied == {0: dt.datetime(2024, 1, 1, 0, tzinfo=dt.UTC), 1: dt.datetime(2024, 1, 1, 1, tzinfo=dt.UTC),
                      2: dt.datetime(2024, 1, 2, 2, tzinfo=dt.UTC), 3: dt.datetime(2024, 1, 1, 3, tzinfo=dt.UTC),
                      7: dt.datetime(2024, 1, 2, 7, tzinfo=dt.UTC)}  # fmt: skip


def test_incremental_by_object_id(db: Any) -> None:
    database, spec = db
    ids = [ObjectId() for _ in range(4)]
    database.ev.insert_many([{"_id": i, "v": n} for n, i in enumerate(ids)])
    _, rows = read_rows({**spec, "collection": "ev", "incremental": {"column": "_id"}}, since=str(ids[1]))
    assert [r["v"] for r in rows] == [2, 3]


def test_upsert_by_key_is_idempotent_and_the_last_row_of_a_key_wins(db: Any) -> None:
    database, spec = db
    target = {**spec, "collection": "people", "mode": "upsert", "keys": ["email"]}
    batch = pa.RecordBatch.from_pydict(
        {"email": ["a@x", "b@x", "a@x"], "name": ["Ann", "Bo", "Annie"],
         "born": [dt.date(1990, 1, 2), None, dt.date(1991, 3, 4)],
         "score": pa.array([decimal.Decimal("1.50"), None, decimal.Decimal("2.25")], pa.decimal128(5, 2))}
    )  # fmt: skip
    with get_connector(target) as c:
        assert c.write([batch]) == 3
        assert c.write([batch]) == 3
    got = sorted(database.people.find({}, {"_id": 0}), key=lambda d: d["email"])
    assert got == [
        {
            "email": "a@x",
            "name": "Annie",
            "born": dt.datetime(1991, 3, 4, tzinfo=dt.UTC),
            "score": Decimal128("2.25"),
        },
        {"email": "b@x", "name": "Bo", "born": None, "score": None},
    ]
    # a partial row updates its columns and keeps the others
    with get_connector(target) as c:
        c.write([pa.RecordBatch.from_pydict({"email": ["b@x"], "name": ["Bob"]})])
    assert database.people.count_documents({}) == 2
    assert database.people.find_one({"email": "b@x"}, {"_id": 0, "name": 1}) == {"name": "Bob"}
    # the key index the connector made when it created the collection
    assert any(ix.get("unique") for ix in database.people.list_indexes())


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A standalone server: no transactions, no change streams."""
    srv = SecantusDBServer(storage_path=str(tmp_path_factory.mktemp("mongo1")), replica_set_name=None)
    srv.start()
    yield srv.uri
    srv.stop()


@pytest.mark.parametrize("where", ["replica_set", "standalone"])
def test_a_repeated_load_finds_its_ledger_entry_and_writes_nothing(
    where: str, server: str, standalone: str
) -> None:
    uri = server if where == "replica_set" else standalone
    name = f"h17m_{uuid.uuid4().hex[:8]}"
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(uri)
    try:
        target = {"connector": "mongodb", "url": uri, "database": name, "collection": "facts"}
        entry = LoadEntry(pipeline="p", run_id="r1", task_id="load", input="mem://x")
        batch = pa.RecordBatch.from_pydict({"k": [1, 2, 3]})
        with get_connector(target) as c:
            assert c.loaded(entry) is None
            assert c.write_once([batch], "append", [], entry) == (3, False)
            assert c.write_once([batch, batch], "append", [], entry) == (3, True)
            assert c.loaded(entry) == 3
            other = LoadEntry(pipeline="p", run_id="r2", task_id="load")
            assert c.write_once([batch], "append", [], other) == (3, False)
        assert client[name].facts.count_documents({}) == 6
        ledger = client[name].udop_load_ledger.find_one({"run_id": "r1"})
        assert ledger is not None and ledger["rows_written"] == 3 and ledger["input"] == "mem://x"
        if where == "standalone":
            with (
                pytest.raises(FatalError, match="standalone"),
                get_connector({**target, "transactions": True}) as c,
            ):
                c.write([batch])
    finally:
        client.drop_database(name)
        client.close()


def test_a_failing_load_in_a_transaction_leaves_the_collection_unchanged(db: Any) -> None:
    database, spec = db
    database.uniq.insert_one({"_id": 1, "v": "old"})
    entry = LoadEntry(pipeline="p", run_id="r1", task_id="load")
    good = pa.RecordBatch.from_pydict({"_id": [2, 3], "v": ["a", "b"]})
    clash = pa.RecordBatch.from_pydict({"_id": [2], "v": ["dup"]})  # a key twice in one load
    with (
        pytest.raises(FatalError, match="duplicate key") as err,
        get_connector({**spec, "collection": "uniq"}) as c,
    ):
        c.write_once([good, clash], "overwrite", [], entry)
    assert "\n" not in str(err.value)
    # the overwrite's delete rolled back with the rest
    assert list(database.uniq.find()) == [{"_id": 1, "v": "old"}]
    assert database.udop_load_ledger.count_documents({}) == 0


def test_change_stream_resumes_from_the_stored_position(db: Any, tmp_path: Path) -> None:
    database, spec = db
    database.create_collection("cs")
    source = {**spec, "collection": "cs", "changes": True, "wait": 0.2}
    # the reader a stream consumer uses: batches paired with the position after them
    with get_connector(source) as c:
        pairs = list(c.read_changes(None))
    assert [b.num_rows for b, _ in pairs] == [0]  # nothing yet, but a position of now
    start = pairs[0][1]
    before = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat()
    database.cs.insert_many([{"_id": i, "v": i} for i in range(5)])
    database.cs.update_one({"_id": 1}, {"$set": {"v": 10}})
    database.cs.delete_one({"_id": 4})
    with get_connector({**source, "batch_size": 3}) as c:
        pairs = list(c.read_changes(start))
    assert [b.num_rows for b, _ in pairs] == [3, 3, 1]
    positions = [p for _, p in pairs]
    assert positions == sorted(positions) and positions[0] > start
    rows = [r for b, _ in pairs for r in b.to_pylist()]
    assert [(r["_op"], r["_key"], r["v"]) for r in rows] == [
        *(("insert", str(i), i) for i in range(5)),
        ("update", "1", 10),
        ("delete", "4", None),
    ]
    # resuming from the middle gives exactly the rest
    with get_connector(source) as c:
        rest = [r for b, _ in c.read_changes(positions[0]) for r in b.to_pylist()]
    assert [(r["_op"], r["_key"]) for r in rest] == [
        ("insert", "3"),
        ("insert", "4"),
        ("update", "1"),
        ("delete", "4"),
    ]

    # max_changes bounds a read; the next one goes on from its position
    with get_connector(source) as c:
        first_four = list(c.read_changes(start, max_changes=4))
        rest_of_them = list(c.read_changes(first_four[-1][1]))
    assert sum(b.num_rows for b, _ in first_four) == 4 and sum(b.num_rows for b, _ in rest_of_them) == 3

    # an ISO time starts there; extra stages filter the change events
    with get_connector({**source, "pipeline": [{"$match": {"operationType": {"$ne": "insert"}}}]}) as c:
        since_time = [(r["_op"], r["_key"]) for b, _ in c.read_changes(before) for r in b.to_pylist()]
    assert since_time == [("update", "1"), ("delete", "4")]

    # the same reader as an extract: the position is kept as the watermark, committed by the load
    pipeline = make_pipeline(
        [
            {"id": "changes", "type": "extract", "source": {**source, "columns": {"v": "int"}}},
            {"id": "land", "type": "load", "depends_on": ["changes"],
             "target": {**spec, "collection": "landed", "mode": "append"}},
        ]
    )  # fmt: skip
    state = SQLiteStateStore(tmp_path / "state.db")
    try:
        assert run(pipeline, tmp_path, state)["changes"]["output"]["rows"] == 0  # takes the position
        database.cs.insert_one({"_id": 20, "v": 20})
        database.cs.update_one({"_id": 20}, {"$inc": {"v": 1}})
        assert run(pipeline, tmp_path, state)["changes"]["output"]["rows"] == 2
        assert run(pipeline, tmp_path, state)["changes"]["output"]["rows"] == 0
        database.cs.delete_one({"_id": 20})
        assert run(pipeline, tmp_path, state)["changes"]["output"]["rows"] == 1
    finally:
        state.close()
    landed = [(d["_op"], d["_key"], d["v"]) for d in database.landed.find({}).sort("_position")]
    assert landed == [("insert", "20", 20), ("update", "20", 21), ("delete", "20", None)]


@pytest.fixture(scope="module")
def with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server that requires a login (user alice, password s3cret-pw)."""
    path = str(tmp_path_factory.mktemp("mongo-auth"))
    srv = SecantusDBServer(storage_path=path)
    srv.start()
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(srv.uri)
    client.admin.command("createUser", "alice", pwd="s3cret-pw", roles=["root"])
    client.close()
    srv.stop()
    srv = SecantusDBServer(storage_path=path, require_auth=True)
    srv.start()
    yield srv.uri.removeprefix("mongodb://").rstrip("/")
    srv.stop()


def test_bad_credentials_and_unknown_collections_are_one_line_errors(
    with_auth: str, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"mongodb://alice:wrong-pass-123@{with_auth}/shop"
    with pytest.raises(FatalError) as err:
        read_rows({"connector": "mongodb", "url": url, "collection": "orders"})
    text = str(err.value)
    assert text.startswith(
        "connector 'mongodb': read shop.orders: login refused (check the user and password)"
    )
    assert "wrong-pass-123" not in text and "\n" not in text
    monkeypatch.setenv("H17M_MONGO_PW", "wrong-pass-456")
    host, port = with_auth.split(":")
    with (
        pytest.raises(FatalError) as err,
        get_connector(
            {
                "connector": "mongodb",
                "host": host,
                "port": int(port),
                "user": "alice",
                "password": {"env": "H17M_MONGO_PW"},
                "database": "shop",
            }
        ) as c,
    ):
        c.check()
    assert str(err.value).startswith("connector 'mongodb': ping: login refused")
    assert "wrong-pass-456" not in str(err.value)
    good = f"mongodb://alice:s3cret-pw@{with_auth}/shop?authSource=admin"
    with pytest.raises(FatalError) as err:
        read_rows({"connector": "mongodb", "url": good, "collection": "nope"})
    assert str(err.value) == (
        "connector 'mongodb': collection 'nope' does not exist in database 'shop' (it has no collections)"
    )
    with pytest.raises(FatalError, match="needs 'database'"):
        read_rows({"connector": "mongodb", "url": server, "collection": "x"})


def test_a_connector_url_names_the_dataset_without_its_password(with_auth: str) -> None:
    url = f"mongodb://alice:s3cret-pw@{with_auth}/shop?authSource=admin"
    with get_connector({"connector": "mongodb", "url": url, "collection": "orders"}) as c:
        assert c.lineage_dataset().uri == f"mongodb://{with_auth}/shop.orders"
        assert "s3cret" not in repr(c)


def test_parquet_output_of_an_extract_keeps_the_schema(db: Any, tmp_path: Path) -> None:
    """An empty collection with declared columns still gives a typed (empty) Parquet file."""
    database, spec = db
    database.create_collection("empty")
    pipeline = make_pipeline(
        [{"id": "e", "type": "extract",
          "source": {**spec, "collection": "empty", "columns": {"n": "int", "at": "timestamptz"}}}]
    )  # fmt: skip
    state = SQLiteStateStore(tmp_path / "state.db")
    try:
        out = run(pipeline, tmp_path, state)["e"]["output"]
    finally:
        state.close()
    table = pq.read_table(out["uri"])
    assert table.num_rows == 0
    assert table.schema.field("n").type == pa.int64()


EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "mongodb" / "pipeline.yaml"


@pytest.mark.slow  # the CLI in a process of its own: ~20 s on the loaded 2-core machine
def test_the_example_pipeline_runs_end_to_end_through_udop_run(server: str, tmp_path: Path) -> None:
    """examples/mongodb: MongoDB -> transform -> validate -> Parquet, by the real `udop run` command,
    against figures computed here from the same documents."""
    name = f"h17m_{uuid.uuid4().hex[:8]}"
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(server, tz_aware=True)
    try:
        docs = [
            {"region": region, "status": status, "total": Decimal128(f"{10 + i}.50"),
             "placed_at": dt.datetime(2024, 5, 1 + i % 3, 12, tzinfo=dt.UTC),
             "items": [{"sku": "a", "qty": 1}] * (1 + i % 2), "note": "ignored"}
            for i, (region, status) in enumerate(
                [("eu", "paid"), ("eu", "shipped"), ("us", "paid"), ("eu", "cancelled"), ("us", "paid"),
                 ("eu", "paid"), ("us", "shipped"), ("us", "draft")]
            )
        ]  # fmt: skip
        client[name].orders.insert_many(docs)
        client[name].orders.create_index("status")
        shutil.copyfile(EXAMPLE, tmp_path / "pipeline.yaml")
        env = {
            "UDOP_HOME": str(tmp_path / ".udop"),
            "PATH": "/usr/bin:/bin",
            "MONGODB_URL": f"{server}{name}",
        }
        done = subprocess.run(
            [sys.executable, "-c", "from udop.cli import main; main()", "run", "pipeline.yaml"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        client.drop_database(name)
        client.close()
    got = pq.read_table(tmp_path / "out" / "revenue.parquet").to_pylist()
    expected: dict[tuple[str, dt.date], dict[str, Any]] = {}
    for d in docs:
        if d["status"] not in ("paid", "shipped"):
            continue
        row = expected.setdefault(
            (d["region"], d["placed_at"].date()), {"orders": 0, "revenue": decimal.Decimal(0), "lines": 0}
        )
        row["orders"] += 1
        row["revenue"] += d["total"].to_decimal()
        row["lines"] += len(d["items"])
    assert [
        ((r["region"], r["day"]), {"orders": r["orders"], "revenue": r["revenue"], "lines": r["lines"]})
        for r in got
    ] == sorted(expected.items())


@pytest.mark.slow  # three `udop run` processes per fault
@pytest.mark.parametrize("fault", ["load-before-commit", "load-committed"])
def test_sigkill_around_the_commit_then_resume_loads_each_row_once(
    server: str, tmp_path: Path, fault: str
) -> None:
    """``udop run`` kills itself inside the load's transaction, or right after it committed (before
    the watermark moved); ``--resume`` then loads the rows, or finds the ledger entry and writes
    nothing; a next run loads only the rows added since. The transaction the killed process left open
    holds its writes until the server aborts it: the resumed load meets a write conflict and the
    task's retry policy tries again."""
    from exactly_once_support import add_source_rows, udop

    name = f"h17m_{uuid.uuid4().hex[:8]}"
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(server)
    # the write conflicts last until the server aborts the killed process's transaction, longer on a busy
    # machine: a breaker that stays closed and a retry window of ~30 s (not what this test is about)
    target = (
        f"{{connector: mongodb, url: '{server}', database: {name}, collection: dst, mode: append, "
        "circuit_breaker: {failures: 100, cooldown: 1s}}"
    )
    try:
        add_source_rows(tmp_path / "shop.db", range(1, 301))
        (tmp_path / "p.yaml").write_text(
            f"""
apiVersion: udop/v1
kind: Pipeline
metadata: {{name: eo-{uuid.uuid4().hex[:8]}}}
spec:
  defaults: {{retry: {{max_attempts: 16, base_delay: 1s, max_delay: 3s}}}}
  tasks:
    - id: orders
      type: extract
      source: {{connector: sqlite, database: shop.db, table: orders, incremental: {{column: id}}}}
    - id: publish
      type: load
      depends_on: [orders]
      target: {target}
"""
        )
        killed = udop(tmp_path, "--run-id", "r1", fault=fault)
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        resumed = udop(tmp_path, "--resume", "r1")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        dst = client[name].dst
        assert dst.count_documents({}) == 300 and len(dst.distinct("id")) == 300
        add_source_rows(tmp_path / "shop.db", range(301, 351))
        nxt = udop(tmp_path, "--run-id", "r2")
        assert nxt.returncode == 0, nxt.stdout + nxt.stderr
        assert dst.count_documents({}) == 350 and len(dst.distinct("id")) == 350
        assert client[name].udop_load_ledger.count_documents({}) == 2
    finally:
        client.drop_database(name)
        client.close()


def test_lists_structs_and_times_are_written_as_arrays_documents_and_text(db: Any) -> None:
    database, spec = db
    batch = pa.RecordBatch.from_pydict(
        {
            "k": [1],
            "tags": pa.array([["a", "b"]], pa.list_(pa.string())),
            "dims": pa.array([{"w": 2, "h": 3.5}], pa.struct([("w", pa.int64()), ("h", pa.float64())])),
            "at": pa.array([dt.time(7, 30)], pa.time64("us")),
        }
    )
    with get_connector({**spec, "collection": "shapes"}) as c:
        assert c.write([batch]) == 1
    assert database.shapes.find_one({}, {"_id": 0}) == {
        "k": 1,
        "tags": ["a", "b"],
        "dims": {"w": 2, "h": 3.5},
        "at": "07:30:00",
    }


def test_a_value_mongodb_cannot_store_is_a_one_line_error(db: Any) -> None:
    database, spec = db
    batch = pa.RecordBatch.from_pydict({"big": pa.array([2**64 - 1], pa.uint64())})
    with (
        pytest.raises(FatalError, match="a value MongoDB cannot store") as err,
        get_connector({**spec, "collection": "big"}) as c,
    ):
        c.write([batch])
    assert "\n" not in str(err.value)
    assert "big" not in database.list_collection_names() or database.big.count_documents({}) == 0
