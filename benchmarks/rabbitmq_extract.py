"""Messages per second of the rabbitmq connector's BATCH extract (``read()`` of one bounded batch, then
``acknowledge()``), beside plain pika doing the same work in the same process, against the RabbitMQ
at 127.0.0.1:5672 (guest/guest).

Each measurement fills a fresh queue with ``--messages`` small JSON messages, then times reading all
of them into Arrow batches and acknowledging them (one ``basic_ack(multiple=True)``), and checks the
queue is empty afterwards.

  udop:          ``get_connector({connector: rabbitmq, queue, max_messages: N}).read()`` + ``acknowledge()``
  pika consume:  ``basic_qos(prefetch)`` + ``channel.consume`` generator, ``json.loads`` per message,
                 ``pa.RecordBatch.from_pylist`` per batch, one ``basic_ack(multiple=True)`` (the baseline)
  pika get:      the same with one ``basic_get`` per message (what the extract did before: one network
                 round trip per message)

Prints best and median of ``--repeat`` runs (the machine may be shared: the median says how noisy).

    .venv/bin/python benchmarks/rabbitmq_extract.py [--messages 50000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import pika
import pyarrow as pa

from udop.connectors import get_connector

BATCH = 50_000  # the connector's default batch_size


def _channel() -> tuple[Any, Any]:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    return conn, conn.channel()


def _depth(channel: Any, queue: str) -> int:
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def _fill(channel: Any, queue: str, n: int) -> None:
    for i in range(n):
        body = json.dumps({"id": i, "kind": "order", "amount": i * 0.5, "note": f"message {i}"})
        channel.basic_publish("", queue, body.encode())
    deadline = time.monotonic() + 60
    while _depth(channel, queue) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"queue {queue} did not reach {n} messages")
        time.sleep(0.05)


def udop_read(queue: str, n: int) -> int:
    with get_connector({"connector": "rabbitmq", "queue": queue, "max_messages": n}) as c:
        got = sum(b.num_rows for b in c.read())
        c.acknowledge()
    return got


def pika_consume(queue: str, n: int) -> int:
    conn, ch = _channel()
    try:
        ch.basic_qos(prefetch_count=min(n, 10_000))
        rows: list[dict[str, Any]] = []
        got, last = 0, 0
        window = 0
        while got < n:
            # one consumer per prefetch window: nothing is acked while reading, so a consumer gets
            # at most its window; the next one gets a fresh one
            window = min(n - got, 10_000)
            ch.basic_qos(prefetch_count=window)
            taken = 0
            for method, _props, body in ch.consume(queue, inactivity_timeout=1.0):
                if method is None:
                    break
                rows.append(json.loads(body))
                last = method.delivery_tag
                taken += 1
                if len(rows) >= BATCH:
                    pa.RecordBatch.from_pylist(rows)
                    rows = []
                if taken >= window:
                    break
            ch.cancel()
            got += taken
            if taken < window:
                break
        if rows:
            pa.RecordBatch.from_pylist(rows)
        ch.basic_ack(last, multiple=True)
        return got
    finally:
        conn.close()


def pika_get(queue: str, n: int) -> int:
    conn, ch = _channel()
    try:
        rows: list[dict[str, Any]] = []
        got, last = 0, 0
        while got < n:
            method, _props, body = ch.basic_get(queue, auto_ack=False)
            if method is None:
                break
            rows.append(json.loads(body))
            last = method.delivery_tag
            got += 1
            if len(rows) >= BATCH:
                pa.RecordBatch.from_pylist(rows)
                rows = []
        if rows:
            pa.RecordBatch.from_pylist(rows)
        ch.basic_ack(last, multiple=True)
        return got
    finally:
        conn.close()


def measure(name: str, fn: Callable[[str, int], int], n: int, repeat: int) -> None:
    conn, ch = _channel()
    queue = f"udop-bench-{uuid.uuid4().hex[:10]}"
    ch.queue_declare(queue)
    rates = []
    try:
        for _ in range(repeat):
            _fill(ch, queue, n)
            t0 = time.perf_counter()
            got = fn(queue, n)
            elapsed = time.perf_counter() - t0
            assert got == n, f"{name}: read {got} of {n}"
            left = _depth(ch, queue)
            assert left == 0, f"{name}: {left} messages left after the ack"
            rates.append(n / elapsed)
    finally:
        ch.queue_delete(queue)
        conn.close()
    print(f"{name:<14} best {max(rates):>9,.0f} msg/s   median {statistics.median(rates):>9,.0f} msg/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-get", action="store_true", help="leave out the slow basic_get baseline")
    args = ap.parse_args()
    print(f"{args.messages:,} JSON messages, read + one ack, {args.repeat} runs each")
    measure("udop extract", udop_read, args.messages, args.repeat)
    measure("pika consume", pika_consume, args.messages, args.repeat)
    if not args.skip_get:
        measure("pika get", pika_get, args.messages, args.repeat)


if __name__ == "__main__":
    main()
