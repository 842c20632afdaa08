"""SQS and Kinesis as stream sources on moto (or LocalStack when ``AWS_ENDPOINT_URL`` is set): batches
land once, SQS messages are deleted only after their batch committed (and one that comes back after a
crash in between is deleted, not loaded again), Kinesis resumes after the stored sequence numbers."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import pyarrow.dataset as ds
import pytest

from udop.executor.local import LocalExecutor
from udop.spec.loader import load_pipeline
from udop.store import open_store
from udop.stream.runner import StreamRunner, open_source
from udop.stream.store import StreamStore

pytestmark = [pytest.mark.slow, pytest.mark.aws]

LOCALSTACK = bool(os.environ.get("AWS_ENDPOINT_URL"))
REGION = "us-east-1"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.session.Session]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    if LOCALSTACK:
        yield boto3.session.Session(region_name=REGION)
        return
    from moto import mock_aws

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield boto3.session.Session(region_name=REGION)


def _pipeline(tmp: Path, name: str, connection: str, options: str, rows: int = 10) -> Any:
    (tmp / "p.yaml").write_text(f"""
apiVersion: udop/v1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  connections:
    bus: {connection}
  trigger:
    stream: {{source: {{connection: bus, {options}}}, id: events, max_batch_rows: {rows}, max_batch_seconds: 0.5}}
  tasks:
    - id: land
      type: load
      depends_on: [events]
      target: {{connector: parquet, path: {tmp / "out"}, mode: append}}
""")
    return load_pipeline(tmp / "p.yaml")


def _runner(tmp: Path, pipeline: Any, source: Any = None) -> tuple[StreamRunner, Any]:
    store = open_store(f"sqlite:///{tmp / 'meta.db'}")
    executor = LocalExecutor(store, data_root=str(tmp / "data"))
    return StreamRunner(pipeline, store, executor, source or open_source(pipeline)), store


def _landed(tmp: Path) -> list[int]:
    return sorted(ds.dataset(tmp / "out").to_table().column("id").to_pylist())


class _DiesBeforeDelete:
    """The source of a process that dies right after a batch's offsets committed, before the broker is
    told (the moment ``stream-offsets-committed`` kills ``udop stream`` at)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def commit(self, end: Mapping[str, Any], acks: list[Any]) -> None:
        return None



@pytest.mark.xfail(strict=False, reason="known bug, issue #17 open: in one full run under load a "
                   "message that returned after the crash was loaded twice (row 20 twice); passes alone")
def test_sqs_messages_are_deleted_after_commit_and_a_returning_one_is_not_loaded_twice(
    aws: boto3.session.Session, tmp_path: Path
) -> None:
    sqs = aws.client("sqs")
    name = f"h17-{uuid.uuid4().hex[:8]}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    try:
        for i in range(25):
            sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"id": i}))
        pipeline = _pipeline(tmp_path, name, f"{{connector: sqs, queue: {name}, visibility_timeout: 1}}", "")
        runner, store = _runner(tmp_path, pipeline, _DiesBeforeDelete(open_source(pipeline)))
        figures = runner.run(max_batches=1)
        first = figures.messages
        assert 0 < first <= 10 and len(_landed(tmp_path)) == first
        store.close()

        time.sleep(1.5)  # the undeleted messages become visible again
        runner, store = _runner(tmp_path, pipeline)
        deadline = time.monotonic() + 30
        while len(_landed(tmp_path)) < 25 and time.monotonic() < deadline:
            runner.run(max_batches=runner.figures.batches + 1)
        assert _landed(tmp_path) == list(range(25))  # each once, the returning batch deleted unloaded
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert int(attributes["ApproximateNumberOfMessages"]) == 0
        assert int(attributes["ApproximateNumberOfMessagesNotVisible"]) == 0
        runs = store.list_runs(pipeline=name, limit=50)
        assert {r.trigger for r in runs} == {"stream"} and all(r.state == "succeeded" for r in runs)
        store.close()
    finally:
        sqs.delete_queue(QueueUrl=url)


def test_kinesis_resumes_after_the_stored_sequence_numbers(
    aws: boto3.session.Session, tmp_path: Path
) -> None:
    kinesis = aws.client("kinesis")
    name = f"h17-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=name, ShardCount=2)
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1})
    try:
        for i in range(30):
            kinesis.put_record(StreamName=name, Data=json.dumps({"id": i}).encode(), PartitionKey=str(i))
        pipeline = _pipeline(tmp_path, name, "{connector: kinesis}", f"stream: {name}", rows=100)
        runner, store = _runner(tmp_path, pipeline)
        runner.run(max_batches=1)
        assert _landed(tmp_path) == list(range(30))
        positions = StreamStore(store).positions(name)
        assert len(positions) == 2 and all(v for v in positions.values())  # a sequence number per shard
        runner.source.close()
        store.close()

        for i in range(30, 35):
            kinesis.put_record(StreamName=name, Data=json.dumps({"id": i}).encode(), PartitionKey=str(i))
        runner, store = _runner(tmp_path, pipeline)  # a new process: from the stored positions
        runner.run(max_batches=1)
        assert _landed(tmp_path) == list(range(35))
        store.close()
    finally:
        kinesis.delete_stream(StreamName=name)
