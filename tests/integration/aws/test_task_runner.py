"""The task runner Lambda on emulated AWS: staging through S3, idempotency in real Redis, error names."""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from udop.aws.definitions import canonical_definition, put_version
from udop.spec.models import Pipeline

pytestmark = [pytest.mark.aws, pytest.mark.redis]


def _pipeline(log_dir: str, flag: str) -> Pipeline:
    return Pipeline.model_validate(
        {
            "apiVersion": "udop/v1",
            "kind": "Pipeline",
            "metadata": {"name": "runner-test"},
            "spec": {
                "tasks": [
                    {
                        "id": "numbers",
                        "type": "python",
                        "callable": "udop_aws_test_tasks:numbers",
                        "args": {"n": 10, "log_dir": str(log_dir)},
                    },
                    {
                        "id": "big",
                        "type": "python",
                        "callable": "udop_aws_test_tasks:fails_while",
                        "depends_on": ["numbers"],
                        "args": {"flag": str(flag), "log_dir": str(log_dir)},
                    },
                    {
                        "id": "flaky",
                        "type": "python",
                        "callable": "udop_aws_test_tasks:flaky",
                        "args": {"fail_times": 1, "log_dir": str(log_dir)},
                    },
                    {
                        "id": "slow",
                        "type": "python",
                        "callable": "udop_aws_test_tasks:sleepy",
                        "timeout": "1s",
                        "args": {"log_dir": str(log_dir)},
                    },
                    {
                        "id": "untimed",
                        "type": "python",
                        "callable": "udop_aws_test_tasks:sleepy",
                        "args": {"log_dir": str(log_dir)},
                    },
                ]
            },
        }
    )


def _invoke(aws: Any, payload: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    resp = aws.client("lambda").invoke(FunctionName=aws.task_runner_arn, Payload=json.dumps(payload))
    return json.loads(resp["Payload"].read()), resp.get("FunctionError")


def _payload(run_id: str, task_id: str, attempt: int = 0) -> dict[str, Any]:
    return {
        "run": {"run_id": run_id, "params": {}, "logical_date": "2026-01-02"},
        "pipeline": "runner-test",
        "version": 1,
        "task_id": task_id,
        "execution": f"arn:aws:states:us-east-1:123456789012:execution:udop-runner-test:{run_id}",
        "attempt": attempt,
    }


@pytest.fixture
def deployed(moto_aws: Any) -> tuple[Any, str, str]:
    log_dir = moto_aws.log_root
    flag = moto_aws.flag("fault")
    pipeline = _pipeline(log_dir, flag)
    put_version(
        moto_aws.client("s3"), moto_aws.definitions_bucket, "runner-test", 1, canonical_definition(pipeline)
    )
    return moto_aws, log_dir, flag


def test_output_goes_to_its_deterministic_key_and_downstream_reads_it(deployed: Any) -> None:
    aws, _log_dir, _ = deployed
    run_id = uuid.uuid4().hex
    first, err = _invoke(aws, _payload(run_id, "numbers"))
    assert err is None, first
    expected_uri = f"s3://{aws.data_bucket}/runs/runner-test/{run_id}/numbers/"
    assert first["output"]["uri"] == expected_uri
    assert first["output"]["rows"] == 10

    second, err = _invoke(aws, _payload(run_id, "big"))
    assert err is None, second
    s3 = aws.client("s3")
    keys = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket=aws.data_bucket, Prefix=f"runs/runner-test/{run_id}/big/")[
            "Contents"
        ]
    ]
    assert keys, "the downstream output was not uploaded"
    table = pq.read_table(io.BytesIO(s3.get_object(Bucket=aws.data_bucket, Key=keys[0])["Body"].read()))
    assert sorted(table.column("id").to_pylist()) == [3, 4, 5, 6, 7, 8, 9, 10]  # numbers 1..10 with id > 2
    assert second["output"]["rows"] == 8


def test_second_invocation_for_a_succeeded_task_returns_its_manifest_without_running_it(
    deployed: Any,
) -> None:
    aws, _, _ = deployed
    run_id = uuid.uuid4().hex
    first, err = _invoke(aws, _payload(run_id, "numbers"))
    assert err is None, first
    again, err = _invoke(aws, _payload(run_id, "numbers", attempt=1))
    assert err is None, again
    assert aws.calls("numbers", run_id) == 1
    assert again["output"] == first["output"]
    assert (first["reused"], again["reused"]) == (False, True)
    # another run does the work again
    other = uuid.uuid4().hex
    _invoke(aws, _payload(other, "numbers"))
    assert aws.calls("numbers", other) == 1


def test_errors_reach_the_state_machine_by_their_udop_names(deployed: Any) -> None:
    aws, _log_dir, flag = deployed
    run_id = uuid.uuid4().hex
    body, err = _invoke(aws, _payload(run_id, "flaky"))
    assert err
    assert body["errorType"] == "udop.RetryableError"
    assert "transient failure number 1" in body["errorMessage"]
    body, err = _invoke(aws, _payload(run_id, "flaky", attempt=1))
    assert err is None
    assert body["reused"] is False

    _invoke(aws, _payload(run_id, "numbers"))
    aws.set_flag(flag, True)
    body, err = _invoke(aws, _payload(run_id, "big"))
    assert err
    assert body["errorType"] == "udop.FatalError"
    assert "fault flag" in body["errorMessage"]
    # a failed attempt leaves nothing behind that a later attempt would reuse
    aws.set_flag(flag, False)
    body, err = _invoke(aws, _payload(run_id, "big", attempt=1))
    assert err is None
    assert body["reused"] is False


def test_a_payload_for_an_undeployed_version_is_a_fatal_error_naming_it(deployed: Any) -> None:
    aws, _, _ = deployed
    payload = {**_payload(uuid.uuid4().hex, "numbers"), "version": 7}
    body, err = _invoke(aws, payload)
    assert err
    assert body["errorType"] == "udop.FatalError"
    assert "version 7 is not deployed" in body["errorMessage"]


def test_an_unreachable_state_store_is_a_retryable_error(deployed: Any) -> None:
    aws, _, _ = deployed
    lam = aws.client("lambda")
    config = lam.get_function_configuration(FunctionName=aws.task_runner_arn)
    variables = {**config["Environment"]["Variables"], "UDOP_STATE_URL": "redis://127.0.0.1:1/0"}
    lam.update_function_configuration(FunctionName=aws.task_runner_arn, Environment={"Variables": variables})
    if aws.lambdas is not None:
        aws.lambdas.modules.clear()  # a new configuration means a new cold start
    body, err = _invoke(aws, _payload(uuid.uuid4().hex, "numbers"))
    assert err
    assert body["errorType"] == "udop.RetryableError"
    assert "state store" in body["errorMessage"]


def test_a_task_over_its_timeout_is_stopped_and_reported_retryable(deployed: Any) -> None:
    aws, _, _ = deployed
    body, err = _invoke(aws, _payload(uuid.uuid4().hex, "slow"))
    # uncancelled, the task would succeed after 30 s with {"stopped": false}: an error means it was stopped
    assert err
    # its own name, the one the LocalExecutor records (not folded into udop.RetryableError)
    assert body["errorType"] == "udop.TaskTimeout"
    assert "stopped after 1s" in body["errorMessage"]


def test_a_task_without_a_timeout_is_stopped_ten_seconds_before_the_lambda_deadline(deployed: Any) -> None:
    aws, _, _ = deployed
    run_id = uuid.uuid4().hex
    # a warm function first (in moto the handler module stays loaded), so the time the invocation
    # spends before the task begins is small next to the margin
    assert not _invoke(aws, _payload(run_id, "numbers"))[1]
    aws.client("lambda").update_function_configuration(FunctionName=aws.task_runner_arn, Timeout=12)
    body, err = _invoke(aws, _payload(run_id, "untimed"))
    # uncancelled it would run 30 s, past the function's 12 s; the runner stops it at 12 - 10 = 2 s,
    # leaving the Lambda time to report the error instead of being killed by the service
    assert err
    assert body["errorType"] == "udop.TaskTimeout"
    stopped = re.search(r"stopped after ([0-9.]+)s", body["errorMessage"])
    assert stopped is not None, body
    assert 0.5 < float(stopped.group(1)) <= 2.0  # less what the invocation spent before the task began
    assert aws.calls("untimed", run_id) == 1


def test_a_task_another_invocation_is_running_is_refused_with_a_retryable_error(deployed: Any) -> None:
    from udop.state import open_state_store

    aws, _, _ = deployed
    run_id = uuid.uuid4().hex
    state = open_state_store(os.environ.get("UDOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    # the runner's lock on this task of this run, held as a concurrent invocation would hold it
    other = state.lock(f"task:runner-test:{run_id}:numbers", ttl=60)
    try:
        assert other.acquire()
        try:
            body, err = _invoke(aws, _payload(run_id, "numbers"))
            assert err
            assert body["errorType"] == "udop.RetryableError"
            assert "is being run by another invocation right now" in body["errorMessage"]
            assert aws.calls("numbers", run_id) == 0  # not run twice at once
        finally:
            other.release()
        # once the other invocation is done, the retry runs it
        body, err = _invoke(aws, _payload(run_id, "numbers"))
        assert not err, body
        assert aws.calls("numbers", run_id) == 1
    finally:
        state.close()  # its connection is not left to the garbage collector


def test_a_map_item_is_refused_rather_than_run_once_for_all_items(deployed: Any) -> None:
    aws, _, _ = deployed
    run_id = uuid.uuid4().hex
    payload = {**_payload(run_id, "numbers"), "item": {"key": "runs/x/part-0.parquet", "index": 0}}
    body, err = _invoke(aws, payload)
    assert err
    assert body["errorType"] == "udop.FatalError"
    assert "foreach" in body["errorMessage"]
    assert aws.calls("numbers", run_id) == 0


@pytest.mark.postgres
def test_a_load_repeated_after_its_commit_finds_its_ledger_entry_and_loads_nothing_twice(
    moto_aws: Any,
) -> None:
    """Redrive of a load that committed into PostgreSQL but died before the runner recorded its
    result (the task-result key is gone): the same ledger as locally keeps the rows single."""
    import redis as redis_lib
    import sqlalchemy as sa

    from udop.aws.runner import state_key

    table = f"udop_runner_{uuid.uuid4().hex[:10]}"
    name = f"runner-eo-{uuid.uuid4().hex[:6]}"
    target = {"connector": "postgres", "host": "127.0.0.1", "user": "postgres", "database": "test",
              "table": table, "mode": "append"}
    pipeline = Pipeline.model_validate({
        "apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": name},
        "spec": {"tasks": [
            {"id": "numbers", "type": "python", "callable": "udop_aws_test_tasks:numbers",
             "args": {"n": 10, "log_dir": str(moto_aws.log_root)}},
            {"id": "load", "type": "load", "depends_on": ["numbers"], "target": target},
        ]},
    })
    put_version(moto_aws.client("s3"), moto_aws.definitions_bucket, name, 1, canonical_definition(pipeline))
    run_id = uuid.uuid4().hex
    engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", poolclass=sa.pool.NullPool)
    client = redis_lib.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        for task in ("numbers", "load", "load"):
            body, err = _invoke(moto_aws, {**_payload(run_id, task), "pipeline": name})
            assert err is None, body
            # the runner "died" after the target's commit: its result record is gone
            client.delete(state_key(name, run_id, "load"))
        with engine.connect() as conn:
            got = conn.execute(sa.text(f"SELECT count(*), count(DISTINCT id) FROM {table}")).one()
        assert tuple(got) == (10, 10)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()
        client.close()


@pytest.mark.postgres
def test_a_redriven_map_item_of_a_load_finds_its_ledger_entry_and_loads_nothing_twice(
    moto_aws: Any,
) -> None:
    """A ``foreach`` load (a Map state: one runner invocation per partition) into PostgreSQL: each
    item commits its rows with its own ledger entry (run, task, item). An item whose invocation died
    after the commit (its result record gone) and is redriven finds its entry and writes nothing;
    an item that never ran loads its rows once."""
    import redis as redis_lib
    import sqlalchemy as sa
    import udop_foreach_tasks as data

    from udop.aws.runner import state_key

    table = f"udop_runner_{uuid.uuid4().hex[:10]}"
    name = f"runner-map-{uuid.uuid4().hex[:6]}"
    target = {"connector": "postgres", "host": "127.0.0.1", "user": "postgres", "database": "test",
              "table": table, "mode": "append"}
    pipeline = Pipeline.model_validate({
        "apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": name},
        "spec": {"tasks": [
            {"id": "parts", "type": "python", "callable": "udop_foreach_tasks:parts"},
            {"id": "load", "type": "load", "depends_on": ["parts"], "target": target,
             "foreach": {"input": "parts", "over": "partitions"}},
        ]},
    })
    put_version(moto_aws.client("s3"), moto_aws.definitions_bucket, name, 1, canonical_definition(pipeline))
    run_id = uuid.uuid4().hex
    prefix = f"runs/{name}/{run_id}/parts/"
    items = [{"key": f"{prefix}k={key}/", "index": i} for i, key in enumerate(data.KEYS)]
    engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", poolclass=sa.pool.NullPool)
    client = redis_lib.Redis.from_url("redis://127.0.0.1:6379/0")

    def rows() -> tuple[int, int]:
        with engine.connect() as conn:
            got = conn.execute(sa.text(f"SELECT count(*), count(DISTINCT v) FROM {table}")).one()
        return int(got[0]), int(got[1])

    per_item = data.FILES_PER_KEY * data.ROWS_PER_FILE
    try:
        body, err = _invoke(moto_aws, {**_payload(run_id, "parts"), "pipeline": name})
        assert err is None, body
        # the Map ran items 0 and 1; both committed, then their invocations "died" before the runner
        # recorded their results
        for item in items[:2]:
            body, err = _invoke(moto_aws, {**_payload(run_id, "load"), "pipeline": name, "item": item})
            assert err is None, body
            client.delete(state_key(name, run_id, f"load/item-{item['index']:05d}"))
        assert rows() == (2 * per_item, 2 * per_item)
        # the redrive runs every item not recorded as done: 0 and 1 again, and 2 for the first time
        for item in items:
            body, err = _invoke(moto_aws, {**_payload(run_id, "load", attempt=1), "pipeline": name,
                                           "item": item})
            assert err is None, body
        assert rows() == (3 * per_item, 3 * per_item)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()
        client.close()


@pytest.mark.slow
def test_an_extract_from_mongodb_and_an_upsert_into_it_run_through_the_task_runner(
    moto_aws: Any, tmp_path: Path
) -> None:
    """The mongodb connector on the task runner (pymongo rides in the connectors layer): a filtered
    extract lands in S3, a load upserts it by key into another collection, and a redriven load leaves
    one document per key."""
    import pymongo
    import redis as redis_lib
    from secantus import SecantusDBServer

    from udop.aws.runner import state_key

    state = redis_lib.Redis.from_url("redis://127.0.0.1:6379/0")
    server = SecantusDBServer(storage_path=str(tmp_path / "mongo"))
    server.start()
    database = f"h17aws_{uuid.uuid4().hex[:8]}"
    name = f"runner-mongo-{uuid.uuid4().hex[:6]}"
    mongo = {"connector": "mongodb", "url": server.uri, "database": database}
    pipeline = Pipeline.model_validate({
        "apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": name},
        "spec": {"tasks": [
            {"id": "orders", "type": "extract",
             "source": {**mongo, "collection": "orders", "filter": {"status": "paid"},
                        "columns": {"sku": "string", "qty": "int64"}}},
            {"id": "copy", "type": "load", "depends_on": ["orders"],
             "target": {**mongo, "collection": "paid", "mode": "upsert", "keys": ["sku"]}},
        ]},
    })  # fmt: skip
    put_version(moto_aws.client("s3"), moto_aws.definitions_bucket, name, 1, canonical_definition(pipeline))
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(server.uri)
    try:
        client[database].orders.insert_many(
            [{"sku": f"s{i}", "qty": i, "status": "paid" if i % 2 else "open"} for i in range(6)]
        )
        run_id = uuid.uuid4().hex
        extracted, err = _invoke(moto_aws, {**_payload(run_id, "orders"), "pipeline": name})
        assert err is None, extracted
        assert extracted["output"]["uri"] == f"s3://{moto_aws.data_bucket}/runs/{name}/{run_id}/orders/"
        assert extracted["output"]["rows"] == 3
        for attempt in (0, 1):
            loaded, err = _invoke(moto_aws, {**_payload(run_id, "copy", attempt=attempt), "pipeline": name})
            assert err is None, loaded
            state.delete(state_key(name, run_id, "copy"))  # the runner "died" before recording the load
        got = sorted((d["sku"], d["qty"]) for d in client[database].paid.find({}, {"_id": 0}))
        assert got == [("s1", 1), ("s3", 3), ("s5", 5)]
    finally:
        client.drop_database(database)
        client.close()
        state.close()
        server.stop()
