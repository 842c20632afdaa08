"""A backfill on Step Functions as one parent execution (``udop.schedule.sfn_parent``), on moto.

moto 5.2.5 cannot run ``states:startExecution.sync:2`` (its parameter normalisation loses
``StateMachineArn``: tests/unit/compiler/test_execution.py), so the parent cannot fan out for real
here; its ASL is checked by asl-validator (tests/unit/schedule/test_sfn_parent.py). What runs here:
the start (parent machine, its input, the dates file, the dates' run ids recorded as one backfill),
the listing, the parent's status event through the real run-events handler setting the backfill's
state, and, on a moto that does not execute (executions stay running, as a long backfill's do),
cancel as one unit (parent and dates' executions stopped) and resume (a new parent whose dates go on
as redrives of their runs)."""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_support import in_process_only, load_event

from udop.aws.runs import deploy_file
from udop.schedule.backfill import parse_date
from udop.schedule.sfn_parent import (
    EXECUTOR,
    ParentBackfillRunner,
    parent_definition,
    parent_executions,
    stop_parent_backfill,
)
from udop.schedule.store import ScheduleStore
from udop.spec.loader import load_pipeline

pytestmark = [pytest.mark.aws]


def _pipeline(tmp_path: Path, log_dir: str) -> Path:
    path = tmp_path / "daily.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: daily}}
        spec:
          params: {{region: {{type: str, default: eu}}}}
          tasks:
            - {{id: numbers, type: python, callable: "udop_aws_test_tasks:numbers",
               args: {{n: 3, log_dir: "{log_dir}"}}}}
        """)
    )
    return path


def _create(runner: ParentBackfillRunner, max_parallel: int = 2) -> Any:
    return runner.create(
        start=parse_date("2024-01-01", what="--from"),
        end=parse_date("2024-01-03", what="--to"),
        step="1d",
        max_parallel=max_parallel,
        params={"region": "us"},
    )


@in_process_only
def test_a_backfill_starts_one_parent_execution_and_its_status_event_ends_the_backfill(
    moto_aws: Any, store: Any, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sfn, s3 = moto_aws.client("stepfunctions"), moto_aws.client("s3")
    path = _pipeline(tmp_path, moto_aws.log_root)
    deployed = deploy_file(
        str(path),
        definitions_bucket=moto_aws.definitions_bucket,
        task_runner_arn=moto_aws.task_runner_arn,
        role_arn=moto_aws.role_arn,
        store=store,
        s3=s3,
        sfn=sfn,
    )
    assert deployed.ok, deployed.errors
    runner = ParentBackfillRunner(
        store,
        load_pipeline(path),
        sfn=sfn,
        s3=s3,
        role_arn=moto_aws.role_arn,
        data_bucket=moto_aws.data_bucket,
        poll=0.05,
    )
    record = _create(runner)
    assert record.executor == EXECUTOR
    arn = runner.start(record.id)

    machines = {m["name"]: m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]}
    parent = machines["udop-daily-Backfill"]
    assert json.loads(sfn.describe_state_machine(stateMachineArn=parent)["definition"]) == parent_definition()
    desc = sfn.describe_execution(executionArn=arn)
    assert desc["name"] == record.id
    body = json.loads(desc["input"])
    assert body["state_machine_arn"] == deployed.state_machine_arn and body["max_parallel"] == 2
    assert body["run"]["params"] == {"region": "us"} and body["run"]["trigger"] == "backfill"
    assert body["run"]["pipeline_version"] == deployed.version
    dates = json.loads(s3.get_object(Bucket=body["dates"]["bucket"], Key=body["dates"]["key"])["Body"].read())
    recorded = ScheduleStore(store).get_backfill(record.id)
    assert recorded is not None
    assert [(d["name"], d["run"]["run_id"], d["run"]["logical_date"]) for d in dates] == [
        (run_id, run_id, logical.isoformat()) for logical, run_id in recorded.dates.items()
    ]

    # one unit in the metadata store: listed with its dates' runs
    from udop.settings import get_settings

    monkeypatch.setenv("UDOP_DATABASE_URL", moto_aws.database_url)
    get_settings.cache_clear()  # read again with this URL (tests/conftest.py clears it after the test)
    code, out, err = cli("backfills", "show", record.id, "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["state"] == "running" and [d["run_id"] for d in shown["dates"]] == list(
        recorded.dates.values()
    )

    # moto runs the parent's Map, but each date's child start fails (see the module's docstring): the
    # dates are caught as failed and the parent fails at its end
    ended = moto_aws.wait_execution(arn)
    assert (ended["status"], ended.get("error")) == ("FAILED", "udop.BackfillFailed"), ended
    # its status event, through the real run-events handler, ends the backfill
    event = load_event(
        "sfn_execution_status_change.json",
        execution_arn=arn,
        state_machine_arn=parent,
        name=record.id,
        status="FAILED",
        account=parent.split(":")[4],
    )
    resp = moto_aws.client("lambda").invoke(FunctionName=moto_aws.run_events_arn, Payload=json.dumps(event))
    assert json.loads(resp["Payload"].read()) == {"backfill_id": record.id, "state": "failed"}
    final = ScheduleStore(store).get_backfill(record.id)
    assert final is not None and final.state == "failed" and "parent execution failed" in (final.error or "")


@pytest.fixture
def idle_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """moto without executing state machines: executions stay running until stopped, as the parent
    and its dates' executions of a long backfill do on AWS."""
    import boto3
    from moto import mock_aws

    if LOCALSTACK:
        pytest.skip("needs moto's non-executing mode")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        buckets = {k: f"{k}-{uuid.uuid4().hex[:8]}" for k in ("definitions", "data")}
        for bucket in buckets.values():
            s3.create_bucket(Bucket=bucket)
        monkeypatch.setenv("UDOP_DATA_BUCKET", buckets["data"])
        yield {
            "s3": s3,
            "sfn": boto3.client("stepfunctions", region_name="us-east-1"),
            **buckets,
            "role": "arn:aws:iam::123456789012:role/udop-state-machine",
            "runner": "arn:aws:lambda:us-east-1:123456789012:function:udop-task-runner",
        }


LOCALSTACK = bool(__import__("os").environ.get("AWS_ENDPOINT_URL"))


def test_cancel_stops_the_parent_and_its_dates_and_resume_redrives_them(
    idle_aws: dict[str, Any], tmp_path: Path
) -> None:
    from udop.store import open_store

    sfn, s3 = idle_aws["sfn"], idle_aws["s3"]
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    try:
        path = _pipeline(tmp_path, str(tmp_path))
        deployed = deploy_file(
            str(path),
            definitions_bucket=idle_aws["definitions"],
            task_runner_arn=idle_aws["runner"],
            role_arn=idle_aws["role"],
            store=store,
            s3=s3,
            sfn=sfn,
        )
        assert deployed.ok, deployed.errors
        runner = ParentBackfillRunner(
            store,
            load_pipeline(path),
            sfn=sfn,
            s3=s3,
            role_arn=idle_aws["role"],
            data_bucket=idle_aws["data"],
        )
        record = _create(runner, max_parallel=3)
        arn = runner.start(record.id)
        body = json.loads(sfn.describe_execution(executionArn=arn)["input"])
        dates = json.loads(s3.get_object(Bucket=idle_aws["data"], Key=body["dates"]["key"])["Body"].read())
        # what the parent's Map does with each date (moto does not run it here): start the execution
        children = [
            sfn.start_execution(
                stateMachineArn=body["state_machine_arn"],
                name=d["name"],
                input=json.dumps({"run": {**body["run"], **d["run"]}}),
            )["executionArn"]
            for d in dates
        ]
        with pytest.raises(Exception, match="still running"):
            runner.start(record.id, resume=True)

        cancelled = stop_parent_backfill(store, sfn, record.id, reason="cancelled by test")
        assert cancelled.state == "cancelled"
        assert sfn.describe_execution(executionArn=arn)["status"] == "ABORTED"
        assert [sfn.describe_execution(executionArn=c)["status"] for c in children] == ["ABORTED"] * 3

        # resume: a new parent over the dates that did not succeed, each going on as its run's redrive
        again = runner.start(record.id, resume=True)
        assert sfn.describe_execution(executionArn=again)["name"] == f"{record.id}--resume-1"
        assert [e["name"] for e in parent_executions(sfn, "daily", record.id)] == [
            record.id,
            f"{record.id}--resume-1",
        ]
        body2 = json.loads(sfn.describe_execution(executionArn=again)["input"])
        dates2 = json.loads(s3.get_object(Bucket=idle_aws["data"], Key=body2["dates"]["key"])["Body"].read())
        assert [d["name"] for d in dates2] == [f"{d['name']}--redrive-1" for d in dates]
        assert [d["run"] for d in dates2] == [d["run"] for d in dates]  # the same runs, the same dates
        resumed = ScheduleStore(store).get_backfill(record.id)
        assert resumed is not None and resumed.state == "running"
    finally:
        store.close()
