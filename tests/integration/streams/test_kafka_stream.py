"""``udop stream`` on a real Kafka-protocol broker (Tansu) into a real PostgreSQL: each micro-batch is a
run recorded with trigger ``stream``; a process killed inside a batch (after its load committed, or after
its run succeeded but before its offsets moved) and started again leaves each message in the target
exactly once; SIGTERM finishes the batch in flight and exits 0."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
import sqlalchemy as sa
from streams_support import count_rows, create_topic, definition, produce, udop, unique, wait_for

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
UDOP = str(Path(sys.executable).parent / "udop")

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _kafka_definition(bootstrap: str, topic: str, target: str, *, rows: int = 300, extra: str = "") -> str:
    return definition(
        topic,
        f'{{connector: kafka, bootstrap_servers: "{bootstrap}"}}',
        f"topic: {topic}",
        target,
        rows=rows,
        extra=extra,
    )


def test_killed_inside_batches_then_restarted_loads_every_message_once(
    kafka: str, pg_table: tuple[sa.Engine, str], tmp_path: Path
) -> None:
    engine, table = pg_table
    topic = unique("orders")
    create_topic(kafka, topic)
    total = 1_000
    produce(kafka, topic, [{"id": i, "amount": i % 13} for i in range(total)])
    target = (
        "{connector: postgres, host: 127.0.0.1, port: 5432, user: postgres, database: test, "
        f"table: {table}, mode: append}}"
    )
    (tmp_path / "p.yaml").write_text(_kafka_definition(kafka, topic, target))

    # killed right after its first batch's rows committed in PostgreSQL, before the run or offsets knew
    first = udop(tmp_path, "stream", "p.yaml", fault="load-committed")
    _out, err = first.communicate(timeout=120)
    assert first.returncode == -signal.SIGKILL, err
    after_first = count_rows(engine, table)
    assert 0 < after_first[0] <= 300 and after_first[0] == after_first[1]
    # killed after the (resumed) batch's run succeeded, before its offsets moved
    second = udop(tmp_path, "stream", "p.yaml", fault="stream-run-succeeded")
    _out, err = second.communicate(timeout=120)
    assert second.returncode == -signal.SIGKILL, err
    assert count_rows(engine, table) == after_first  # the resumed run found its load in the ledger

    third = udop(tmp_path, "stream", "p.yaml")
    wait_for(lambda: count_rows(engine, table)[0] >= total, f"{total} rows in {table}")
    time.sleep(1.0)  # a repeat would land about now
    third.send_signal(signal.SIGTERM)
    _out, err = third.communicate(timeout=60)
    assert third.returncode == 0, err
    assert "stopped after" in err and "msgs/s" in err and "lag" in err
    assert count_rows(engine, table) == (total, total)

    from udop.store import open_store
    from udop.stream.store import StreamStore

    store = open_store(f"sqlite:///{tmp_path / '.udop' / 'udop.db'}")
    try:
        positions = StreamStore(store).positions(topic)
        assert sum(int(v) for v in positions.values()) == total  # next offsets of both partitions
        batches = StreamStore(store).batches(topic)
        assert {b.state for b in batches} == {"committed"}
        assert sum(b.messages for b in batches) == total
        runs = store.list_runs(pipeline=topic, limit=100)
        assert {r.trigger for r in runs} == {"stream"}
        assert {r.id for r in runs} == {b.run_id for b in batches}
        assert all(r.state == "succeeded" for r in runs)
    finally:
        store.close()


def test_a_failing_batch_goes_to_the_dead_letter_and_the_stream_moves_on(kafka: str, tmp_path: Path) -> None:
    from udop.executor.local import LocalExecutor
    from udop.spec.loader import load_pipeline
    from udop.store import open_store
    from udop.stream.runner import StreamRunner, open_source
    from udop.stream.store import StreamStore

    topic = unique("poison")
    create_topic(kafka, topic, partitions=1)
    produce(
        kafka,
        topic,
        [],
        raw=[b'{"id": 1, "amount": 3}', b"not json", b'{"id": 3, "amount": 4}'],
        partitions=1,
    )
    dead = "\n".join(
        [
            "      dead_letter:",
            "        after: 2",
            f"        target: {{connector: parquet, path: {tmp_path / 'dead'}}}",
        ]
    )
    target = f"{{connector: parquet, path: {tmp_path / 'out'}, mode: append}}"
    (tmp_path / "p.yaml").write_text(_kafka_definition(kafka, topic, target, rows=3, extra=dead))
    pipeline = load_pipeline(tmp_path / "p.yaml")
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    executor = LocalExecutor(store, data_root=str(tmp_path / "data"), services={"base_dir": str(tmp_path)})
    source = open_source(pipeline)
    try:
        figures = StreamRunner(pipeline, store, executor, source).run(max_batches=1)
        assert figures.dead_lettered == 3 and figures.failed_tries == 2
        dead_rows = ds.dataset(tmp_path / "dead").to_table()
        assert dead_rows.num_rows == 3
        assert "not json" in dead_rows.column("_raw").to_pylist()  # the message as it came
        assert not (tmp_path / "out").exists()  # the validate rule stopped the batch before its load
        (batch,) = StreamStore(store).batches(topic)
        assert batch.state == "dead_letter" and batch.tries == 2 and "not_null" in (batch.error or "")
        assert StreamStore(store).positions(topic) == {"0": 3}  # moved past the poison

        produce(kafka, topic, [{"id": 4, "amount": 1}], partitions=1)
        runner = StreamRunner(pipeline, store, executor, source)
        figures = runner.run(max_batches=1)
        assert figures.messages == 1 and figures.dead_lettered == 0
        assert ds.dataset(tmp_path / "out").to_table().column("id").to_pylist() == [4]
    finally:
        source.close()
        store.close()


def test_sigterm_between_batches_exits_0_with_nothing_pending(kafka: str, tmp_path: Path) -> None:
    from udop.executor.local import LocalExecutor
    from udop.spec.loader import load_pipeline
    from udop.store import open_store
    from udop.stream.runner import StreamRunner, open_source
    from udop.stream.store import StreamStore

    topic = unique("drain")
    create_topic(kafka, topic, partitions=1)
    produce(kafka, topic, [{"id": i, "amount": 1} for i in range(50)], partitions=1)
    (tmp_path / "p.yaml").write_text(
        _kafka_definition(kafka, topic, f"{{connector: parquet, path: {tmp_path / 'o'}}}", rows=10)
    )
    pipeline = load_pipeline(tmp_path / "p.yaml")
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    executor = LocalExecutor(store, data_root=str(tmp_path / "data"))
    source = open_source(pipeline)
    stop = threading.Event()
    seen: list[int] = []

    def report(figures: Any) -> None:
        seen.append(figures.batches)
        if figures.batches == 2:
            stop.set()  # what the signal handler does: the batch in flight ends, no new one starts

    try:
        figures = StreamRunner(pipeline, store, executor, source, stop=stop, report=report).run()
        assert figures.batches == 2 and figures.messages == 20
        assert StreamStore(store).pending(topic) is None
        assert StreamStore(store).positions(topic) == {"0": 20}
        # the third batch, read ahead (its Parquet written) but never run, left no folder behind
        runs = {b.run_id for b in StreamStore(store).batches(topic)}
        assert len(runs) == 2
        assert {p.name for p in (tmp_path / "data" / "runs" / topic).iterdir()} == runs
    finally:
        source.close()
        store.close()


def test_a_load_produces_rows_as_json_messages_with_stable_ids(kafka: str, tmp_path: Path) -> None:
    import json

    from confluent_kafka import Consumer, TopicPartition

    from udop.executor.local import LocalExecutor
    from udop.spec.loader import load_pipeline
    from udop.store import open_store

    topic = unique("sink")
    create_topic(kafka, topic, partitions=1)
    (tmp_path / "orders.csv").write_text("id,amount\n1,3.5\n2,4.0\n3,0.5\n")
    (tmp_path / "p.yaml").write_text(f"""
apiVersion: udop/v1
kind: Pipeline
metadata: {{name: {topic}}}
spec:
  tasks:
    - {{id: orders, type: extract, source: {{connector: csv, path: orders.csv}}}}
    - id: publish
      type: load
      depends_on: [orders]
      target: {{connector: kafka, bootstrap_servers: "{kafka}", topic: {topic}, key_column: id}}
""")
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    try:
        record = LocalExecutor(
            store, data_root=str(tmp_path / "data"), services={"base_dir": str(tmp_path)}
        ).run(load_pipeline(tmp_path / "p.yaml"))
        assert record.state == "succeeded", record.error
    finally:
        store.close()
    consumer = Consumer({"bootstrap.servers": kafka, "group.id": "h17-check", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got: list[Any] = []
    deadline = time.monotonic() + 20
    while len(got) < 3 and time.monotonic() < deadline:
        got += [m for m in consumer.consume(10, 0.5) if m.error() is None]
    consumer.close()
    assert [json.loads(m.value()) for m in got] == [
        {"id": 1, "amount": 3.5},
        {"id": 2, "amount": 4.0},
        {"id": 3, "amount": 0.5},
    ]
    assert [m.key() for m in got] == [b"1", b"2", b"3"]
    ids = [dict(m.headers())["udop-message-id"] for m in got]
    assert len(set(ids)) == 3 and all(i.endswith((b":0", b":1", b":2")) for i in ids)


def test_sigterm_in_the_middle_of_a_batch_finishes_and_commits_it_then_exits_0(
    kafka: str, pg_table: tuple[sa.Engine, str], tmp_path: Path
) -> None:
    engine, table = pg_table
    topic = unique("drain")
    create_topic(kafka, topic)
    produce(kafka, topic, [{"id": i, "amount": 1} for i in range(500)])
    target = (
        "{connector: postgres, host: 127.0.0.1, port: 5432, user: postgres, database: test, "
        f"table: {table}, mode: append}}"
    )
    (tmp_path / "p.yaml").write_text(_kafka_definition(kafka, topic, target, rows=200))
    # SIGTERM arrives while the first batch's load is committing: that batch ends and commits, no other starts
    proc = udop(tmp_path, "stream", "p.yaml", fault="load-committed:SIGTERM")
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "(SIGTERM)" in err
    rows = count_rows(engine, table)
    assert 0 < rows[0] <= 200 and rows[0] == rows[1]

    from udop.store import open_store
    from udop.stream.store import StreamStore

    store = open_store(f"sqlite:///{tmp_path / '.udop' / 'udop.db'}")
    try:
        (batch,) = StreamStore(store).batches(topic)
        assert batch.state == "committed" and batch.messages == rows[0]
        assert StreamStore(store).pending(topic) is None
    finally:
        store.close()


def test_a_second_udop_stream_of_the_same_pipeline_is_refused(kafka: str, tmp_path: Path) -> None:
    topic = unique("lease")
    create_topic(kafka, topic, partitions=1)
    produce(kafka, topic, [{"id": i, "amount": 1} for i in range(20)], partitions=1)
    (tmp_path / "p.yaml").write_text(
        _kafka_definition(
            kafka, topic, f"{{connector: parquet, path: {tmp_path / 'out'}, mode: append}}", rows=10
        )
    )
    first = udop(tmp_path, "stream", "p.yaml")
    try:
        wait_for(lambda: (tmp_path / "out").exists() and any((tmp_path / "out").iterdir()), "the first batch")
        second = udop(tmp_path, "stream", "p.yaml")
        _out, err = second.communicate(timeout=60)
        assert second.returncode == 2, err
        assert f"pipeline '{topic}' is already streamed by process {first.pid}@" in err
        assert len(err.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGTERM)
        _out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
