"""Stream pipelines on (emulated) AWS: ``udop deploy`` creates the event source mapping on the stream
runner, and the stream runner Lambda (the real handler, invoked through moto with SQS and Kinesis event
shapes) runs each delivery as a recorded micro-batch, reports failed batches item by item, and a
delivery repeated after its batch committed writes nothing again."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

pytestmark = [pytest.mark.aws, pytest.mark.slow]


def _udop(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from udop.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


@pytest.fixture
def deploy_env(moto_aws: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    from udop.settings import get_settings

    monkeypatch.setenv("UDOP_DEFINITIONS_BUCKET", moto_aws.definitions_bucket)
    monkeypatch.setenv("UDOP_STREAM_RUNNER_ARN", moto_aws.stream_runner_arn)
    monkeypatch.setenv("UDOP_DATABASE_URL", moto_aws.database_url)
    get_settings.cache_clear()
    yield moto_aws
    get_settings.cache_clear()


def _definition(tmp: Path, name: str, source: str, out: Path) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(f"""
apiVersion: udop/v1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  trigger:
    stream:
      source: {source}
      id: events
      max_batch_rows: 100
      max_batch_seconds: 2
  tasks:
    - id: checked
      type: validate
      depends_on: [events]
      rules: [{{not_null: [id]}}]
    - id: land
      type: load
      depends_on: [checked]
      target: {{connector: parquet, path: {out}, mode: append}}
""")
    return path


def _invoke(env: Any, event: dict[str, Any]) -> dict[str, Any]:
    lam = env.client("lambda")
    got = lam.invoke(FunctionName=env.stream_runner_arn, Payload=json.dumps(event).encode())
    body = json.loads(got["Payload"].read())
    assert "FunctionError" not in got, body
    return dict(body)


def _sqs_event(queue_arn: str, bodies: list[str]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": f"handle-{i}",
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "1764460800000",
                    "SenderId": "AIDAEXAMPLE",
                    "ApproximateFirstReceiveTimestamp": "1764460800001",
                },
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1",
            }
            for i, body in enumerate(bodies)
        ]
    }


def test_deploy_maps_the_queue_and_each_delivery_is_a_batch_run(
    deploy_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = deploy_env
    sqs, lam = env.client("sqs"), env.client("lambda")
    queue = f"{env.prefix}-orders"
    url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    out = tmp_path / "out"
    name = f"{env.prefix}-orders"
    path = _definition(tmp_path, name, f"{{connector: sqs, queue: {queue}}}", out)

    code, stdout, err = _udop(capsys, "deploy", str(path))
    assert code == 0, err
    assert "event source mapping" in stdout and arn in stdout
    (mapping,) = lam.list_event_source_mappings(FunctionName=env.stream_runner_arn)["EventSourceMappings"]
    assert mapping["EventSourceArn"] == arn
    assert mapping["BatchSize"] == 100 and mapping["MaximumBatchingWindowInSeconds"] == 2
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    code, _stdout, err = _udop(capsys, "deploy", str(path))  # again: the mapping is updated, not doubled
    assert code == 0, err
    assert len(lam.list_event_source_mappings(FunctionName=env.stream_runner_arn)["EventSourceMappings"]) == 1

    event = _sqs_event(arn, [json.dumps({"id": i, "amount": i * 2}) for i in range(5)])
    assert _invoke(env, event) == {"batchItemFailures": []}
    assert sorted(ds.dataset(out).to_table().column("id").to_pylist()) == list(range(5))
    assert _invoke(env, event) == {"batchItemFailures": []}  # delivered again: already committed
    assert ds.dataset(out).to_table().num_rows == 5

    poison = _sqs_event(arn, [json.dumps({"id": 9}), "not json"])
    failed = _invoke(env, poison)
    assert failed == {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in poison["Records"]]}
    assert ds.dataset(out).to_table().num_rows == 5  # the validate rule stopped the batch before its load

    from udop.store import open_store
    from udop.stream.store import StreamStore

    store = open_store(env.database_url)
    try:
        runs = store.list_runs(pipeline=name, limit=10)
        assert sorted(r.state for r in runs) == ["failed", "succeeded"]
        assert {r.trigger for r in runs} == {"stream"}
        states = sorted(b.state for b in StreamStore(store).batches(name))
        assert states == ["committed", "pending"]
    finally:
        store.close()


def test_a_kinesis_delivery_runs_and_a_failed_one_is_retried_from_its_first_record(
    deploy_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = deploy_env
    kinesis, lam = env.client("kinesis"), env.client("lambda")
    stream = f"{env.prefix}-clicks"
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    arn = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamARN"]
    out = tmp_path / "clicks"
    path = _definition(tmp_path, f"{env.prefix}-clicks", f"{{connector: kinesis, stream: {stream}}}", out)
    code, _stdout, err = _udop(capsys, "deploy", str(path))
    assert code == 0, err
    (mapping,) = [
        m
        for m in lam.list_event_source_mappings(FunctionName=env.stream_runner_arn)["EventSourceMappings"]
        if m["EventSourceArn"] == arn
    ]
    assert mapping["StartingPosition"] == "TRIM_HORIZON"

    def record(seq: int, data: bytes) -> dict[str, Any]:
        return {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": "k",
                "sequenceNumber": f"4959{seq:040d}",
                "data": base64.b64encode(data).decode(),
                "approximateArrivalTimestamp": 1764460800.5,
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": f"shardId-000000000000:4959{seq:040d}",
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": env.role_arn,
            "awsRegion": "us-east-1",
            "eventSourceARN": arn,
        }

    good = {"Records": [record(i, json.dumps({"id": i}).encode()) for i in range(3)]}
    assert _invoke(env, good) == {"batchItemFailures": []}
    assert sorted(ds.dataset(out).to_table().column("id").to_pylist()) == [0, 1, 2]
    bad = {"Records": [record(10, b"{}"), record(11, json.dumps({"id": 11}).encode())]}
    assert _invoke(env, bad) == {"batchItemFailures": [{"itemIdentifier": f"4959{10:040d}"}]}


def test_an_uploaded_stream_pipeline_is_refused_with_a_pointer_to_udop_deploy(
    moto_aws: Any, tmp_path: Path
) -> None:
    s3 = moto_aws.client("s3")
    name = f"{moto_aws.prefix}-uploaded"
    text = _definition(
        tmp_path, name, f"{{connector: sqs, queue: {moto_aws.prefix}-q}}", Path("out")
    ).read_text()
    s3.put_object(Bucket=moto_aws.definitions_bucket, Key=f"pipelines/{name}.yaml", Body=text.encode())
    status = json.loads(
        s3.get_object(Bucket=moto_aws.definitions_bucket, Key=f"pipelines/{name}.status.json")["Body"].read()
    )
    assert status["ok"] is False
    assert "deploy it with udop deploy FILE" in status["errors"][0]["text"]
    assert not moto_aws.client("lambda").list_event_source_mappings(FunctionName=moto_aws.stream_runner_arn)[
        "EventSourceMappings"
    ]


def test_a_python_task_runs_on_the_stream_runner_from_its_code_dir_and_only_allowed_modules(
    deploy_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    env = deploy_env
    sqs, lam = env.client("sqs"), env.client("lambda")
    module = f"udop_stream_tasks_{uuid.uuid4().hex[:8]}"
    body = (
        "import pyarrow.compute as pc\n\n"
        "def doubled(context, inputs):\n"
        "    table = inputs['events'].to_arrow()\n"
        "    return table.append_column('twice', pc.multiply(table['amount'], 2))\n"
    )
    # the project: the definitions and their module; the stream runner's package: the module alone under
    # pipeline_code/ (what the CDK app stages), which is its UDOP_CODE_DIR
    project, package = tmp_path / "project", tmp_path / "package" / "pipeline_code"
    project.mkdir()
    package.mkdir(parents=True)
    (project / f"{module}.py").write_text(body)
    (package / f"{module}.py").write_text(body)
    config = lam.get_function_configuration(FunctionName=env.stream_runner_arn)
    lam.update_function_configuration(
        FunctionName=env.stream_runner_arn,
        Environment={"Variables": {**config["Environment"]["Variables"], "UDOP_CODE_DIR": str(package)}},
    )

    def definition(name: str, queue: str, callable_: str, out: Path) -> Path:
        path = project / f"{name}.yaml"
        path.write_text(f"""
apiVersion: udop/v1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  trigger:
    stream: {{source: {{connector: sqs, queue: {queue}}}, id: events, max_batch_rows: 100}}
  tasks:
    - {{id: enrich, type: python, callable: "{callable_}", depends_on: [events]}}
    - id: land
      type: load
      depends_on: [enrich]
      target: {{connector: parquet, path: {out}, mode: append}}
""")
        return path

    arns = {}
    for key in ("shipped", "elsewhere"):
        queue = f"{env.prefix}-{key}"
        url = sqs.create_queue(QueueName=queue)["QueueUrl"]
        arns[key] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
    out = tmp_path / "out"
    path_before, modules_before = list(sys.path), set(sys.modules)
    shipped = definition(f"{env.prefix}-shipped", f"{env.prefix}-shipped", f"{module}:doubled", out)
    # a module this process can import but the runner's package does not ship
    elsewhere = definition(
        f"{env.prefix}-elsewhere", f"{env.prefix}-elsewhere", "udop_aws_test_tasks:numbers", tmp_path / "no"
    )
    for path in (shipped, elsewhere):
        code, _stdout, err = _udop(capsys, "deploy", str(path))  # imports the callables from project/
        assert code == 0, err
    # forget the project's module: the runner must import it from its own UDOP_CODE_DIR
    sys.path[:] = path_before
    for name in set(sys.modules) - modules_before:
        if name.startswith(module):
            del sys.modules[name]

    event = _sqs_event(arns["shipped"], [json.dumps({"id": i, "amount": i + 1}) for i in range(3)])
    assert _invoke(env, event) == {"batchItemFailures": []}
    landed = ds.dataset(out).to_table().sort_by("id")
    assert landed.column("twice").to_pylist() == [2, 4, 6]

    # server mode: a python task may name only the modules of UDOP_CODE_DIR
    got = lam.invoke(
        FunctionName=env.stream_runner_arn,
        Payload=json.dumps(_sqs_event(arns["elsewhere"], [json.dumps({"id": 1, "amount": 1})])).encode(),
    )
    refused = json.loads(got["Payload"].read())
    assert got.get("FunctionError"), refused
    assert "refused by the stream runner's sandbox" in refused["errorMessage"], refused
    assert "udop_aws_test_tasks" in refused["errorMessage"], refused
    assert not (tmp_path / "no").exists()


def _sqs_records(queue_arn: str, messages: list[tuple[str, str]]) -> dict[str, Any]:
    """An SQS event of ``(message id, body)`` pairs: the same id is the same message delivered again."""
    event = _sqs_event(queue_arn, [body for _id, body in messages])
    for record, (message_id, _body) in zip(event["Records"], messages, strict=True):
        record["messageId"] = message_id
    return event


def test_sqs_messages_delivered_again_in_other_batches_load_once(
    deploy_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = deploy_env
    sqs = env.client("sqs")
    queue = f"{env.prefix}-again"
    url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    out = tmp_path / "out"
    name = f"{env.prefix}-again"
    code, _stdout, err = _udop(
        capsys, "deploy", str(_definition(tmp_path, name, f"{{connector: sqs, queue: {queue}}}", out))
    )
    assert code == 0, err
    messages = [(str(uuid.uuid4()), json.dumps({"id": i})) for i in range(8)]

    def ids() -> list[int]:
        return sorted(ds.dataset(out).to_table().column("id").to_pylist())

    assert _invoke(env, _sqs_records(arn, messages[:5])) == {"batchItemFailures": []}
    assert ids() == [0, 1, 2, 3, 4]
    # 3 and 4 again (SQS's at-least-once; a delete that did not happen), grouped with new messages
    assert _invoke(env, _sqs_records(arn, [messages[4], messages[5], messages[3], messages[6]])) == {
        "batchItemFailures": []
    }
    assert ids() == [0, 1, 2, 3, 4, 5, 6]
    # nothing but repeats: no run, and no failures (the service deletes them)
    from udop.store import open_store
    from udop.stream.store import StreamStore

    store = open_store(env.database_url)
    try:
        runs = len(store.list_runs(pipeline=name, limit=10))
        assert _invoke(env, _sqs_records(arn, [messages[6], messages[0]])) == {"batchItemFailures": []}
        assert len(store.list_runs(pipeline=name, limit=10)) == runs
        # another poller's delivery holds message 7 (claimed, its run not over): a delivery bringing 7
        # with a repeat gives 7 back to the queue and loads nothing
        from udop.stream.source import StreamBatch

        held = StreamStore(store).claim(
            name,
            StreamBatch(table=pa.table({"x": [7]}), end={}, ids=[messages[7][0]]),
            stale_after=960,
        )
        assert held.batch is not None and not held.busy
        again = _invoke(env, _sqs_records(arn, [messages[2], messages[7]]))
        assert again == {"batchItemFailures": [{"itemIdentifier": messages[7][0]}]}
        assert ids() == [0, 1, 2, 3, 4, 5, 6]
        StreamStore(store).release(name, held.run_id)  # that run failed: 7 is free again
        assert _invoke(env, _sqs_records(arn, [messages[7], messages[1]])) == {"batchItemFailures": []}
        assert ids() == list(range(8))
        states = sorted(b.state for b in StreamStore(store).batches(name))
        assert states == ["committed"] * 3
    finally:
        store.close()


def test_a_failed_sqs_batch_regrouped_loads_its_good_messages_once(
    deploy_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = deploy_env
    sqs = env.client("sqs")
    queue = f"{env.prefix}-regroup"
    url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    out = tmp_path / "out"
    name = f"{env.prefix}-regroup"
    code, _stdout, err = _udop(
        capsys, "deploy", str(_definition(tmp_path, name, f"{{connector: sqs, queue: {queue}}}", out))
    )
    assert code == 0, err
    good = [(str(uuid.uuid4()), json.dumps({"id": i})) for i in range(3)]
    poison = (str(uuid.uuid4()), json.dumps({"other": 1}))
    first = _sqs_records(arn, [*good, poison])
    assert _invoke(env, first) == {"batchItemFailures": [{"itemIdentifier": i} for i, _ in [*good, poison]]}
    assert not out.exists() or ds.dataset(out).to_table().num_rows == 0
    # the queue hands them out again in other batches: the good ones load once, the poison one fails
    assert _invoke(env, _sqs_records(arn, good[:2])) == {"batchItemFailures": []}
    assert _invoke(env, _sqs_records(arn, [good[1], good[2]])) == {"batchItemFailures": []}
    assert sorted(ds.dataset(out).to_table().column("id").to_pylist()) == [0, 1, 2]


def test_a_kinesis_retry_of_a_bisected_batch_skips_the_records_that_committed(
    deploy_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = deploy_env
    kinesis = env.client("kinesis")
    stream = f"{env.prefix}-bisect"
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    arn = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamARN"]
    out = tmp_path / "out"
    code, _stdout, err = _udop(
        capsys,
        "deploy",
        str(_definition(tmp_path, f"{env.prefix}-bisect", f"{{connector: kinesis, stream: {stream}}}", out)),
    )
    assert code == 0, err

    def record(seq: int) -> dict[str, Any]:
        return {
            "kinesis": {
                "partitionKey": "k",
                "sequenceNumber": f"4959{seq:040d}",
                "data": base64.b64encode(json.dumps({"id": seq}).encode()).decode(),
                "approximateArrivalTimestamp": 1764460800.5,
            },
            "eventSource": "aws:kinesis",
            "eventID": f"shardId-000000000000:4959{seq:040d}",
            "eventSourceARN": arn,
        }

    assert _invoke(env, {"Records": [record(i) for i in range(4)]}) == {"batchItemFailures": []}
    # the shard retried from record 2 with a different batch size (bisected after an error elsewhere)
    assert _invoke(env, {"Records": [record(i) for i in range(2, 6)]}) == {"batchItemFailures": []}
    assert sorted(ds.dataset(out).to_table().column("id").to_pylist()) == list(range(6))
    assert _invoke(env, {"Records": [record(i) for i in range(3, 5)]}) == {"batchItemFailures": []}
    assert ds.dataset(out).to_table().num_rows == 6


def _two_loads(tmp: Path, name: str, queue: str, first: Path, second: Path) -> Path:
    """Two loads of every record (through a transform) into SQLite tables; the second runs after the
    first committed."""
    path = tmp / f"{name}.yaml"
    path.write_text(f"""
apiVersion: udop/v1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  trigger:
    stream: {{source: {{connector: sqs, queue: {queue}}}, id: events, max_batch_rows: 100}}
  tasks:
    - id: clean
      type: transform
      depends_on: [events]
      fuse: false
      steps: [{{filter: "id >= 0"}}]
    - id: first
      type: load
      depends_on: [clean]
      target: {{connector: sqlite, database: '{first}', table: landed, mode: append}}
    - id: second
      type: load
      depends_on: [clean, first]
      target: {{connector: sqlite, database: '{second}', table: landed, mode: append}}
""")
    return path


def _landed(db: Path) -> list[int]:
    import sqlite3

    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return sorted(r[0] for r in conn.execute("SELECT id FROM landed"))


def _deploy_two_loads(env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str) -> tuple[
    str, str, Path, Path
]:
    sqs = env.client("sqs")
    queue = f"{env.prefix}-{key}"
    url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    # the second load's database is in a folder that does not exist yet: its first try fails
    first, second = tmp_path / "first.db", tmp_path / "later" / "second.db"
    code, _stdout, err = _udop(capsys, "deploy", str(_two_loads(tmp_path, queue, queue, first, second)))
    assert code == 0, err
    return queue, arn, first, second


def _batches(env: Any, name: str) -> list[Any]:
    """The pipeline's stream batches, as the metadata store holds them."""
    from udop.store import open_store
    from udop.stream.store import StreamStore

    store = open_store(env.database_url)
    try:
        return StreamStore(store).batches(name)
    finally:
        store.close()


def _failures(ids: list[str]) -> dict[str, Any]:
    return {"batchItemFailures": [{"itemIdentifier": i} for i in ids]}


def test_a_batch_failed_after_its_first_load_committed_is_resumed_not_loaded_again_regrouped(
    deploy_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = deploy_env
    name, arn, first, second = _deploy_two_loads(env, tmp_path, capsys, "regrouped")
    a, b, c, d = [(str(uuid.uuid4()), json.dumps({"id": i})) for i in range(4)]
    # D1 = {a, b, c}: the first load commits, the second fails; the whole delivery is reported failed
    assert _invoke(env, _sqs_records(arn, [a, b, c])) == _failures([a[0], b[0], c[0]])
    assert _landed(first) == [0, 1, 2] and _landed(second) == []
    second.parent.mkdir()  # the second load's database is reachable now
    # the queue hands them back grouped differently, with a new message: D2 = {a, b, d}
    assert _invoke(env, _sqs_records(arn, [a, b, d])) == {"batchItemFailures": []}
    assert _landed(first) == [0, 1, 2, 3]
    assert _landed(second) == [0, 1, 2, 3]
    assert _invoke(env, _sqs_records(arn, [c])) == {"batchItemFailures": []}  # its batch committed
    assert _landed(first) == _landed(second) == [0, 1, 2, 3]

    batches = _batches(env, name)
    assert sorted(x.state for x in batches) == ["committed", "committed"]
    (kept,) = [x for x in batches if x.messages == 3]
    assert kept.input_uri is not None and kept.input_uri.startswith(f"s3://{env.data_bucket}/runs/")


def test_a_batch_whose_invocation_died_after_its_first_load_is_resumed_once_its_try_is_stale(
    deploy_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from datetime import timedelta

    import udop.stream.store as stream_store
    from udop.stream.store import StreamStore

    env = deploy_env
    name, arn, first, second = _deploy_two_loads(env, tmp_path, capsys, "died")
    a, b, c, d = [(str(uuid.uuid4()), json.dumps({"id": i})) for i in range(4)]
    # D1's invocation dies after the first load committed (a timeout, out of memory): its claims made,
    # nothing released or settled
    with monkeypatch.context() as dying:
        dying.setattr(StreamStore, "release", lambda self, pipeline, run_id: None)
        _invoke(env, _sqs_records(arn, [a, b, c]))
    assert _landed(first) == [0, 1, 2] and _landed(second) == []
    second.parent.mkdir()
    # its try may still run: a and b are given back, d runs
    assert _invoke(env, _sqs_records(arn, [a, b, d])) == _failures([a[0], b[0]])
    assert _landed(first) == [0, 1, 2, 3] and _landed(second) == [3]
    # later than the stale time (960 s), in another container: nothing of the dead one's /tmp is left
    shutil.rmtree(tmp_path / "udop-streams")
    real_now = stream_store._now
    monkeypatch.setattr(stream_store, "_now", lambda: real_now() + timedelta(seconds=1000))
    assert _invoke(env, _sqs_records(arn, [b, c])) == {"batchItemFailures": []}
    assert _landed(first) == [0, 1, 2, 3]
    assert _landed(second) == [0, 1, 2, 3]
    assert sorted(x.state for x in _batches(env, name)) == ["committed", "committed"]


def test_a_delivery_overlapping_a_batch_another_delivery_resumes_gives_those_records_back(
    deploy_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from udop.store import open_store
    from udop.stream.store import StreamStore

    env = deploy_env
    name, arn, first, second = _deploy_two_loads(env, tmp_path, capsys, "rival")
    a, b, c, d = [(str(uuid.uuid4()), json.dumps({"id": i})) for i in range(4)]
    assert _invoke(env, _sqs_records(arn, [a, b, c])) == _failures([a[0], b[0], c[0]])
    second.parent.mkdir()
    store = open_store(env.database_url)
    try:
        batches = StreamStore(store)
        (held,) = batches.batches(name)
        assert batches.take(name, held.run_id, stale_after=960)  # another delivery resumes it now
        assert _invoke(env, _sqs_records(arn, [a, b, d])) == _failures([a[0], b[0]])
        assert _landed(first) == [0, 1, 2, 3] and _landed(second) == [3]
        batches.release(name, held.run_id)  # the rival's try failed (or never ran a task)
        assert _invoke(env, _sqs_records(arn, [c, a])) == {"batchItemFailures": []}
        assert _landed(first) == _landed(second) == [0, 1, 2, 3]
    finally:
        store.close()
