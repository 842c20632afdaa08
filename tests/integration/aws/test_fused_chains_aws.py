"""Fused chains on Step Functions: a transform whose only reader is a file load runs with it in one
Task state, one task runner invocation and one DuckDB query, from an S3 source read in place into the
target. Each task keeps its own record, as under the LocalExecutor; nothing but the extract's snapshot
and the transform's view lands under the run's prefix; a retried chain loads once."""

from __future__ import annotations

import io
import json
import os
import random
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aws_support import in_process_only

from udop.aws.runs import deploy_file
from udop.cli.aws import run_on_stepfunctions
from udop.errors import RetryableError
from udop.states import RunState

pytestmark = [pytest.mark.aws, pytest.mark.redis, pytest.mark.slow, in_process_only]  # loads write local files

EU = pa.table({"id": [1, 2, 3], "amount": [10.0, 2.5, 4.0]})
US = pa.table({"id": [4, 5], "amount": [7.0, 1.0]})


def _put(s3: Any, bucket: str, key: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())


def _lake(aws: Any) -> str:
    s3 = aws.client("s3")
    bucket = f"{aws.prefix}-lake"
    s3.create_bucket(Bucket=bucket)
    _put(s3, bucket, "orders/region=eu/part-0.parquet", EU)
    _put(s3, bucket, "orders/region=us/part-0.parquet", US)
    return bucket


def _pipeline(tmp_path: Path, bucket: str, *, name: str = "fused", target: str = "totals.parquet",
              mode: str = "overwrite", fuse: bool = True, retry: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: {name}}}
        spec:
          params: {{out: {{type: str}}}}
          {retry}
          tasks:
            - id: orders
              type: extract
              source: {{connector: s3, path: "s3://{bucket}/orders/"}}
            - id: totals
              type: transform
              depends_on: [orders]
              fuse: {str(fuse).lower()}
              steps:
                - filter: "amount > 1.5"
                - aggregate: {{by: [region], metrics: {{total: "sum(amount)", n: "count(*)"}}}}
                - sort: [region]
            - id: publish
              type: load
              depends_on: [totals]
              target: {{connector: parquet, path: "${{params.out}}/{target}", mode: {mode}}}
        """))
    return path


def _deploy(aws: Any, store: Any, path: Path) -> dict[str, Any]:
    s3, sfn = aws.client("s3"), aws.client("stepfunctions")
    result = deploy_file(str(path), definitions_bucket=aws.definitions_bucket, task_runner_arn=aws.task_runner_arn,
                         role_arn=aws.role_arn, store=store, s3=s3, sfn=sfn)
    assert result.ok, result.errors
    arn = sfn.list_state_machines()["stateMachines"]
    machine = next(m for m in arn if m["name"] == f"udop-{path.stem}")
    return dict(json.loads(sfn.describe_state_machine(stateMachineArn=machine["stateMachineArn"])["definition"]))


def _run(aws: Any, store: Any, path: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("UDOP_DATA_BUCKET", aws.data_bucket)
    code = run_on_stepfunctions(str(path), {"out": str(out)}, store=store, sfn=aws.client("stepfunctions"),
                                poll=0.05)
    run = store.get_run(store.list_runs(pipeline=path.stem, limit=1)[0].id)
    assert code == (0 if run.state == RunState.SUCCEEDED else 1)
    return run


def _runner_calls(aws: Any) -> list[Any]:
    return [event for name, event, _ in aws.lambdas.invocations if name == aws.functions["task_runner"]]


def _keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_a_fused_chain_runs_in_one_invocation_with_the_local_executors_records(
    moto_aws: Any, store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conformance.executors import view
    from udop.executor.local import LocalExecutor
    from udop.spec.loader import load_pipeline
    from udop.store import open_store

    bucket = _lake(moto_aws)
    path = _pipeline(tmp_path, bucket)
    definition = _deploy(moto_aws, store, path)
    # one Task state for the transform and its load
    assert "publish" not in definition["States"]
    assert definition["States"]["totals"]["Parameters"]["Payload"]["fused"] == "publish"

    run = _run(moto_aws, store, path, tmp_path / "aws-out", monkeypatch)
    assert run.state == RunState.SUCCEEDED, run.error
    calls = _runner_calls(moto_aws)
    assert [(c["task_id"], c.get("fused")) for c in calls] == [("orders", None), ("totals", "publish")]

    # the run's prefix holds the extract's snapshot and the transform's view: no copy of the source,
    # no intermediate Parquet
    s3 = moto_aws.client("s3")
    assert _keys(s3, moto_aws.data_bucket, "runs/") == [f"runs/fused/{run.id}/orders/_snapshot.json",
                                                        f"runs/fused/{run.id}/totals/_view.json"]
    # nowhere in the data bucket is there any Parquet (the source's or an intermediate table)
    assert not [k for k in _keys(s3, moto_aws.data_bucket, "") if k.endswith(".parquet")]
    results = [k for k in _keys(s3, moto_aws.data_bucket, f"results/fused/{run.id}/") if "/_logs/" not in k]
    assert results == [f"results/fused/{run.id}/{t}.json" for t in ("orders", "publish", "totals")]

    local_store = open_store(f"sqlite:///{tmp_path / 'local.db'}")
    try:
        local = LocalExecutor(local_store, workers=2, data_root=str(tmp_path / "local-data"),
                              rng=random.Random(1)).run(load_pipeline(str(path)),
                                                        params={"out": str(tmp_path / "local-out")})
        assert local.state == RunState.SUCCEEDED, local.error
        expected = view(local_store, local.id)
    finally:
        local_store.close()
    assert view(store, run.id) == expected
    assert expected["tasks"]["totals"]["rows"] == 2 and expected["tasks"]["publish"]["lineage"] == ["dataset:totals"]
    assert pq.read_table(tmp_path / "aws-out" / "totals.parquet").equals(
        pq.read_table(tmp_path / "local-out" / "totals.parquet"))
    totals = next(t for t in run.tasks if t.task_id == "totals")
    assert totals.result["output"]["format"] == "view"
    assert totals.result["metrics"]["fused_into"] == "publish"
    lineage = {r.task_id: r for r in store.get_lineage(run.id)}
    assert lineage["totals"].inputs == [f"s3://{moto_aws.data_bucket}/runs/fused/{run.id}/orders/"]
    assert lineage["publish"].inputs == [f"s3://{moto_aws.data_bucket}/runs/fused/{run.id}/totals/"]

    # a load run on its own later (its record gone, another target) reads the transform's view: the
    # transform's query again over the inputs the view names in S3, the source fetched in place
    from udop.aws.runner import state_key
    from udop.state import open_state_store

    state = open_state_store(os.environ.get("UDOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        assert state.delete(state_key("fused", run.id, "publish"))
    finally:
        state.close()
    execution = json.loads(moto_aws.client("stepfunctions").describe_execution(
        executionArn=run.external_id)["input"])
    execution["run"]["params"] = {"out": str(tmp_path / "again")}
    answer = json.loads(moto_aws.client("lambda").invoke(FunctionName=moto_aws.task_runner_arn, Payload=json.dumps(
        {**execution, "pipeline": "fused", "version": 1, "task_id": "publish", "execution": "again",
         "attempt": 0}))["Payload"].read())
    assert answer["reused"] is False and answer["output"]["rows"] == 2, answer
    assert pq.read_table(tmp_path / "again" / "totals.parquet").equals(
        pq.read_table(tmp_path / "aws-out" / "totals.parquet"))


def test_a_load_failing_in_a_fused_chain_is_the_loads_failure_as_locally(
    moto_aws: Any, store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fused query fails at the target; the transform then runs alone (its Parquet to S3) and the
    load alone, whose error the run records against the load, as the LocalExecutor does."""
    from conformance.executors import view
    from udop.executor.local import LocalExecutor
    from udop.spec.loader import load_pipeline
    from udop.store import open_store

    bucket = _lake(moto_aws)
    path = _pipeline(tmp_path, bucket, name="blocked")
    _deploy(moto_aws, store, path)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the target's folder should be")
    run = _run(moto_aws, store, path, blocker, monkeypatch)
    assert run.state == RunState.FAILED
    local_store = open_store(f"sqlite:///{tmp_path / 'local.db'}")
    try:
        local = LocalExecutor(local_store, workers=2, data_root=str(tmp_path / "local-data"),
                              rng=random.Random(1)).run(load_pipeline(str(path)), params={"out": str(blocker)})
        expected = view(local_store, local.id)
        local_error = local.error
    finally:
        local_store.close()
    record = view(store, run.id)
    assert record == expected
    assert record["tasks"]["publish"]["state"] == "failed" and record["tasks"]["totals"]["state"] == "succeeded"
    publish = next(t for t in run.tasks if t.task_id == "publish")
    assert not publish.attempts[-1].error_message.startswith("[task")
    assert str(blocker) in publish.attempts[-1].error_message
    assert "[task" not in (run.error or "") and local_error is not None
    # the transform ran on its own: its Parquet is in S3 for the load's retries
    keys = _keys(moto_aws.client("s3"), moto_aws.data_bucket, f"runs/blocked/{run.id}/totals/")
    assert keys and all(k.endswith(".parquet") for k in keys)

    # once the target can be written, a redrive runs the load alone (the transform is not run again)
    # and the records are the LocalExecutor's after its resume
    from udop.cli.aws import redrive_and_follow

    blocker.unlink()
    before = len(_runner_calls(moto_aws))
    assert redrive_and_follow(run.id, store=store, sfn=moto_aws.client("stepfunctions")) == 0
    assert [(c["task_id"], c.get("fused")) for c in _runner_calls(moto_aws)[before:]] == [
        ("orders", None), ("totals", "publish")]
    local_store = open_store(f"sqlite:///{tmp_path / 'local.db'}")
    try:
        LocalExecutor(local_store, workers=2, data_root=str(tmp_path / "local-data"),
                      rng=random.Random(1)).run(load_pipeline(str(path)), run_id=local.id, resume=True)
        expected = view(local_store, local.id)
    finally:
        local_store.close()
    record = view(store, run.id)
    assert record == expected and record["state"] == "succeeded"
    assert pq.read_table(blocker / "totals.parquet").num_rows == 2


def test_fuse_false_keeps_two_states_and_the_transforms_parquet(
    moto_aws: Any, store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = _lake(moto_aws)
    path = _pipeline(tmp_path, bucket, name="apart", fuse=False)
    definition = _deploy(moto_aws, store, path)
    assert "fused" not in definition["States"]["totals"]["Parameters"]["Payload"]
    assert definition["States"]["publish"]["Parameters"]["Payload"]["task_id"] == "publish"

    run = _run(moto_aws, store, path, tmp_path / "out", monkeypatch)
    assert run.state == RunState.SUCCEEDED, run.error
    assert [c["task_id"] for c in _runner_calls(moto_aws)] == ["orders", "totals", "publish"]
    keys = _keys(moto_aws.client("s3"), moto_aws.data_bucket, f"runs/apart/{run.id}/totals/")
    assert keys and all(k.endswith(".parquet") for k in keys)
    assert pq.read_table(tmp_path / "out" / "totals.parquet").num_rows == 2
    # unfused too, the source is read in place: its prefix holds only the snapshot
    assert _keys(moto_aws.client("s3"), moto_aws.data_bucket, f"runs/apart/{run.id}/orders/") == [
        f"runs/apart/{run.id}/orders/_snapshot.json"]


@pytest.mark.parametrize("case", [
    # nothing recorded: the retry runs the fused query again
    ("totals", {"totals": [("failed", "udop.RetryableError"), ("succeeded", None)],
                "publish": [("succeeded", None)]}),
    # the transform recorded: the retry runs the load alone, over the transform's view
    ("publish", {"totals": [("succeeded", None)],
                 "publish": [("failed", "udop.RetryableError"), ("succeeded", None)]}),
], ids=["transform-unrecorded", "load-unrecorded"])
def test_a_retried_fused_chain_loads_exactly_once(
    moto_aws: Any, store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, dict[str, list[tuple[str, str | None]]]],
) -> None:
    """The invocation is lost after the load committed and before the task ``lost``'s result was
    recorded: the retry redoes what has no record, and the load finds its ledger entry and writes
    nothing again."""
    lost, attempts = case
    from udop.aws import runner

    bucket = _lake(moto_aws)
    # appending to a folder adds part files: a second write would show as rows twice
    path = _pipeline(tmp_path, bucket, name="once", target="totals", mode="append",
                     retry="defaults: {retry: {max_attempts: 3, base_delay: 1s, jitter: none}}")
    _deploy(moto_aws, store, path)
    record = runner._record
    failed: list[str] = []

    def lost_once(payload: Any, task_id: str, result: Any, **kwargs: Any) -> Any:
        if task_id == lost and not failed:
            failed.append(task_id)
            raise RetryableError("the invocation was lost after the load committed")
        return record(payload, task_id, result, **kwargs)

    monkeypatch.setattr(runner, "_record", lost_once)
    run = _run(moto_aws, store, path, tmp_path / "out", monkeypatch)
    assert failed == [lost]
    assert run.state == RunState.SUCCEEDED, run.error
    assert pq.read_table(tmp_path / "out" / "totals").num_rows == 2  # loaded once, not twice
    tasks = {t.task_id: t for t in run.tasks}
    assert {t: [(a.state.value, a.error_type) for a in tasks[t].attempts] for t in attempts} == attempts
    assert tasks["publish"].result["metrics"]["ledger"] == "already loaded"
    assert tasks["totals"].result["output"]["rows"] == 2
    assert [c["task_id"] for c in _runner_calls(moto_aws)] == ["orders", "totals", "totals"]
