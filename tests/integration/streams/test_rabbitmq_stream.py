"""``udop stream`` on a RabbitMQ queue into PostgreSQL: messages are acknowledged only after their batch
committed; a process killed after a batch's offsets moved but before its ack, then started again, loads
nothing twice (the broker hands the batch back; its message ids are the committed ones)."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pika
import pyarrow.dataset as ds
import pytest
import sqlalchemy as sa
from streams_support import count_rows, definition, udop, wait_for

from udop.executor.local import LocalExecutor
from udop.spec.loader import load_pipeline
from udop.store import open_store
from udop.stream.runner import StreamRunner, open_source
from udop.stream.store import StreamStore

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq, pytest.mark.postgres]


def _channel() -> pika.adapters.blocking_connection.BlockingChannel:
    params = pika.ConnectionParameters("127.0.0.1", connection_attempts=1, socket_timeout=5, stack_timeout=15)
    return pika.BlockingConnection(params).channel()


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"h17-stream-{uuid.uuid4().hex[:8]}"
    channel = _channel()
    channel.queue_declare(name, durable=True)
    channel.connection.close()
    yield name
    channel = _channel()
    channel.queue_delete(name)
    channel.connection.close()


def test_killed_between_commit_and_ack_then_restarted_loads_every_message_once(
    queue: str, pg_table: tuple[sa.Engine, str], tmp_path: Path
) -> None:
    engine, table = pg_table
    channel = _channel()
    total = 400
    for i in range(total):
        channel.basic_publish(
            "",
            queue,
            json.dumps({"id": i, "amount": i % 3}),
            pika.BasicProperties(message_id=f"m-{i}", delivery_mode=2),
        )
    channel.connection.close()
    target = (
        "{connector: postgres, host: 127.0.0.1, port: 5432, user: postgres, database: test, "
        f"table: {table}, mode: append}}"
    )
    name = f"h17-rabbit-{uuid.uuid4().hex[:6]}"
    (tmp_path / "p.yaml").write_text(
        definition(name, "{connector: rabbitmq, prefetch: 500}", f"queue: {queue}", target, rows=150)
    )

    first = udop(tmp_path, "stream", "p.yaml", fault="stream-offsets-committed")
    _out, err = first.communicate(timeout=120)
    assert first.returncode == -signal.SIGKILL, err
    loaded = count_rows(engine, table)
    assert 0 < loaded[0] <= 150 and loaded[0] == loaded[1]

    again = udop(tmp_path, "stream", "p.yaml")
    wait_for(lambda: count_rows(engine, table)[0] >= total, f"{total} rows in {table}")
    time.sleep(1.0)
    again.send_signal(signal.SIGTERM)
    _out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert count_rows(engine, table) == (total, total)
    channel = _channel()
    left = channel.queue_declare(queue, passive=True).method.message_count
    channel.connection.close()
    assert left == 0  # every message acknowledged after its commit


def test_a_stream_queue_is_read_from_the_offset_udop_keeps(
    pg_table: tuple[sa.Engine, str], tmp_path: Path
) -> None:
    engine, table = pg_table
    queue = f"h17-squeue-{uuid.uuid4().hex[:8]}"
    channel = _channel()
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "stream"})
    try:
        total = 300
        for i in range(total):  # no message ids: the offset alone tells what was loaded
            channel.basic_publish("", queue, json.dumps({"id": i, "amount": 1}))
        channel.connection.close()
        target = (
            "{connector: postgres, host: 127.0.0.1, port: 5432, user: postgres, database: test, "
            f"table: {table}, mode: append}}"
        )
        name = f"h17-squeue-{uuid.uuid4().hex[:6]}"
        (tmp_path / "p.yaml").write_text(
            definition(
                name,
                "{connector: rabbitmq, queue_type: stream, prefetch: 500}",
                f"queue: {queue}",
                target,
                rows=100,
            )
        )
        first = udop(tmp_path, "stream", "p.yaml", fault="load-committed")  # rows in, offsets not moved
        _out, err = first.communicate(timeout=120)
        assert first.returncode == -signal.SIGKILL, err
        assert 0 < count_rows(engine, table)[0] <= 100

        again = udop(tmp_path, "stream", "p.yaml")
        wait_for(lambda: count_rows(engine, table)[0] >= total, f"{total} rows in {table}")
        time.sleep(1.0)
        again.send_signal(signal.SIGTERM)
        _out, err = again.communicate(timeout=60)
        assert again.returncode == 0, err
        assert count_rows(engine, table) == (total, total)
    finally:
        channel = _channel()
        channel.queue_delete(queue)
        channel.connection.close()


class _NeverAcks:
    """The source of a process that dies after each batch committed, before the broker is told."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def commit(self, end: Mapping[str, Any], acks: list[Any]) -> None:
        return None


class _Died(Exception):
    pass


class _DiesBeforeSecondSettle(StreamStore):
    """The process dies when its second batch's run succeeded, before the batch settles."""

    settled = 0

    def settle(self, pipeline: str, run_id: str, state: str, *, error: str | None = None) -> None:
        self.settled += 1
        if self.settled == 2:
            raise _Died
        super().settle(pipeline, run_id, state, error=error)


def test_redelivered_messages_of_every_committed_batch_are_acknowledged_not_loaded(
    queue: str, tmp_path: Path
) -> None:
    """A process commits batch A (not acknowledged) and dies when batch B's run succeeded (B pending).
    The next one settles B (its acks belong to a closed channel: not sent) and gets A and B back
    redelivered: both are acknowledged without loading — A too, though B committed after it."""
    channel = _channel()
    for i in range(30):
        props = pika.BasicProperties(message_id=f"m-{i}", delivery_mode=2)
        channel.basic_publish("", queue, json.dumps({"id": i}), props)
    channel.connection.close()
    name = f"h17-rabbit-{uuid.uuid4().hex[:6]}"
    (tmp_path / "p.yaml").write_text(f"""
apiVersion: udop/v1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  connections:
    bus: {{connector: rabbitmq, prefetch: 100}}
  trigger:
    stream: {{source: {{connection: bus, queue: {queue}}}, id: events, max_batch_rows: 10, max_batch_seconds: 0.5}}
  tasks:
    - id: land
      type: load
      depends_on: [events]
      target: {{connector: parquet, path: {tmp_path / "out"}, mode: append}}
""")
    pipeline = load_pipeline(tmp_path / "p.yaml")
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")

    def runner(source: Any) -> StreamRunner:
        return StreamRunner(pipeline, store, LocalExecutor(store, data_root=str(tmp_path / "data")), source)

    def landed() -> list[int]:
        return sorted(ds.dataset(tmp_path / "out").to_table().column("id").to_pylist())

    first = runner(_NeverAcks(open_source(pipeline)))
    first.batches = _DiesBeforeSecondSettle(store)
    with pytest.raises(_Died):
        first.run(max_batches=2)
    first.source.close()  # the broker takes back every message it handed out
    assert landed() == list(range(20))

    again = runner(open_source(pipeline))

    def report(figures: Any) -> None:
        channel = _channel()
        ready = channel.queue_declare(queue, passive=True).method.message_count
        channel.connection.close()
        if (ready == 0 and figures.batches >= 1) or time.monotonic() > deadline:
            again.stop.set()

    deadline = time.monotonic() + 30
    again.report = report
    again.run()
    again.source.close()
    assert landed() == list(range(30))  # each once
    channel = _channel()
    left = channel.queue_declare(queue, passive=True).method.message_count
    channel.connection.close()
    assert left == 0  # the repeats acknowledged with the batch they came back in
    store.close()
