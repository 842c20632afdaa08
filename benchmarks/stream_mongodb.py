"""MongoDB change stream (SecantusDB, a MongoDB wire-protocol server in this process) -> PostgreSQL:
changes per second of ``udop stream``'s runner beside a plain pymongo change-stream loop writing the same
table in the same process.

  udop:     the stream runner in-process (what ``udop stream FILE`` runs), ``start: earliest``,
            micro-batches of up to ``--batch`` changes, each a recorded run (SQLite metadata) selecting
            ``_position, _op, id, amount`` and loading them (append, with the load ledger); the resume
            token stored with each batch after its load committed.
  baseline: ``watch()`` from the same oplog start, the same four fields per change into Arrow, the batch
            as CSV in one psycopg COPY in one transaction. No position kept anywhere (the ceiling).

Each round inserts ``--changes`` documents into a fresh server first, then times each consumer from
its start to the commit of the last change; plain and udop alternate ``--repeat`` times, and best and
median are printed beside the load average.

    .venv/bin/python benchmarks/stream_mongodb.py [--changes 20000] [--batch 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streams import Timed  # type: ignore[import-not-found,unused-ignore]  # (the path above)

from udop.stream import StreamBatch

PG = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class Counted(Timed):  # type: ignore[misc]
    """Timed without message timestamps: counts the changes of each committed batch."""

    def poll(self, max_rows: int, max_seconds: float, stop: threading.Event) -> StreamBatch | None:
        batch: StreamBatch | None = self.inner.poll(max_rows, max_seconds, stop)
        if batch is not None:
            self.stamps.append([0.0] * batch.rows)
        return batch

    def commit(self, end: Mapping[str, Any], acks: list[Any]) -> None:
        super().commit(end, acks)


def definition(name: str, url: str, database: str, table: str, batch: int) -> str:
    return f"""
apiVersion: udop/v1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  connections:
    mongo: {{connector: mongodb, url: "{url}", database: {database}}}
  trigger:
    stream:
      source: {{connection: mongo, collection: orders, start: earliest, columns: {{id: int, amount: int}}}}
      id: changes
      max_batch_rows: {batch}
      max_batch_seconds: 1
  tasks:
    - id: picked
      type: transform
      depends_on: [changes]
      steps:
        - select: [_position, _op, id, amount]
    - id: land
      type: load
      depends_on: [picked]
      target: {{connector: postgres, host: 127.0.0.1, port: 5432, user: postgres, database: test,
               table: {table}, mode: append}}
"""


def run_udop(url: str, database: str, table: str, *, expect: int, batch: int, work: Path) -> float:
    from udop.executor.local import LocalExecutor
    from udop.spec.loader import load_pipeline
    from udop.store import open_store
    from udop.stream.runner import StreamRunner, open_source

    name = f"bench-{uuid.uuid4().hex[:6]}"
    path = work / f"{name}.yaml"
    path.write_text(definition(name, url, database, table, batch))
    pipeline = load_pipeline(path)
    store = open_store(f"sqlite:///{work / 'meta.db'}")
    executor = LocalExecutor(store, workers=2, data_root=str(work / "data"), services={"base_dir": str(work)})
    source = Counted(open_source(pipeline))
    stop = threading.Event()

    def report(_figures: Any) -> None:
        if source.committed >= expect:
            stop.set()

    started = time.monotonic()
    try:
        StreamRunner(pipeline, store, executor, source, stop=stop, report=report).run()
    finally:
        source.close()
        store.close()
    return expect / (source.last_commit - started)


def run_plain(url: str, database: str, table: str, *, expect: int, batch: int) -> float:
    import psycopg
    import pyarrow.csv as pacsv
    import pymongo
    from bson import json_util

    client: pymongo.MongoClient[Any] = pymongo.MongoClient(url, tz_aware=True)
    oldest = client["local"]["oplog.rs"].find_one({}, {"ts": 1}, sort=[("$natural", 1)])
    assert oldest is not None
    conn = psycopg.connect(PG)
    started = time.monotonic()
    done = 0
    last = started
    with client[database].orders.watch(
        start_at_operation_time=oldest["ts"], full_document="updateLookup", max_await_time_ms=500
    ) as stream:
        while done < expect:
            rows: list[dict[str, Any]] = []
            deadline: float | None = None
            while len(rows) < batch and (deadline is None or time.monotonic() < deadline):
                change = stream.try_next()
                if change is None:
                    if rows:
                        continue
                    break
                doc = change.get("fullDocument") or {}
                rows.append({"_position": json_util.dumps(change["_id"]), "_op": change["operationType"],
                             "id": doc.get("id"), "amount": doc.get("amount")})  # fmt: skip
                if deadline is None:
                    deadline = time.monotonic() + 1.0
            if not rows:
                continue
            csv = io.BytesIO()
            pacsv.write_csv(
                pa.Table.from_pylist(rows), csv, write_options=pacsv.WriteOptions(include_header=False)
            )
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(f'COPY "{table}" (_position, _op, id, amount) FROM STDIN WITH (FORMAT csv)') as copy,
            ):
                copy.write(csv.getbuffer())
            done += len(rows)
            last = time.monotonic()
    conn.close()
    client.close()
    return expect / (last - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import pymongo
    import sqlalchemy as sa
    from secantus import SecantusDBServer

    engine = sa.create_engine(PG_URL, poolclass=sa.pool.NullPool)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    rates: dict[str, list[float]] = {"plain": [], "udop": []}
    tables: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for round_ in range(args.repeat):
                for label in ("plain", "udop"):
                    # a fresh server per round: both consumers start at the oldest change of its oplog
                    server = SecantusDBServer(storage_path=str(Path(tmp) / f"mongo-{round_}-{label}"))
                    server.start()
                    client: pymongo.MongoClient[Any] = pymongo.MongoClient(server.uri)
                    database = f"bench_{uuid.uuid4().hex[:8]}"
                    docs = [{"id": i, "amount": i % 7} for i in range(args.changes)]
                    client[database].orders.insert_many(docs)
                    table = f"h17_mbench_{label}_{uuid.uuid4().hex[:6]}"
                    tables.append(table)
                    with engine.begin() as conn:
                        columns = "_position text, _op text, id bigint, amount bigint"
                        conn.execute(sa.text(f'CREATE TABLE "{table}" ({columns})'))
                    try:
                        if label == "plain":
                            rate = run_plain(
                                server.uri, database, table, expect=args.changes, batch=args.batch
                            )
                        else:
                            work = Path(tmp) / f"udop-{round_}"
                            work.mkdir()
                            rate = run_udop(
                                server.uri, database, table, expect=args.changes, batch=args.batch, work=work
                            )
                    finally:
                        client.close()
                        server.stop()
                    rates[label].append(rate)
                    print(f"  round {round_ + 1} {label:<6} {rate:>8,.0f} changes/s")
        finally:
            with engine.begin() as conn:
                for table in tables:
                    conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))
    for label, got in rates.items():
        print(f"{label:<6} best {max(got):>8,.0f}  median {statistics.median(got):>8,.0f} changes/s")
    print(
        f"udop / plain (medians): {statistics.median(rates['udop']) / statistics.median(rates['plain']):.2f}"
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
