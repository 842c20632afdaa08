"""A backfill on Step Functions as one parent execution (``udop.schedule.sfn_parent``), on moto.

moto 5.2.5 runs ``states:startExecution.sync:2`` only after a fix of two conversions in its Step
Functions service integration (``sync2_on_moto`` below: it hands botocore the parameters as
``StateMachineArn`` where botocore wants ``stateMachineArn``, and gives back the response in
botocore's case and with datetimes); with it, the parent runs for real here: its Distributed Map
starts one execution of the pipeline per date, each running our task runner, and the parent ends
with the dates. Also here: the listing, the parent's status event through the real run-events
handler setting the backfill's state, resume as redrives of the dates' runs, and, on a moto that
does not execute (executions stay running, as a long backfill's do), cancel as one unit."""

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

pytestmark = [pytest.mark.aws, pytest.mark.redis, pytest.mark.slow]


def _pipeline(tmp_path: Path, log_dir: str, flag: str | None = None) -> Path:
    failing = (
        f'''
            - {{id: checked, type: python, callable: "udop_aws_test_tasks:fails_while", depends_on: [numbers],
               args: {{flag: "{flag}", log_dir: "{log_dir}"}}}}'''
        if flag
        else ""
    )
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
               args: {{n: 3, log_dir: "{log_dir}"}}}}""")
        + textwrap.indent(textwrap.dedent(failing), "    ")
        + "\n"
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


@pytest.fixture
def sync2_on_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's ``states:startExecution(.sync:2)`` integration with its two case conversions fixed (as
    ``_invoke_lambda`` is replaced in conftest.py to run our handlers): the request goes to botocore in
    botocore's member names, the response comes back in the service integration's (``ExecutionArn``,
    dates as epoch milliseconds), as Step Functions gives them."""
    import datetime as dt

    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service_sfn

    cls = state_task_service_sfn.StateTaskServiceSfn
    call, normalise = cls._eval_service_task, cls._normalise_response

    def integration_case(response: dict[str, Any]) -> dict[str, Any]:
        return {
            k[:1].upper() + k[1:]: int(v.timestamp() * 1000) if isinstance(v, dt.datetime) else v
            for k, v in response.items()
        }

    def eval_service_task(
        self: Any,
        env: Any,
        resource_runtime_part: Any,
        normalised_parameters: dict[str, Any],
        state_credentials: Any,
    ) -> Any:
        out = call(
            self,
            env=env,
            resource_runtime_part=resource_runtime_part,
            normalised_parameters={k[:1].lower() + k[1:]: v for k, v in normalised_parameters.items()},
            state_credentials=state_credentials,
        )
        env.stack[-1] = integration_case(env.stack[-1])
        return out

    def normalise_response(self: Any, response: Any, *args: Any, **kwargs: Any) -> None:
        normalise(self, response, *args, **kwargs)
        fixed = integration_case(response)
        response.clear()
        response.update(fixed)

    monkeypatch.setattr(cls, "_eval_service_task", eval_service_task)
    monkeypatch.setattr(cls, "_normalise_response", normalise_response)


@in_process_only
@pytest.mark.usefixtures("sync2_on_moto")
def test_one_parent_execution_runs_every_date_and_a_resume_redrives_the_failed_ones(
    moto_aws: Any, store: Any, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sfn, s3 = moto_aws.client("stepfunctions"), moto_aws.client("s3")
    flag = moto_aws.flag("fault")
    moto_aws.set_flag(flag, True)
    path = _pipeline(tmp_path, moto_aws.log_root, flag)
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

    # one unit in the metadata store, listed with its dates' runs while the parent runs
    from udop.settings import get_settings

    monkeypatch.setenv("UDOP_DATABASE_URL", moto_aws.database_url)
    get_settings.cache_clear()  # read again with this URL (tests/conftest.py clears it after the test)
    code, out, err = cli("backfills", "show", record.id, "--json")
    assert code == 0, err
    assert [d["run_id"] for d in json.loads(out)["dates"]] == list(recorded.dates.values())

    # every date ran as an execution of the pipeline started by the parent; each failed (the fault),
    # none stopped the others, and the parent failed at its end
    failed = runner.follow(record.id, arn)
    ended = sfn.describe_execution(executionArn=arn)
    assert (ended["status"], ended.get("error")) == ("FAILED", "udop.BackfillFailed"), ended
    assert failed.state == "failed" and failed.counts() == {"failed": 3}
    executions = sfn.list_executions(stateMachineArn=deployed.state_machine_arn)["executions"]
    assert sorted(e["name"] for e in executions) == sorted(recorded.dates.values())
    runs = {r.logical_date: r for r in store.list_runs(pipeline="daily")}
    assert sorted(runs) == sorted(recorded.dates)
    assert {(r.trigger, r.executor) for r in runs.values()} == {("backfill", "stepfunctions")}
    # the parent's status event, through the real run-events handler, sets the backfill's state too
    ScheduleStore(store).set_backfill_state(record.id, "running")
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

    # fixed: a resume is a new parent whose dates go on as redrives of the same runs
    moto_aws.set_flag(flag, False)
    again = runner.start(record.id, resume=True)
    assert sfn.describe_execution(executionArn=again)["name"] == f"{record.id}--resume-1"
    done = runner.follow(record.id, again)
    assert sfn.describe_execution(executionArn=again)["status"] == "SUCCEEDED"
    assert done.state == "succeeded" and done.counts() == {"succeeded": 3}
    for run_id in done.dates.values():
        assert run_id is not None
        assert moto_aws.calls("numbers", run_id) == 1  # reused, not run again
        assert moto_aws.calls("checked", run_id) == 2
    assert len(store.list_runs(pipeline="daily")) == 3  # no new run
    # the first parent's FAILED event delivered late changes nothing: a resume followed it
    resp = moto_aws.client("lambda").invoke(FunctionName=moto_aws.run_events_arn, Payload=json.dumps(event))
    assert json.loads(resp["Payload"].read()) == {"backfill_id": record.id, "state": "succeeded"}
    assert [e["name"] for e in parent_executions(sfn, "daily", record.id)] == [
        record.id,
        f"{record.id}--resume-1",
    ]


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


@in_process_only
@pytest.mark.usefixtures("sync2_on_moto")
def test_udop_backfill_on_stepfunctions_runs_a_parent_and_exits_0_when_every_date_succeeded(
    moto_aws: Any, store: Any, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from udop.settings import get_settings

    path = _pipeline(tmp_path, moto_aws.log_root)
    for key, value in {
        "UDOP_DEFINITIONS_BUCKET": moto_aws.definitions_bucket,
        "UDOP_DATA_BUCKET": moto_aws.data_bucket,
        "UDOP_TASK_RUNNER_ARN": moto_aws.task_runner_arn,
        "UDOP_STATE_MACHINE_ROLE_ARN": moto_aws.role_arn,
        "UDOP_DATABASE_URL": moto_aws.database_url,
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    code, _, err = cli("deploy", str(path))
    assert code == 0, err
    code, out, err = cli(
        "backfill",
        str(path),
        "--from",
        "2024-01-01",
        "--to",
        "2024-01-02",
        "--executor",
        "stepfunctions",
        "--max-parallel",
        "2",
        "--json",
    )
    assert code == 0, err
    assert "parent execution" in err
    # (stdout also has the in-process task runner's metric lines: the CLI's JSON is the indented one)
    body = json.loads(out[out.index("{\n") :])
    assert body["state"] == "succeeded" and body["counts"] == {"succeeded": 2}
    code, out, _ = cli("runs", "list", "--trigger", "backfill", "--json")
    assert sorted(r["logical_date"][:10] for r in json.loads(out)) == ["2024-01-01", "2024-01-02"]
