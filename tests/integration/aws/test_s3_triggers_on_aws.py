"""On moto: a pipeline with ``trigger: files: {path: s3://...}`` gets an EventBridge rule from ``udop
deploy`` (and the deployer, and loses it with the trigger or the pipeline); a real upload to the bucket
reaches the rule through the bucket's EventBridge notifications; the starter starts one execution per
object version."""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from udop.schedule.aws import forget_pipeline
from udop.schedule.s3events import TARGET_ID, start_from_s3_event

pytestmark = pytest.mark.aws

REGION = "us-east-1"
ACCOUNT = "123456789012"
MACHINE_ROLE = f"arn:aws:iam::{ACCOUNT}:role/udop-state-machine"
RUNNER = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:udop-task-runner"
STARTER = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:udop-run-events"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    import boto3
    from moto import mock_aws

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("UDOP_SCHEDULER_ROLE_ARN", raising=False)
    with mock_aws():
        definitions, data = f"defs-{uuid.uuid4().hex[:8]}", f"data-{uuid.uuid4().hex[:8]}"
        s3 = boto3.client("s3", region_name=REGION)
        for bucket in (definitions, data):
            s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=data, VersioningConfiguration={"Status": "Enabled"})
        monkeypatch.setenv("UDOP_DEFINITIONS_BUCKET", definitions)
        monkeypatch.setenv("UDOP_DATA_BUCKET", data)
        monkeypatch.setenv("UDOP_TASK_RUNNER_ARN", RUNNER)
        monkeypatch.setenv("UDOP_STATE_MACHINE_ROLE_ARN", MACHINE_ROLE)
        monkeypatch.setenv("UDOP_TRIGGER_FUNCTION_ARN", STARTER)
        monkeypatch.setenv("UDOP_DATABASE_URL", f"sqlite:///{tmp_path / 'meta.db'}")
        yield {"s3": s3, "sfn": boto3.client("stepfunctions", region_name=REGION),
               "events": boto3.client("events", region_name=REGION), "sqs": boto3.client("sqs", region_name=REGION),
               "definitions": definitions, "data": data}


def _definition(trigger: str | None, params: str = "params: {file: {type: str}, day: {type: str, default: x}}"
                ) -> str:
    return textwrap.dedent(f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: landing}}
        spec:
          {params}
          {trigger or ''}
          tasks: [{{id: a, type: python, callable: "udop_aws_test_tasks:numbers"}}]
        """)


def _deploy(cli: Any, tmp_path: Path, text: str) -> tuple[int, str, str]:
    path = tmp_path / "landing.yaml"
    path.write_text(text)
    result: tuple[int, str, str] = cli("deploy", str(path))
    return result


def _capture(aws: dict[str, Any]) -> str:
    """A queue beside the starter on the rule: what EventBridge delivers for real uploads."""
    url = aws["sqs"].create_queue(QueueName=f"capture-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = aws["sqs"].get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    # moto stops at a Lambda target (NotImplementedError): the queue goes first, the starter after it
    [starter] = aws["events"].list_targets_by_rule(Rule="udop-landing-files")["Targets"]
    aws["events"].remove_targets(Rule="udop-landing-files", Ids=[starter["Id"]])
    aws["events"].put_targets(Rule="udop-landing-files", Targets=[{"Id": "capture", "Arn": arn}, starter])
    return str(url)


def _delivered(aws: dict[str, Any], url: str) -> list[dict[str, Any]]:
    got = aws["sqs"].receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    for m in got:
        aws["sqs"].delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return [json.loads(m["Body"]) for m in got]


def _as_starter_gets_it(aws: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The starter's input: the rule's input transformer applied to the event (its template wraps
    the whole event, ``<aws.events.event>``; moto delivers S3 events untransformed)."""
    [target] = [t for t in aws["events"].list_targets_by_rule(Rule="udop-landing-files")["Targets"]
                if t["Id"] == TARGET_ID]
    template = target["InputTransformer"]["InputTemplate"]
    payload: dict[str, Any] = json.loads(template.replace("<aws.events.event>", json.dumps(event)))
    return payload


TRIGGER = 'trigger: {files: {path: "s3://BUCKET/incoming", pattern: "*.csv", param: file}}'


def test_udop_deploy_creates_the_rule_and_an_upload_starts_one_run_per_object_version(
    aws: dict[str, Any], cli: Any, tmp_path: Path
) -> None:
    trigger = TRIGGER.replace("BUCKET", aws["data"])
    code, out, err = _deploy(cli, tmp_path, _definition(trigger))
    assert code == 0, err
    assert "landing: S3 trigger rule created" in out
    machine_arn = out.split("-> ", 1)[1].splitlines()[0].strip()
    rule = aws["events"].describe_rule(Name="udop-landing-files")
    assert json.loads(rule["EventPattern"]) == {
        "source": ["aws.s3"], "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": [aws["data"]]}, "object": {"key": [{"wildcard": "incoming/*.csv"}]}}}
    [target] = aws["events"].list_targets_by_rule(Rule="udop-landing-files")["Targets"]
    assert target["Arn"] == STARTER
    # (moto does not echo EventBridgeConfiguration back; the upload below reaching the rule shows it is on)

    # a re-deploy (unchanged) keeps one rule with one target
    code, out, err = _deploy(cli, tmp_path, _definition(trigger))
    assert code == 0 and "landing: S3 trigger rule updated" in out, err
    assert [r["Name"] for r in aws["events"].list_rules(NamePrefix="udop-")["Rules"]] == ["udop-landing-files"]
    assert len(aws["events"].list_targets_by_rule(Rule="udop-landing-files")["Targets"]) == 1

    queue = _capture(aws)
    for key in ("incoming/a.csv", "incoming/notes.txt", "elsewhere/b.csv"):
        aws["s3"].put_object(Bucket=aws["data"], Key=key, Body=b"x\n1\n")
    [event] = _delivered(aws, queue)  # only the csv under the prefix matched the rule
    assert event["detail"]["object"]["key"] == "incoming/a.csv"

    first = start_from_s3_event(_as_starter_gets_it(aws, event), aws["sfn"])
    again = start_from_s3_event(_as_starter_gets_it(aws, event), aws["sfn"])  # EventBridge redelivers
    assert first["started"] and not again["started"]
    [execution] = aws["sfn"].list_executions(stateMachineArn=machine_arn)["executions"]
    assert execution["name"] == first["execution_name"]
    run = json.loads(aws["sfn"].describe_execution(executionArn=execution["executionArn"])["input"])["run"]
    assert run["params"] == {"file": f"s3://{aws['data']}/incoming/a.csv", "day": "x"}
    assert run["run_id"] == execution["name"] and run["trigger"] == "s3"
    assert run["trigger_object"]["version"] == event["detail"]["object"]["version-id"]

    # a new version of the same key is a new run
    aws["s3"].put_object(Bucket=aws["data"], Key="incoming/a.csv", Body=b"x\n1\n2\n")
    [event2] = _delivered(aws, queue)
    assert start_from_s3_event(_as_starter_gets_it(aws, event2), aws["sfn"])["started"]
    assert len(aws["sfn"].list_executions(stateMachineArn=machine_arn)["executions"]) == 2

    # the definition drops the trigger: the rule goes
    code, out, err = _deploy(cli, tmp_path, _definition(None))
    assert code == 0 and "landing: S3 trigger rule deleted" in out, err
    with pytest.raises(aws["events"].exceptions.ResourceNotFoundException):
        aws["events"].describe_rule(Name="udop-landing-files")


def test_an_s3_upload_of_the_definition_deploys_the_rule_and_an_api_delete_removes_it(
    aws: dict[str, Any]
) -> None:
    from udop.aws.deployer import deploy_s3_object
    from udop.store import open_store

    key = "pipelines/landing.yaml"
    aws["s3"].put_object(Bucket=aws["definitions"], Key=key,
                         Body=_definition(TRIGGER.replace("BUCKET", aws["data"])).encode())
    store = open_store()
    try:
        result = deploy_s3_object(aws["definitions"], key, s3=aws["s3"], sfn=aws["sfn"], store=store,
                                  task_runner_arn=RUNNER, role_arn=MACHINE_ROLE)
    finally:
        store.close()
    assert result is not None and result.ok and result.trigger == "created", result
    assert aws["events"].describe_rule(Name="udop-landing-files")["State"] == "ENABLED"
    forget_pipeline("stepfunctions", "landing")
    with pytest.raises(aws["events"].exceptions.ResourceNotFoundException):
        aws["events"].describe_rule(Name="udop-landing-files")


@pytest.mark.parametrize("case", [
    ('trigger: {files: {path: "s3://BUCKET/in/", pattern: "?.csv"}}', "",
     "an S3 trigger can only use '*' in its pattern"),
    ('trigger: {files: {path: "s3://BUCKET/in/", param: file}}', "params: {file: {type: str}, day: {type: str}}",
     "an S3 trigger cannot supply required parameter(s) day"),
])
def test_an_s3_trigger_that_cannot_work_deploys_nothing(
    aws: dict[str, Any], cli: Any, tmp_path: Path, case: tuple[str, str, str]
) -> None:
    trigger, params, message = case
    code, _, err = _deploy(cli, tmp_path, _definition(trigger.replace("BUCKET", aws["data"]), params))
    assert code == 2 and message in err, err
    assert aws["sfn"].list_state_machines()["stateMachines"] == []
    assert aws["events"].list_rules(NamePrefix="udop-")["Rules"] == []
