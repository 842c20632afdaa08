"""Documents per second of the mongodb connector's read and write, beside plain pymongo doing the same
work in the same process, against SecantusDB started here (the test server: a Python server, so its
figures say more about it than about a real mongod; the RATIO is what this measures).

  read:  collection -> Parquet (zstd).  udop: ``MongoConnector.read()`` (batched cursor, BSON ->
         Arrow with an inferred schema) into ``udop.connectors.io.write_parquet``.  Baseline: a
         pymongo cursor with the same batch size, ObjectId/Decimal128 turned into text/Decimal by
         hand, ``pa.RecordBatch.from_pylist`` per batch, pyarrow's Parquet writer.
  convert: the BSON -> Arrow step alone (CPU time) on documents already fetched: the connector's
         batches against the same hand-written conversion as the read baseline.
  write: Arrow batches -> a fresh collection, appended.  udop: ``write_once`` (one transaction with
         the ledger entry).  Baseline: ``insert_many(ordered=False)`` of ``to_pylist()`` rows, no
         transaction.

Prints best and median of ``--repeat`` runs (the machine may be shared: the median says how noisy).

    .venv/bin/python benchmarks/connectors_mongodb.py [--docs 50000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pymongo
from bson import Decimal128
from secantus import SecantusDBServer

from udop.connectors import LoadEntry, get_connector
from udop.connectors.io import write_parquet


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=10_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="udop-bench-mongo-") as tmp:
        server = SecantusDBServer(storage_path=str(Path(tmp) / "db"))
        server.start()
        client: pymongo.MongoClient[Any] = pymongo.MongoClient(server.uri, tz_aware=True)
        db = client["bench"]
        base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        db.orders.insert_many(
            [
                {"n": i, "region": "eu" if i % 3 else "us", "total": Decimal128(f"{i % 997}.25"),
                 "at": base + dt.timedelta(seconds=i), "qty": i % 7, "note": f"order {i}"}
                for i in range(args.docs)
            ]
        )  # fmt: skip
        spec = {"connector": "mongodb", "url": server.uri, "database": "bench", "batch_size": args.batch_size}

        def udop_read() -> None:
            with get_connector({**spec, "collection": "orders"}) as c:
                manifest = write_parquet(c.read(), str(Path(tmp) / f"udop-{uuid.uuid4().hex[:6]}"))
            assert manifest.rows == args.docs

        def plain_read() -> None:
            path = Path(tmp) / f"plain-{uuid.uuid4().hex[:6]}.parquet"
            writer = None
            rows: list[dict[str, Any]] = []

            def flush() -> None:
                nonlocal writer
                batch = pa.RecordBatch.from_pylist(rows)
                if writer is None:
                    writer = pq.ParquetWriter(path, batch.schema, compression="zstd")
                writer.write_batch(batch)
                rows.clear()

            for doc in db.orders.find({}, batch_size=args.batch_size):
                doc["_id"] = str(doc["_id"])
                doc["total"] = doc["total"].to_decimal()
                rows.append(doc)
                if len(rows) >= args.batch_size:
                    flush()
            if rows:
                flush()
            assert writer is not None
            writer.close()

        ns = range(args.docs)
        sample = pa.table(
            {"n": list(ns), "region": ["eu"] * args.docs,
             "at": [base + dt.timedelta(seconds=i) for i in ns], "qty": [i % 7 for i in ns]}
        )  # fmt: skip
        batches = sample.to_batches(max_chunksize=args.batch_size)

        def udop_write() -> None:
            name = f"w{uuid.uuid4().hex[:6]}"
            entry = LoadEntry(pipeline="bench", run_id=name, task_id="load")
            with get_connector({**spec, "collection": name}) as c:
                assert c.write_once(batches, "append", [], entry) == (args.docs, False)

        def plain_write() -> None:
            name = f"p{uuid.uuid4().hex[:6]}"
            for batch in batches:
                db[name].insert_many(batch.to_pylist(), ordered=False)

        # the conversion alone, CPU time, on documents already fetched (no server in the figure)
        fetched = list(db.orders.find({}))
        reader = get_connector({**spec, "collection": "orders"})

        def udop_convert() -> None:
            for _ in reader._batches([dict(d) for d in fetched], None):
                pass

        def plain_convert() -> None:
            for i in range(0, len(fetched), args.batch_size):
                rows = []
                for doc in fetched[i : i + args.batch_size]:
                    row = dict(doc)
                    row["_id"] = str(row["_id"])
                    row["total"] = row["total"].to_decimal()
                    rows.append(row)
                pa.RecordBatch.from_pylist(rows)

        def cpu(fn: Callable[[], Any]) -> list[float]:
            out = []
            for _ in range(args.repeat):
                start = time.process_time()
                fn()
                out.append(time.process_time() - start)
            return out

        print(f"{args.docs:,} documents, batch size {args.batch_size:,}; SecantusDB {server.uri}")
        a, b = cpu(udop_convert), cpu(plain_convert)
        print(
            f"convert (CPU s, best)  udop {min(a):.3f}   pymongo->Arrow by hand {min(b):.3f}"
            f"   {min(a) / min(b):.2f}x"
        )
        print("(the machine may be shared with other work: compare the ratio, not the absolute rate)")
        for label, ours, theirs in [("read", udop_read, plain_read), ("write", udop_write, plain_write)]:
            a, b = timed(ours, args.repeat), timed(theirs, args.repeat)
            n = args.docs
            print(
                f"{label:5}  udop {n / min(a):>9,.0f} docs/s (median {n / statistics.median(a):,.0f})"
                f"   pymongo {n / min(b):>9,.0f} docs/s (median {n / statistics.median(b):,.0f})"
                f"   udop/pymongo {min(b) / min(a):.2f}x"
            )
        client.close()
        server.stop()


if __name__ == "__main__":
    main()
