"""Kafka (Tansu, a real Kafka-protocol broker in memory) -> transform -> sink: sustained messages per
second and end-to-end latency of ``udop stream``, beside a plain confluent-kafka consumer loop doing the
same work into the same sink in the same process.

  udop:     the stream runner in-process (what ``udop stream FILE`` runs): micro-batches of up to
            ``--batch`` messages, each a recorded run (SQLite metadata) whose transform derives
            ``total = amount * 2`` and drops ``amount < 0``, then a load; offsets stored with each
            batch after its load committed (exactly once with the ledger).
  baseline: consume() up to the same batch size, Arrow's JSON reader, the same filter and derive
            in pyarrow.compute, then the same sink (PostgreSQL: the batch as CSV by Arrow, one psycopg
            COPY in one transaction, one connection kept open; Parquet: one file per batch). No offsets
            kept anywhere (it is the speed ceiling, not a delivery guarantee).

Throughput: ``--messages`` produced first, then timed from the consumer's start (udop: reading the
definition, opening the metadata store, the lease) to the last commit; plain and udop alternate
``--repeat`` times per sink, and best, median and each round's udop/plain are printed, with the time to
the first commit (start-up, paid once per process) beside it. The default million messages is ~6 s a
round: a sustained rate, where 200,000 (~1.3 s) left it to one 500 ms fetch wait of the broker
(Tansu's, in either consumer) and the first batch.
Latency: a producer sends ``--rate`` messages/s for ``--seconds`` while the consumer runs; a message's
latency is the time from its Kafka timestamp (set when produced) to its batch's commit (p50 / p99).
The machine may be shared: the load average is printed beside the figures.

    .venv/bin/python benchmarks/streams.py [--messages 1000000] [--batch 10000] [--repeat 3]
        [--sinks postgres,parquet] [--rate 2000] [--seconds 10 (0: no latency run)]
"""

from __future__ import annotations

import argparse
import io
import json
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
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration" / "streams"))
from streams_support import (  # type: ignore[import-not-found,unused-ignore]  # (the path above)
    PG_URL,
    create_topic,
    tansu,
)

from udop.stream import StreamBatch

PG = "postgresql://postgres@127.0.0.1:5432/test"


def produce(bootstrap: str, topic: str, count: int, *, rate: float | None = None) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    started = time.monotonic()
    for i in range(count):
        value = json.dumps({"id": i, "amount": (i % 1000) - 10, "name": f"customer-{i % 9973}"}).encode()
        while True:
            try:
                producer.produce(topic, value=value, partition=i % 2)
                break
            except BufferError:
                producer.poll(0.05)
        if rate is not None and i % 50 == 0:
            producer.poll(0)
            ahead = started + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    producer.flush(60)


class Timed:
    """A stream source that notes each batch's message timestamps and, at commit, their latencies."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.stamps: list[list[float]] = []
        self.latencies: list[float] = []
        self.committed = 0
        self.last_commit = 0.0
        #: when the first batch committed (monotonic): the start-up a consumer pays once
        self.first_commit = 0.0
        #: the process's CPU seconds while it consumed (set by the caller)
        self.cpu = 0.0

    def seek(self, positions: Mapping[str, Any]) -> None:
        self.inner.seek(positions)

    def poll(self, max_rows: int, max_seconds: float, stop: threading.Event) -> StreamBatch | None:
        batch: StreamBatch | None = self.inner.poll(max_rows, max_seconds, stop)
        if batch is not None:
            ms = batch.table.column("_timestamp").cast(pa.int64()).to_pylist()
            self.stamps.append([m / 1000 for m in ms])
        return batch

    def commit(self, end: Mapping[str, Any], acks: list[Any]) -> None:
        self.inner.commit(end, acks)
        now = time.time()
        stamps = self.stamps.pop(0)
        self.latencies.extend(now - s for s in stamps)
        self.committed += len(stamps)
        self.last_commit = time.monotonic()
        self.first_commit = self.first_commit or self.last_commit

    def lag(self) -> int | None:
        return None

    def close(self) -> None:
        self.inner.close()


def definition(bootstrap: str, topic: str, target: str, batch: int, seconds: float) -> str:
    return f"""
apiVersion: udop/v1
kind: Pipeline
metadata: {{name: {topic}}}
spec:
  connections:
    bus: {{connector: kafka, bootstrap_servers: "{bootstrap}"}}
  trigger:
    stream:
      source: {{connection: bus, topic: {topic}, columns: {{id: int, amount: int, name: string}}}}
      id: orders
      max_batch_rows: {batch}
      max_batch_seconds: {seconds}
  tasks:
    - id: priced
      type: transform
      depends_on: [orders]
      steps:
        - filter: "amount >= 0"
        - derive: {{total: "amount * 2"}}
        - select: [id, amount, name, total]
    - id: land
      type: load
      depends_on: [priced]
      target: {target}
"""


def run_udop(
    bootstrap: str, topic: str, target: str, *, expect: int, batch: int, seconds: float, work: Path
) -> Timed:
    from udop.executor.local import LocalExecutor
    from udop.spec.loader import load_pipeline
    from udop.store import open_store
    from udop.stream.runner import StreamRunner, open_source

    path = work / f"{topic}.yaml"
    path.write_text(definition(bootstrap, topic, target, batch, seconds))
    pipeline = load_pipeline(path)
    store = open_store(f"sqlite:///{work / 'meta.db'}")
    executor = LocalExecutor(store, workers=2, data_root=str(work / "data"), services={"base_dir": str(work)})
    source = Timed(open_source(pipeline))
    stop = threading.Event()

    def report(_figures: Any) -> None:
        if source.committed >= expect:
            stop.set()

    try:
        StreamRunner(pipeline, store, executor, source, stop=stop, report=report).run()
    finally:
        source.close()
        store.close()
    return source


def run_plain(
    bootstrap: str,
    topic: str,
    sink: str,
    *,
    table: str,
    folder: Path,
    expect: int,
    batch: int,
    seconds: float,
) -> Timed:
    import psycopg
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "plain",
            "enable.auto.commit": False,
            "queued.max.messages.kbytes": 16384,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in (0, 1)])
    schema = pa.schema([("id", pa.int64()), ("amount", pa.int64()), ("name", pa.string())])
    timed = Timed(None)
    conn = psycopg.connect(PG) if sink == "postgres" else None
    n = 0
    while timed.committed < expect:
        messages: list[Any] = []
        deadline: float | None = None
        while len(messages) < batch:
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            got = consumer.consume(batch - len(messages), wait)
            messages.extend(m for m in got if m.error() is None)
            if messages and deadline is None:
                deadline = time.monotonic() + seconds
            if deadline is not None and time.monotonic() >= deadline:
                break
        if not messages:
            continue
        stamps = [m.timestamp()[1] / 1000 for m in messages]
        data = pajson.read_json(
            pa.BufferReader(b"\n".join(m.value() for m in messages)),
            parse_options=pajson.ParseOptions(explicit_schema=schema),
        )
        data = data.filter(pc.greater_equal(data["amount"], 0))
        data = data.append_column("total", pc.multiply(data["amount"], 2))
        if conn is not None:
            # the batch as CSV by Arrow (C++), sent in one COPY: what udop's PostgreSQL load does too
            csv = io.BytesIO()
            pacsv.write_csv(
                data.select(["id", "amount", "name", "total"]),
                csv,
                write_options=pacsv.WriteOptions(include_header=False),
            )
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(f'COPY "{table}" (id, amount, name, total) FROM STDIN WITH (FORMAT csv)') as copy,
            ):
                copy.write(csv.getbuffer())
        else:
            pq.write_table(data, folder / f"part-{n}.parquet")
            n += 1
        now = time.time()
        timed.latencies.extend(now - s for s in stamps)
        timed.committed += len(messages)
        timed.last_commit = time.monotonic()
        timed.first_commit = timed.first_commit or timed.last_commit
    consumer.close()
    if conn is not None:
        conn.close()
    return timed


def figures(label: str, sink: str, timed: Timed, started: float, count: int) -> float:
    rate = count / (timed.last_commit - started)
    print(f"  {sink:<9} {label:<9} {rate:>10,.0f} msgs/s")
    return rate


def latency(label: str, sink: str, timed: Timed) -> None:
    lat = sorted(timed.latencies)
    p50 = statistics.median(lat)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(
        f"  {sink:<9} {label:<9} p50 {p50 * 1000:>7.0f} ms   p99 {p99 * 1000:>7.0f} ms   ({len(lat):,} msgs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=2_000)
    parser.add_argument("--seconds", type=float, default=10, help="latency run's length; 0 skips it")
    parser.add_argument("--repeat", type=int, default=3, help="alternating plain/udop rounds per sink")
    parser.add_argument("--sinks", default="postgres,parquet")
    args = parser.parse_args()
    sinks = [s for s in args.sinks.split(",") if s]
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL, poolclass=sa.pool.NullPool)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    with tansu() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tables: list[str] = []

        def target(sink: str, label: str) -> tuple[str, str, Path]:
            table = f"h17_bench_{label}_{uuid.uuid4().hex[:6]}"
            folder = work / f"out-{label}-{uuid.uuid4().hex[:6]}"
            folder.mkdir()
            tables.append(table)
            with engine.begin() as conn:
                conn.execute(
                    sa.text(f'CREATE TABLE "{table}" (id bigint, amount bigint, name text, total bigint)')
                )
            if sink == "postgres":
                spec = (
                    "{connector: postgres, host: 127.0.0.1, port: 5432, user: postgres, database: test, "
                    f"table: {table}, mode: append}}"
                )
            else:
                spec = f"{{connector: parquet, path: {folder}, mode: append}}"
            return spec, table, folder

        def one(sink: str, label: str, count: int, rate: float | None, seconds: float) -> tuple[Timed, float]:
            topic = f"bench-{label}-{uuid.uuid4().hex[:6]}"
            create_topic(bootstrap, topic)
            spec, table, folder = target(sink, label)
            producer: threading.Thread | None = None
            if rate is None:
                produce(bootstrap, topic, count)
            else:
                producer = threading.Thread(
                    target=produce, args=(bootstrap, topic, count), kwargs={"rate": rate}
                )
                producer.start()
            started, cpu = time.monotonic(), time.process_time()
            if label == "udop":
                timed = run_udop(
                    bootstrap, topic, spec, expect=count, batch=args.batch, seconds=seconds, work=work
                )
            else:
                timed = run_plain(
                    bootstrap,
                    topic,
                    sink,
                    table=table,
                    folder=folder,
                    expect=count,
                    batch=args.batch,
                    seconds=seconds,
                )
            timed.cpu = time.process_time() - cpu
            if producer is not None:
                producer.join()
            if sink == "postgres":
                with engine.begin() as conn:
                    rows = conn.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar()
                expected = sum(1 for i in range(count) if (i % 1000) - 10 >= 0)
                assert rows == expected, f"{label}: {rows} rows in the sink, expected {expected}"
            return timed, started

        try:
            # warm-up, untimed: imports (udop, pandas via pyarrow, psycopg) and the first connections
            for sink in sinks:
                for label in ("plain", "udop"):
                    one(sink, label, 2_000, None, 0.2)
            print(
                f"\nthroughput: {args.messages:,} messages waiting, batches of up to {args.batch:,}, "
                f"{args.repeat} alternating rounds"
            )
            for sink in sinks:
                rates: dict[str, list[float]] = {"plain": [], "udop": []}
                cpu: dict[str, list[float]] = {"plain": [], "udop": []}
                first: dict[str, list[float]] = {"plain": [], "udop": []}
                ratios: list[float] = []
                for _ in range(args.repeat):
                    for label in ("plain", "udop"):
                        timed, started = one(sink, label, args.messages, None, 1.0)
                        # the process's CPU (all its threads) per 10,000 messages consumed: what a loaded
                        # machine's rounds compete for
                        cpu[label].append(timed.cpu / args.messages * 10_000)
                        first[label].append(timed.first_commit - started)
                        rates[label].append(figures(label, sink, timed, started, args.messages))
                    ratios.append(rates["udop"][-1] / rates["plain"][-1])
                for label in ("plain", "udop"):
                    print(
                        f"  {sink:<9} {label:<9} best {max(rates[label]):>10,.0f}   median "
                        f"{statistics.median(rates[label]):>10,.0f} msgs/s   CPU per 10,000 msgs (median) "
                        f"{statistics.median(cpu[label]) * 1000:.0f} ms   first commit after (median) "
                        f"{statistics.median(first[label]) * 1000:.0f} ms"
                    )
                print(
                    f"  {sink:<9} udop / plain: best {max(rates['udop']) / max(rates['plain']):.2f}, median "
                    f"{statistics.median(rates['udop']) / statistics.median(rates['plain']):.2f}, per round "
                    + " ".join(f"{r:.2f}" for r in ratios)
                )
            if args.seconds > 0:
                count = int(args.rate * args.seconds)
                print(f"\nlatency: {args.rate:,.0f} msgs/s for {args.seconds:g} s, batches close after 0.5 s")
                for sink in sinks:
                    for label in ("plain", "udop"):
                        timed, _started = one(sink, label, count, args.rate, 0.5)
                        latency(label, sink, timed)
        finally:
            with engine.begin() as conn:
                for table in tables:
                    conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))
    print(
        f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (shared machine: other "
        "engineers' tests run beside this)"
    )


if __name__ == "__main__":
    main()
