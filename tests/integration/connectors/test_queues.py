"""Redis (keys, hashes, streams) and RabbitMQ (bounded consume acked after the write, transactional
publish) connectors against the real servers on this machine."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pyarrow as pa
import pytest
import redis as redis_lib

from udop.connectors import extract_to_parquet, get_connector
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
@pytest.fixture
def queue() -> Iterator[tuple[Any, str]]:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    channel = conn.channel()
    name = f"udop-test-{uuid.uuid4().hex[:10]}"
    channel.queue_declare(name, durable=True)
    yield channel, name
    channel.queue_delete(name)
    conn.close()


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

    # a consumer that dies before its write committed acks nothing: the messages come back
    c = get_connector({"connector": "rabbitmq", "queue": name, "max_messages": 10})
    assert sum(b.num_rows for b in c.read()) == 10
    c.close()
    assert depth(channel, name) == 15


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
