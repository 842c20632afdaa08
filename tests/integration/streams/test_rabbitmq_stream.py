"""``udop stream`` on a RabbitMQ queue into PostgreSQL: messages are acknowledged only after their batch
committed; a process killed after a batch's offsets moved but before its ack, then started again, loads
nothing twice (the broker hands the batch back; its message ids are the committed ones)."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import sqlalchemy as sa
from streams_support import count_rows, definition, udop, wait_for

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
