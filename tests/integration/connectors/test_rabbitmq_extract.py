"""The rabbitmq connector's batch extract (``read()`` of one bounded batch, acked by ``acknowledge()``)
against the RabbitMQ on this machine: it consumes in prefetch windows, takes exactly the bound, leaves
the rest ready in the queue (not held by its channel), and acks nothing before ``acknowledge``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pika
import pytest

from udop.connectors import get_connector
from udop.errors import FatalError

pytestmark = pytest.mark.rabbitmq


def publish(channel: Any, name: str, ids: range) -> None:
    for i in ids:
        channel.basic_publish("", name, json.dumps({"id": i}).encode())
    deadline = time.monotonic() + 10
    while depth(channel, name)[0] < len(ids) and time.monotonic() < deadline:
        time.sleep(0.02)


def depth(channel: Any, name: str) -> tuple[int, int]:
    """(ready messages, consumers) as the broker reports them to a passive declare."""
    ok = channel.queue_declare(name, passive=True).method
    return int(ok.message_count), int(ok.consumer_count)


def wait_depth(channel: Any, name: str, want: int) -> int:
    deadline = time.monotonic() + 10
    while (got := depth(channel, name)[0]) != want and time.monotonic() < deadline:
        time.sleep(0.05)  # the broker requeues once it sees the channel or connection gone
    return got


def ids(connector: Any) -> list[int]:
    return [i for batch in connector.read() for i in batch.column("id").to_pylist()]


def test_extract_takes_exactly_the_bound_and_leaves_the_rest_queued_for_the_next_run(
    queue: tuple[Any, str],
) -> None:
    channel, name = queue
    publish(channel, name, range(250))
    # prefetch 40: the 100 come in three windows (40, 40, 20); batch_size 30 yields mid-window
    spec = {"connector": "rabbitmq", "queue": name, "max_messages": 100, "prefetch": 40, "batch_size": 30}
    with get_connector(spec) as c:
        assert ids(c) == list(range(100))
        # before the ack, the 150 beyond the bound are ready in the queue, not delivered to this
        # channel, and no consumer of the extract is left on the queue
        assert depth(channel, name) == (150, 0)
        c.acknowledge()
        assert depth(channel, name) == (150, 0)
    assert wait_depth(channel, name, 150) == 150  # closing after the ack returns nothing more
    with get_connector(spec) as c:  # the next run starts where this one stopped
        assert ids(c) == list(range(100, 200))
        c.acknowledge()
    with get_connector(spec) as c:
        assert ids(c) == list(range(200, 250))
        c.acknowledge()
    assert depth(channel, name) == (0, 0)


def test_extract_closed_without_an_ack_returns_every_message(queue: tuple[Any, str]) -> None:
    channel, name = queue
    publish(channel, name, range(120))
    with get_connector({"connector": "rabbitmq", "queue": name, "max_messages": 100, "prefetch": 50}) as c:
        assert len(ids(c)) == 100
        assert depth(channel, name) == (20, 0)
    # the connection closed without acknowledge(): the broker requeues the 100
    assert wait_depth(channel, name, 120) == 120


def test_extract_killed_before_the_ack_returns_every_message(queue: tuple[Any, str]) -> None:
    channel, name = queue
    publish(channel, name, range(300))
    consumer = subprocess.Popen([sys.executable, "-c", KILLED, name], stdout=subprocess.PIPE, text=True)
    assert consumer.stdout is not None
    assert consumer.stdout.readline().strip() == "read 250"
    assert depth(channel, name)[0] == 50
    consumer.send_signal(signal.SIGKILL)
    consumer.wait(30)
    consumer.stdout.close()
    assert wait_depth(channel, name, 300) == 300


KILLED = """
import sys, time
from udop.connectors import get_connector
c = get_connector({"connector": "rabbitmq", "queue": sys.argv[1], "max_messages": 250, "prefetch": 100})
print("read", sum(b.num_rows for b in c.read()), flush=True)
time.sleep(60)
"""


def test_extract_of_an_empty_queue_ends_at_once(queue: tuple[Any, str]) -> None:
    channel, name = queue
    with get_connector({"connector": "rabbitmq", "queue": name}) as c:
        t0 = time.monotonic()
        assert ids(c) == []
        assert time.monotonic() - t0 < 1.0
        c.acknowledge()  # nothing read: nothing to ack
    assert depth(channel, name) == (0, 0)


def test_extract_with_wait_takes_messages_published_while_it_waits(queue: tuple[Any, str]) -> None:
    channel, name = queue
    publisher = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))

    def later() -> None:
        time.sleep(0.3)
        publisher.channel().basic_publish("", name, b'{"id": 7}')

    thread = threading.Thread(target=later)
    with get_connector({"connector": "rabbitmq", "queue": name, "wait": 1.5}) as c:
        t0 = time.monotonic()
        thread.start()
        assert ids(c) == [7]
        assert 1.4 < time.monotonic() - t0 < 3.0  # waited `wait`, not for ever
        c.acknowledge()
    thread.join()
    publisher.close()
    assert depth(channel, name) == (0, 0)


def test_extract_stops_its_consumer_when_the_reader_stops_early(queue: tuple[Any, str]) -> None:
    channel, name = queue
    publish(channel, name, range(100))
    with get_connector({"connector": "rabbitmq", "queue": name, "batch_size": 10, "prefetch": 50}) as c:
        batches = c.read()
        assert next(batches).num_rows == 10
        assert depth(channel, name) == (50, 1)  # one window of 50 handed to the consumer
        batches.close()  # e.g. the task was cancelled
        assert depth(channel, name)[1] == 0
    assert wait_depth(channel, name, 100) == 100


def test_a_stream_queue_is_not_read_as_a_batch() -> None:
    with (
        get_connector({"connector": "rabbitmq", "queue": "q", "queue_type": "stream"}) as c,
        pytest.raises(FatalError, match="udop stream"),
    ):
        list(c.read())
