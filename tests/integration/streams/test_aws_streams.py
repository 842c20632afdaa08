"""SQS and Kinesis as stream sources on moto (or LocalStack when ``AWS_ENDPOINT_URL`` is set): batches
land once, SQS messages are deleted only after their batch committed (and one that comes back after a
crash in between is deleted, not loaded again), Kinesis resumes after the stored sequence numbers."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
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


class _Wrapped:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _OneBatchThenDies(_Wrapped):
    """The source of a process that reads one batch (no read-ahead) and dies right after it committed,
    before the messages are deleted (the moment ``stream-offsets-committed`` kills ``udop stream`` at);
    ``acks`` keeps the batch's receipt handles."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.acks: list[Any] = []
        self.read = False

    def poll(self, max_rows: int, max_seconds: float, stop: threading.Event) -> Any:
        if self.read:
            stop.wait(0.2)
            return None
        self.read = True
        return self.inner.poll(max_rows, max_seconds, stop)

    def commit(self, end: Mapping[str, Any], acks: list[Any]) -> None:
        self.acks = list(acks)


class _ThenAfterFirstCommit(_Wrapped):
    """A source whose first commit is followed by ``then`` (a message of an earlier batch comes back)."""

    def __init__(self, inner: Any, then: Callable[[], Any]) -> None:
        super().__init__(inner)
        self.then: Callable[[], Any] | None = then

    def commit(self, end: Mapping[str, Any], acks: list[Any]) -> None:
        self.inner.commit(end, acks)
        then, self.then = self.then, None
        if then is not None:
            then()


class _VisibilityRunsOut(_Wrapped):
    """The first batch's visibility timeout runs out while it runs: the reader's next poll (read ahead)
    receives its messages again, before the first batch commits (its commit waits for that poll)."""

    def __init__(self, inner: Any, sqs: Any, url: str) -> None:
        super().__init__(inner)
        self.sqs, self.url = sqs, url
        self.first: Any = None
        self.read_again = threading.Event()

    def poll(self, max_rows: int, max_seconds: float, stop: threading.Event) -> Any:
        if self.first is not None and not self.read_again.is_set():
            _show(self.sqs, self.url, self.first.acks)
            again = self.inner.poll(max_rows, max_seconds, stop)
            self.read_again.set()
            return again
        batch = self.inner.poll(max_rows, max_seconds, stop)
        if self.first is None:
            self.first = batch
        return batch

    def commit(self, end: Mapping[str, Any], acks: list[Any]) -> None:
        assert self.read_again.wait(30)
        self.inner.commit(end, acks)


def _show(sqs: Any, url: str, handles: list[Any]) -> None:
    """Make the messages received with ``handles`` visible again at once."""
    for i in range(0, len(handles), 10):
        entries = [
            {"Id": str(n), "ReceiptHandle": h, "VisibilityTimeout": 0}
            for n, h in enumerate(handles[i : i + 10])
        ]
        assert not sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries).get("Failed")


def _queue(sqs: Any, name: str, count: int) -> str:
    url: str = sqs.create_queue(QueueName=name)["QueueUrl"]
    for i in range(0, count, 10):
        entries = [{"Id": str(n), "MessageBody": json.dumps({"id": n})} for n in range(i, min(i + 10, count))]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)
    return url


def _drained(sqs: Any, url: str) -> bool:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"])
        + int(attributes["ApproximateNumberOfMessagesNotVisible"])
        == 0
    )


def _run_until_drained(runner: StreamRunner, sqs: Any, url: str) -> None:
    deadline = time.monotonic() + 30

    def report(_figures: Any) -> None:
        if _drained(sqs, url) or time.monotonic() > deadline:
            runner.stop.set()

    runner.report = report
    runner.run()


def test_sqs_messages_are_deleted_after_commit_and_a_returning_one_is_not_loaded_twice(
    aws: boto3.session.Session, tmp_path: Path
) -> None:
    """A batch committed just before a crash comes back only after the next process committed another
    batch: its messages are deleted, not loaded again (udop remembers every committed batch's ids)."""
    sqs = aws.client("sqs")
    name = f"h17-{uuid.uuid4().hex[:8]}"
    url = _queue(sqs, name, 25)
    try:
        pipeline = _pipeline(tmp_path, name, f"{{connector: sqs, queue: {name}}}", "")
        dies = _OneBatchThenDies(open_source(pipeline))
        runner, store = _runner(tmp_path, pipeline, dies)
        assert runner.run(max_batches=1).messages == 10
        assert _landed(tmp_path) == list(range(10))
        store.close()

        # the next process: the crashed batch's messages are still hidden, and come back once it committed
        back = _ThenAfterFirstCommit(open_source(pipeline), lambda: _show(sqs, url, dies.acks))
        runner, store = _runner(tmp_path, pipeline, back)
        _run_until_drained(runner, sqs, url)
        assert _landed(tmp_path) == list(range(25))  # each once, the returning batch deleted unloaded
        assert _drained(sqs, url)
        runs = store.list_runs(pipeline=name, limit=50)
        assert {r.trigger for r in runs} == {"stream"} and all(r.state == "succeeded" for r in runs)
        store.close()
    finally:
        sqs.delete_queue(QueueUrl=url)


def test_an_sqs_message_received_again_while_its_batch_runs_is_not_loaded_twice(
    aws: boto3.session.Session, tmp_path: Path
) -> None:
    """A visibility timeout shorter than a batch: the read-ahead receives the running batch's messages
    again; once that batch committed they are deleted with the batch they came back in, not loaded."""
    sqs = aws.client("sqs")
    name = f"h17-{uuid.uuid4().hex[:8]}"
    url = _queue(sqs, name, 25)
    try:
        pipeline = _pipeline(tmp_path, name, f"{{connector: sqs, queue: {name}}}", "")
        runner, store = _runner(tmp_path, pipeline, _VisibilityRunsOut(open_source(pipeline), sqs, url))
        _run_until_drained(runner, sqs, url)
        assert _landed(tmp_path) == list(range(25))
        assert _drained(sqs, url)
        store.close()
    finally:
        sqs.delete_queue(QueueUrl=url)


class _DiesBeforeSettle(StreamStore):
    """The process dies when its batch's run succeeded, before the batch settles (``stream-run-succeeded``)."""

    def settle(self, pipeline: str, run_id: str, state: str, *, error: str | None = None) -> None:
        raise _Died


class _Died(Exception):
    pass


def test_an_sqs_batch_whose_run_succeeded_before_a_crash_is_settled_and_deleted_at_the_next_start(
    aws: boto3.session.Session, tmp_path: Path
) -> None:
    sqs = aws.client("sqs")
    name = f"h17-{uuid.uuid4().hex[:8]}"
    url = _queue(sqs, name, 15)
    try:
        pipeline = _pipeline(tmp_path, name, f"{{connector: sqs, queue: {name}}}", "")
        runner, store = _runner(tmp_path, pipeline, _OneBatchThenDies(open_source(pipeline)))
        runner.batches = _DiesBeforeSettle(store)
        with pytest.raises(_Died):
            runner.run()
        assert _landed(tmp_path) == list(range(10))
        store.close()

        runner, store = _runner(tmp_path, pipeline)  # settles the batch, deletes its messages first
        _run_until_drained(runner, sqs, url)
        assert _landed(tmp_path) == list(range(15))
        assert _drained(sqs, url)
        assert StreamStore(store).pending(name) is None
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
