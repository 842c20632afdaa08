"""What keeping message ids costs a stream batch (SQS, RabbitMQ classic queues): the metadata-store work
of one batch — ``StreamStore.fresh`` (look its ids up), ``begin`` and ``settle`` (keep them) — with
``--messages`` ids per batch, beside the same three calls for a batch without ids (Kafka, Redis,
Kinesis: positions only), and beside the stream runner's on Lambda (``claim`` instead of ``fresh``: the
ids written before the run), on SQLite and on PostgreSQL (a database of its own, dropped afterwards).

Every SQS batch looks all its ids up (a RabbitMQ batch only its redelivered messages: the lookup is
the SQS case). The lookup is one statement (``= ANY(ARRAY(...))`` over a JSON array on PostgreSQL,
``json_each`` on SQLite): a first version with ``IN`` lists of 500 parameters was planned as a scan of
a young ``stream_messages`` that autovacuum had not analyzed yet (5-28 s per batch once it held
10k-40k ids). ``--analyze`` runs ANALYZE after the first batch, as autovacuum does within a minute,
to compare. The load average is printed.

    .venv/bin/python benchmarks/stream_message_ids.py [--messages 10000] [--batches 7] [--analyze]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid

import pyarrow as pa

from udop.store import open_store
from udop.stream.source import StreamBatch
from udop.stream.store import StreamStore

ADMIN = os.environ.get("UDOP_TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _batches(  # noqa: PLR0917 - a benchmark's knobs
    url: str, messages: int, count: int, with_ids: bool, analyze: bool, claim: bool = False
) -> list[float]:
    store = open_store(url)
    batches = StreamStore(store)
    pipeline = f"bench-{uuid.uuid4().hex[:8]}"
    times: list[float] = []
    for n in range(count):
        ids: list[str | None] | None = [uuid.uuid4().hex for _ in range(messages)] if with_ids else None
        batch = StreamBatch(table=pa.table({"x": list(range(messages))}), end={}, ids=ids)
        began = time.perf_counter()
        if claim:  # the stream runner on Lambda: claimed before the run, under a run id of the ids
            claimed = batches.claim(pipeline, batch, stale_after=960.0)
            fresh, run_id = claimed.batch, claimed.run_id
        else:
            fresh, run_id = batches.fresh(pipeline, batch), uuid.uuid4().hex
        assert fresh is not None
        batches.begin(pipeline, run_id, {}, fresh.end, fresh.acks, fresh.rows, ids=fresh.ids, keep_ids=3600.0)
        batches.settle(pipeline, run_id, "committed")
        times.append(time.perf_counter() - began)
        if analyze and n == 0 and url.startswith("postgresql"):
            with store.engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE stream_messages")
                conn.commit()
    store.close()
    return times


def _line(label: str, times: list[float]) -> str:
    return f"{label}: best {min(times) * 1000:.1f} ms, median {statistics.median(times) * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=7)
    parser.add_argument("--analyze", action="store_true")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}; {args.messages:,} messages per batch, {args.batches} batches")
    import psycopg

    database = f"bench_ids_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    try:
        urls = {
            "SQLite": f"sqlite:///{tempfile.mkdtemp()}/meta.db",
            "PostgreSQL": ADMIN.rsplit("/", 1)[0] + f"/{database}",
        }
        for name, url in urls.items():
            base = _batches(url, args.messages, args.batches, False, args.analyze)
            ids = _batches(url, args.messages, args.batches, True, args.analyze)
            claimed = _batches(url, args.messages, args.batches, True, args.analyze, claim=True)
            print(
                f"{name}: {_line('without ids (baseline)', base)}; {_line('with ids', ids)}; "
                f"{_line('claimed (Lambda)', claimed)}"
            )
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
