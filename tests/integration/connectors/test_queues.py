"""Redis (keys, hashes, streams) and RabbitMQ (bounded consume acked after the write, transactional
publish) connectors against the real servers on this machine."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis as redis_lib

from udop.connectors import LoadEntry, extract_to_parquet, get_connector
from udop.errors import ConnectionFailed, FatalError
from udop.spec.models import Pipeline
from udop.state import MemoryStateStore
from udop.tasks.contract import TaskContext


@pytest.fixture
def rds() -> Iterator[tuple[redis_lib.Redis, str]]:
    client = redis_lib.Redis(decode_responses=True)
    prefix = f"udop-test-{uuid.uuid4().hex[:10]}:"
    yield client, prefix
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


def rows(spec: dict[str, Any]) -> list[dict[str, Any]]:
    with get_connector(spec) as c:
        return [r for b in c.read() for r in b.to_pylist()]


@pytest.mark.redis
def test_redis_keys_and_hashes_round_trip(rds: tuple[redis_lib.Redis, str]) -> None:
    client, prefix = rds
    batch = pa.RecordBatch.from_pydict({"key": ["a", "b", "c"], "value": ["1", "2", "3"]})
    with get_connector({"connector": "redis", "kind": "keys", "key_prefix": prefix + "k:"}) as c:
        assert c.write([batch]) == 3
    assert client.get(prefix + "k:b") == "2"
    got = rows({"connector": "redis", "kind": "keys", "pattern": prefix + "k:*", "batch_size": 2})
    assert sorted((r["key"], r["value"]) for r in got) == [
        (prefix + f"k:{x}", v) for x, v in zip("abc", "123", strict=True)
    ]
    users = pa.RecordBatch.from_pydict({"id": ["u1", "u2"], "name": ["Ann", "Bo"], "age": [31, None]})
    spec = {"connector": "redis", "kind": "hash", "key_column": "id", "key_prefix": prefix + "user:"}
    with get_connector(spec) as c:
        c.write([users])
    assert client.hgetall(prefix + "user:u1") == {"name": "Ann", "age": "31"}
    assert client.hgetall(prefix + "user:u2") == {"name": "Bo"}
    got = rows(
        {
            "connector": "redis",
            "kind": "hash",
            "pattern": prefix + "user:*",
            "key_column": "id",
            "columns": {"id": "string", "name": "string", "age": "int"},
        }
    )
    assert sorted(got, key=lambda r: r["id"]) == [
        {"id": prefix + "user:u1", "name": "Ann", "age": 31},
        {"id": prefix + "user:u2", "name": "Bo", "age": None},
    ]


@pytest.mark.redis
def test_redis_overwrite_replaces_matching_keys_in_one_transaction(rds: tuple[redis_lib.Redis, str]) -> None:
    client, prefix = rds
    client.set(prefix + "k:old", "x")
    client.set(prefix + "other", "keep")
    spec = {"connector": "redis", "kind": "keys", "key_prefix": prefix + "k:", "pattern": prefix + "k:*"}
    with get_connector(spec) as c:
        c.write([pa.RecordBatch.from_pydict({"key": ["new"], "value": ["y"]})], "overwrite")
    assert sorted(client.scan_iter(match=prefix + "*")) == [prefix + "k:new", prefix + "other"]
    # a batch without the value column fails before EXEC: nothing is written or deleted
    with get_connector(spec) as c, pytest.raises(FatalError, match="no value column 'value'"):
        c.write([pa.RecordBatch.from_pydict({"key": ["z"], "nope": ["1"]})], "overwrite")
    assert client.get(prefix + "k:new") == "y"
    assert client.get(prefix + "k:z") is None


@pytest.mark.redis
def test_redis_stream_incremental_extract(rds: tuple[redis_lib.Redis, str], tmp_path: Path) -> None:
    client, prefix = rds
    stream = prefix + "events"
    for i in range(5):
        client.xadd(stream, {"n": str(i)})
    pipeline = Pipeline.model_validate(
        {
            "apiVersion": "udop/v1",
            "kind": "Pipeline",
            "metadata": {"name": "stream-p"},
            "spec": {
                "tasks": [
                    {
                        "id": "ext",
                        "type": "extract",
                        "source": {
                            "connector": "redis",
                            "kind": "stream",
                            "stream": stream,
                            "batch_size": 2,
                            "incremental": {"column": "position"},
                        },
                    },
                    {
                        "id": "load",
                        "type": "load",
                        "depends_on": ["ext"],
                        "target": {"connector": "local", "path": str(tmp_path / "out")},
                    },
                ]
            },
        }
    )
    state = MemoryStateStore()

    def extract(run: str) -> Any:
        ctx = TaskContext(
            pipeline=pipeline,
            task_id="ext",
            run_id=run,
            attempt=1,
            logical_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            params={},
            data_root=str(tmp_path / "data"),
            services={"state": state},
        )
        return extract_to_parquet(ctx, pipeline.task("ext").source, ctx.output_uri)

    from udop.connectors import load_from_parquet
    from udop.tasks.contract import TaskResult

    def load(run: str, manifest: Any) -> None:
        ctx = TaskContext(
            pipeline=pipeline,
            task_id="load",
            run_id=run,
            attempt=1,
            logical_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            params={},
            data_root=str(tmp_path / "data"),
            services={"state": state},
        )
        load_from_parquet(ctx, pipeline.task("load").target, manifest, {"ext": TaskResult(output=manifest)})

    first = extract("r1")
    assert first.rows == 5
    load("r1", first)
    for i in range(5, 8):
        client.xadd(stream, {"n": str(i)})
    second = extract("r2")
    assert second.rows == 3
    import pyarrow.parquet as pq

    assert pq.read_table(second.uri).column("n").to_pylist() == ["5", "6", "7"]


@pytest.mark.redis
def test_redis_stream_load_commits_its_ledger_entry_with_the_entries(rds: tuple[redis_lib.Redis, str]) -> None:
    client, prefix = rds
    stream = prefix + "out"
    entry = LoadEntry(pipeline=prefix, run_id="r1", task_id="load")
    batch = pa.RecordBatch.from_pydict({"n": [1, 2, 3]})
    spec = {"connector": "redis", "kind": "stream", "stream": stream}
    with get_connector(spec) as c:
        assert c.write_once([batch], "append", [], entry) == (3, False)
        assert c.write_once([batch], "append", [], entry) == (3, True)  # a retry writes nothing
    entries = client.xrange(stream)
    assert [fields["udop_id"] for _id, fields in entries] == [entry.message_id(i) for i in range(3)]
    client.delete(f"udop:load-ledger:{entry.key}")


@pytest.mark.redis
def test_redis_unreachable_and_wrong_password(rds: tuple[redis_lib.Redis, str]) -> None:
    with pytest.raises(ConnectionFailed, match="cannot reach Redis"):
        rows({"connector": "redis", "port": 1, "pattern": "x*"})
    with pytest.raises(FatalError) as info:
        rows(
            {
                "connector": "redis",
                "url": "redis://udop_nobody:not-the-pw-42@127.0.0.1:6379/0",
                "pattern": "x*",
            }
        )
    assert "not-the-pw-42" not in str(info.value)


# -- RabbitMQ ---------------------------------------------------------------------------------------
def depth(channel: Any, name: str) -> int:
    return int(channel.queue_declare(name, passive=True).method.message_count)


@pytest.mark.rabbitmq
def test_rabbitmq_publish_then_consume_a_bounded_batch_acked_after_the_write(
    queue: tuple[Any, str], tmp_path: Path
) -> None:
    channel, name = queue
    batch = pa.RecordBatch.from_pydict({"id": list(range(25)), "kind": ["order"] * 25})
    with get_connector({"connector": "rabbitmq", "queue": name}) as c:
        assert c.write([batch]) == 25
    assert depth(channel, name) == 25

    pipeline = Pipeline.model_validate(
        {
            "apiVersion": "udop/v1",
            "kind": "Pipeline",
            "metadata": {"name": "mq"},
            "spec": {
                "tasks": [
                    {
                        "id": "ext",
                        "type": "extract",
                        "source": {"connector": "rabbitmq", "queue": name, "max_messages": 10},
                    }
                ]
            },
        }
    )
    ctx = TaskContext(
        pipeline=pipeline,
        task_id="ext",
        run_id="r1",
        attempt=1,
        logical_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        params={},
        data_root=str(tmp_path),
        services={"state": MemoryStateStore()},
    )
    manifest = extract_to_parquet(ctx, pipeline.task("ext").source, ctx.output_uri)
    assert manifest.rows == 10
    assert depth(channel, name) == 15  # the 10 were acked after the Parquet was in place

    # a consumer killed (SIGKILL) after reading, before its write committed, acked nothing: the
    # broker hands the messages back
    consumer = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, name],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert consumer.stdout is not None
    assert consumer.stdout.readline().strip() == "read 10"
    consumer.send_signal(signal.SIGKILL)
    consumer.wait(30)
    consumer.stdout.close()
    deadline = time.monotonic() + 10
    while depth(channel, name) != 15 and time.monotonic() < deadline:
        time.sleep(0.1)  # the broker requeues once it sees the connection gone
    assert depth(channel, name) == 15


CONSUMER = """
import sys, time
from udop.connectors import get_connector
c = get_connector({"connector": "rabbitmq", "queue": sys.argv[1], "max_messages": 10})
print("read", sum(b.num_rows for b in c.read()), flush=True)
time.sleep(60)
"""


@pytest.mark.rabbitmq
def test_rabbitmq_publish_fails_mid_load_and_delivers_nothing(queue: tuple[Any, str]) -> None:
    channel, name = queue

    def batches() -> Iterator[pa.RecordBatch]:
        yield pa.RecordBatch.from_pydict({"id": list(range(100))})
        raise FatalError("the input broke after 100 rows")

    with (
        get_connector({"connector": "rabbitmq", "queue": name}) as c,
        pytest.raises(FatalError, match="after 100 rows"),
    ):
        c.write(batches())
    assert depth(channel, name) == 0  # the 100 published before the failure were rolled back


@pytest.mark.rabbitmq
def test_rabbitmq_load_into_a_missing_queue_is_an_error(queue: tuple[Any, str]) -> None:
    _channel, name = queue
    batch = pa.RecordBatch.from_pydict({"id": [1, 2, 3]})
    with (
        get_connector({"connector": "rabbitmq", "queue": f"{name}-missing"}) as c,
        pytest.raises(FatalError, match="no queue took the 3 message"),
    ):
        c.write([batch])


@pytest.mark.rabbitmq
def test_rabbitmq_load_messages_carry_ids_and_a_repeat_finds_the_ledger(queue: tuple[Any, str]) -> None:
    channel, name = queue
    state = MemoryStateStore()
    entry = LoadEntry(pipeline="p", run_id="r1", task_id="load")
    batch = pa.RecordBatch.from_pydict({"id": [1, 2, 3]})
    with get_connector({"connector": "rabbitmq", "queue": name}, state=state) as c:
        assert c.write_once([batch], "append", [], entry) == (3, False)
        assert c.write_once([batch], "append", [], entry) == (3, True)  # a retry: nothing sent
    ids = []
    while (got := channel.basic_get(name, auto_ack=True))[0] is not None:
        ids.append(got[1].message_id)
    assert ids == [entry.message_id(i) for i in range(3)]


@pytest.mark.rabbitmq
def test_rabbitmq_failed_extract_leaves_messages_queued(queue: tuple[Any, str], tmp_path: Path) -> None:
    channel, name = queue
    for body in (b'{"id": 1}', b"not json"):
        channel.basic_publish("", name, body)
    with (
        get_connector({"connector": "rabbitmq", "queue": name}) as c,
        pytest.raises(FatalError, match="is not JSON"),
    ):
        list(c.read())
    assert depth(channel, name) == 2
    got = rows({"connector": "rabbitmq", "queue": name, "format": "text"})
    assert [r["body"] for r in got] == ['{"id": 1}', "not json"]
    assert json.loads(got[0]["body"]) == {"id": 1}


@pytest.mark.rabbitmq
def test_rabbitmq_bad_credentials_and_missing_queue() -> None:
    with pytest.raises(FatalError, match="login refused") as info:
        rows({"connector": "rabbitmq", "url": "amqp://guest:bad-pw-77@127.0.0.1:5672/%2F", "queue": "q"})
    assert "bad-pw-77" not in str(info.value)
    with (
        get_connector({"connector": "rabbitmq", "queue": f"udop-missing-{uuid.uuid4().hex}"}) as c,
        pytest.raises(FatalError, match="NOT_FOUND"),
    ):
        c.check()
