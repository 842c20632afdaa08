"""On moto: ``udop deploy``, the deployer's S3 path and the API's delete keep the EventBridge Scheduler
schedule ``udop-<name>`` in step with the definition (expression, zone, target, input)."""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from udop.aws.deployer import deploy_s3_object
from udop.schedule.aws import ScheduleTarget, forget_pipeline

pytestmark = pytest.mark.aws

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/udop-scheduler"
MACHINE_ROLE = "arn:aws:iam::123456789012:role/udop-state-machine"
RUNNER = f"arn:aws:lambda:{REGION}:123456789012:function:udop-task-runner"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    import boto3  # type: ignore[import-untyped]
    from moto import mock_aws

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        definitions, data = f"defs-{uuid.uuid4().hex[:8]}", f"data-{uuid.uuid4().hex[:8]}"
        s3 = boto3.client("s3", region_name=REGION)
        for bucket in (definitions, data):
            s3.create_bucket(Bucket=bucket)
        monkeypatch.setenv("UDOP_DEFINITIONS_BUCKET", definitions)
        monkeypatch.setenv("UDOP_DATA_BUCKET", data)
        monkeypatch.setenv("UDOP_TASK_RUNNER_ARN", RUNNER)
        monkeypatch.setenv("UDOP_STATE_MACHINE_ROLE_ARN", MACHINE_ROLE)
        monkeypatch.setenv("UDOP_SCHEDULER_ROLE_ARN", ROLE)
        monkeypatch.setenv("UDOP_DATABASE_URL", f"sqlite:///{tmp_path / 'meta.db'}")
        yield {"s3": s3, "sfn": boto3.client("stepfunctions", region_name=REGION),
               "scheduler": boto3.client("scheduler", region_name=REGION),
               "definitions": definitions, "data": data}


def _definition(schedule: str | None, params: str = "") -> str:
    return textwrap.dedent(f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: nightly}}
        spec:
          {schedule or ''}
          {params}
          tasks: [{{id: a, type: python, callable: "udop_aws_test_tasks:numbers"}}]
        """)


def _deploy(cli: Any, tmp_path: Path, text: str) -> tuple[int, str, str]:
    path = tmp_path / "nightly.yaml"
    path.write_text(text)
    result: tuple[int, str, str] = cli("deploy", str(path))
    return result


def test_udop_deploy_creates_updates_and_deletes_the_schedule(aws: dict[str, Any], cli: Any,
                                                              tmp_path: Path) -> None:
    code, out, err = _deploy(cli, tmp_path, _definition(
        'schedule: {cron: "30 2 * * 1-5", timezone: "Europe/Paris", jitter: 300}'))
    assert code == 0, err
    assert "nightly: schedule created" in out
    machine_arn = out.split("-> ", 1)[1].splitlines()[0].strip()
    got = aws["scheduler"].get_schedule(Name="udop-nightly")
    assert got["ScheduleExpression"] == "cron(30 2 ? * 2-6 *)"
    assert got["ScheduleExpressionTimezone"] == "Europe/Paris"
    assert got["State"] == "ENABLED"
    assert got["FlexibleTimeWindow"] == {"Mode": "FLEXIBLE", "MaximumWindowInMinutes": 5}
    assert got["Target"]["Arn"] == machine_arn and got["Target"]["RoleArn"] == ROLE
    run = json.loads(got["Target"]["Input"])["run"]
    assert run["logical_date"] == "<aws.scheduler.scheduled-time>" and run["data_bucket"] == aws["data"]
    assert run["trigger"] == "schedule"

    code, out, err = _deploy(cli, tmp_path, _definition('schedule: {rate: "15 minutes", enabled: false}'))
    assert code == 0 and "nightly: schedule updated" in out, err
    got = aws["scheduler"].get_schedule(Name="udop-nightly")
    assert (got["ScheduleExpression"], got["State"]) == ("rate(15 minutes)", "DISABLED")
    assert got["Target"]["Arn"] == machine_arn  # the same machine, updated

    code, out, err = _deploy(cli, tmp_path, _definition(None))
    assert code == 0 and "nightly: schedule deleted" in out, err
    with pytest.raises(aws["scheduler"].exceptions.ResourceNotFoundException):
        aws["scheduler"].get_schedule(Name="udop-nightly")


def test_a_schedule_that_cannot_supply_a_required_parameter_deploys_nothing(
    aws: dict[str, Any], cli: Any, tmp_path: Path
) -> None:
    code, _, err = _deploy(cli, tmp_path, _definition('schedule: {cron: "0 6 * * *"}',
                                                      "params: {day: {type: str}}"))
    assert code == 2
    assert "a schedule cannot supply required parameter(s) day" in err
    assert aws["sfn"].list_state_machines()["stateMachines"] == []
    assert aws["scheduler"].list_schedules()["Schedules"] == []


def test_an_s3_upload_deploys_the_schedule_and_an_api_delete_removes_it(aws: dict[str, Any]) -> None:
    from udop.store import open_store

    key = "pipelines/nightly.yaml"
    aws["s3"].put_object(Bucket=aws["definitions"], Key=key,
                         Body=_definition('schedule: {cron: "0 6 1 * *"}').encode())
    store = open_store()
    try:
        # what the deployer function does with the upload's event (its settings come from the env)
        result = deploy_s3_object(aws["definitions"], key, s3=aws["s3"], sfn=aws["sfn"], store=store,
                                  task_runner_arn=RUNNER, role_arn=MACHINE_ROLE)
    finally:
        store.close()
    assert result is not None and result.ok and result.schedule == "created", result
    got = aws["scheduler"].get_schedule(Name="udop-nightly")
    assert got["ScheduleExpression"] == "cron(0 6 1 * ? *)"
    assert got["Target"]["Arn"] == result.state_machine_arn
    forget_pipeline("local", "nightly")  # a local server has no EventBridge schedules to touch
    assert aws["scheduler"].get_schedule(Name="udop-nightly")
    forget_pipeline("stepfunctions", "nightly")
    with pytest.raises(aws["scheduler"].exceptions.ResourceNotFoundException):
        aws["scheduler"].get_schedule(Name="udop-nightly")
    assert ScheduleTarget.from_env() is not None
