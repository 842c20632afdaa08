"""On moto: ``trigger: after: {pipeline: ingest}`` gets the EventBridge rule ``udop-<name>-after`` from
``udop deploy``, the deployer (an S3 upload) and ``POST /pipelines`` on Step Functions; the rule
matches the upstream state machine's SUCCEEDED status changes only; the event, as the rule's input
transformer hands it to the run-events function (our real handler), starts exactly one downstream
execution, however often it is delivered, and that execution runs to success with the upstream run
as its parameter and logical date."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aws_support import in_process_only, load_event

from udop.schedule.afterevents import TARGET_ID

pytestmark = [pytest.mark.aws, pytest.mark.redis, pytest.mark.slow]


def _definition(name: str, log_dir: str, trigger: str = "", params: str = "") -> str:
    return textwrap.dedent(f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: {name}}}
        spec:
          {params}
          {trigger}
          tasks:
            - {{id: numbers, type: python, callable: "udop_aws_test_tasks:numbers",
               args: {{n: 2, log_dir: "{log_dir}"}}}}
        """)


REPORT_TRIGGER = "trigger: {after: {pipeline: ingest, param: upstream_run}}"
REPORT_PARAMS = "params: {upstream_run: {type: str, default: none}, region: {type: str, default: eu}}"


@pytest.fixture
def env(moto_aws: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`udop deploy`'s settings: the stack's outputs, the run-events function as the starter."""
    for key, value in {
        "UDOP_DEFINITIONS_BUCKET": moto_aws.definitions_bucket,
        "UDOP_DATA_BUCKET": moto_aws.data_bucket,
        "UDOP_TASK_RUNNER_ARN": moto_aws.task_runner_arn,
        "UDOP_STATE_MACHINE_ROLE_ARN": moto_aws.role_arn,
        "UDOP_TRIGGER_FUNCTION_ARN": moto_aws.run_events_arn,
        "UDOP_DATABASE_URL": moto_aws.database_url,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("UDOP_SCHEDULER_ROLE_ARN", raising=False)
    return moto_aws


def _deploy(cli: Any, tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    code, out, err = cli("deploy", str(path))
    assert code == 0, err
    return str(out)


def _status_event(sfn: Any, execution_arn: str, status: str) -> dict[str, Any]:
    """What EventBridge carries for the execution (input included, as Step Functions sends it)."""
    desc = sfn.describe_execution(executionArn=execution_arn)
    event = load_event(
        "sfn_execution_status_change.json",
        execution_arn=execution_arn,
        state_machine_arn=desc["stateMachineArn"],
        name=desc["name"],
        status=status,
        account=desc["stateMachineArn"].split(":")[4],
    )
    event["detail"]["input"] = desc["input"]
    return event


def _as_starter_gets_it(events: Any, rule: str, event: dict[str, Any]) -> str:
    """The starter's input: the rule's input transformer applied to the event."""
    [target] = events.list_targets_by_rule(Rule=rule)["Targets"]
    assert target["Id"] == TARGET_ID
    return str(target["InputTransformer"]["InputTemplate"].replace("<aws.events.event>", json.dumps(event)))


def _through_rule(env: Any, rule: str, sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of ``sent`` that ``rule`` delivers (put on the default bus; a queue captures them)."""
    import uuid

    events, sqs = env.client("events"), env.client("sqs")
    url = sqs.create_queue(QueueName=f"capture-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    [starter] = events.list_targets_by_rule(Rule=rule)["Targets"]
    events.remove_targets(Rule=rule, Ids=[starter["Id"]])
    events.put_targets(Rule=rule, Targets=[{"Id": "capture", "Arn": arn}])
    try:
        events.put_events(
            Entries=[
                {
                    "Source": e["source"],
                    "DetailType": e["detail-type"],
                    "Resources": e["resources"],
                    "Detail": json.dumps(e["detail"]),
                }
                for e in sent
            ]
        )
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    finally:
        events.remove_targets(Rule=rule, Ids=["capture"])
        events.put_targets(Rule=rule, Targets=[starter])
    return [json.loads(m["Body"]) for m in got]


@in_process_only
def test_a_succeeded_upstream_run_starts_the_downstream_pipeline_once(
    env: Any, cli: Any, store: Any, tmp_path: Path
) -> None:
    from udop.aws.runs import start_run
    from udop.spec.loader import load_pipeline

    sfn, events, lam = env.client("stepfunctions"), env.client("events"), env.client("lambda")
    ingest_out = _deploy(cli, tmp_path, "ingest", _definition("ingest", env.log_root))
    ingest_arn = ingest_out.split("-> ", 1)[1].splitlines()[0].strip()
    out = _deploy(cli, tmp_path, "report", _definition("report", env.log_root, REPORT_TRIGGER, REPORT_PARAMS))
    assert "report: after-trigger rule created" in out
    report_arn = out.split("-> ", 1)[1].splitlines()[0].strip()

    rule = events.describe_rule(Name="udop-report-after")
    pattern = json.loads(rule["EventPattern"])
    assert pattern == {
        "source": ["aws.states"],
        "detail-type": ["Step Functions Execution Status Change"],
        "detail": {"status": ["SUCCEEDED"], "stateMachineArn": [ingest_arn]},
    }
    [target] = events.list_targets_by_rule(Rule="udop-report-after")["Targets"]
    assert target["Arn"] == env.run_events_arn

    # the upstream runs for real, with a logical date
    logical = datetime(2024, 3, 1, tzinfo=UTC)
    upstream_run, execution_arn, _ = start_run(
        load_pipeline(tmp_path / "ingest.yaml"), {}, store=store, sfn=sfn, logical_date=logical
    )
    assert env.wait_execution(execution_arn)["status"] == "SUCCEEDED"

    # what the rule lets through, on moto's bus: a queue stands in for the starter while events are put
    # (moto cannot invoke a Lambda target), then the starter is put back
    succeeded = _status_event(sfn, execution_arn, "SUCCEEDED")
    failed = _status_event(sfn, execution_arn, "FAILED")
    another = {**succeeded, "detail": {**succeeded["detail"], "stateMachineArn": report_arn}}
    delivered = _through_rule(env, "udop-report-after", [succeeded, failed, another])
    assert [e["detail"]["status"] for e in delivered] == ["SUCCEEDED"]
    assert delivered[0]["detail"]["stateMachineArn"] == ingest_arn

    payload = _as_starter_gets_it(events, "udop-report-after", delivered[0])
    answers = [
        json.loads(lam.invoke(FunctionName=env.run_events_arn, Payload=payload)["Payload"].read())
        for _ in range(2)
    ]  # EventBridge delivers at least once: the second changes nothing
    assert [a["started"] for a in answers] == [True, False], answers
    [downstream] = sfn.list_executions(stateMachineArn=report_arn)["executions"]
    assert downstream["name"] == answers[0]["execution_name"]
    run = json.loads(sfn.describe_execution(executionArn=downstream["executionArn"])["input"])["run"]
    assert run["params"] == {"upstream_run": upstream_run, "region": "eu"}
    assert datetime.fromisoformat(run["logical_date"]) == logical
    assert run["trigger"] == "trigger" and run["trigger_run"]["run_id"] == upstream_run
    assert env.wait_execution(downstream["executionArn"])["status"] == "SUCCEEDED"
    assert env.calls("numbers", downstream["name"]) == 1

    # the definition drops the trigger: the rule goes
    out = _deploy(cli, tmp_path, "report", _definition("report", env.log_root, "", REPORT_PARAMS))
    assert "report: after-trigger rule deleted" in out
    with pytest.raises(events.exceptions.ResourceNotFoundException):
        events.describe_rule(Name="udop-report-after")


def test_the_deployer_and_the_api_keep_the_rule_and_a_delete_removes_it(
    env: Any, store: Any, tmp_path: Path
) -> None:
    from udop.aws.deployer import deploy_s3_object
    from udop.schedule.aws import forget_pipeline

    s3, events = env.client("s3"), env.client("events")
    key = "pipelines/report.yaml"
    s3.put_object(
        Bucket=env.definitions_bucket,
        Key=key,
        Body=_definition("report", env.log_root, REPORT_TRIGGER, REPORT_PARAMS).encode(),
    )
    result = deploy_s3_object(
        env.definitions_bucket,
        key,
        s3=s3,
        sfn=env.client("stepfunctions"),
        store=store,
        task_runner_arn=env.task_runner_arn,
        role_arn=env.role_arn,
    )
    assert result is not None and result.ok, result
    assert result.after_trigger in ("created", "updated")  # the upload's notification ran the function first
    ingest_arn = result.state_machine_arn.replace(":udop-report", ":udop-ingest")
    rule = events.describe_rule(Name="udop-report-after")
    assert json.loads(rule["EventPattern"])["detail"]["stateMachineArn"] == [ingest_arn]
    forget_pipeline("stepfunctions", "report")  # DELETE /pipelines/report on a Step Functions API
    with pytest.raises(events.exceptions.ResourceNotFoundException):
        events.describe_rule(Name="udop-report-after")

    # POST /pipelines on Step Functions: the API's launcher deploys through the same path
    from udop.api import ApiSettings
    from udop.api.stepfunctions import StepFunctionsLauncher
    from udop.spec.loader import load_pipeline

    settings = ApiSettings(
        database_url=env.database_url,
        jwt_secret="x" * 32,
        executor="stepfunctions",
        definitions_bucket=env.definitions_bucket,
        data_bucket=env.data_bucket,
        task_runner_arn=env.task_runner_arn,
        state_machine_role_arn=env.role_arn,
    )
    launcher = StepFunctionsLauncher(store, settings, sfn=env.client("stepfunctions"), s3=s3)
    text = _definition("report", env.log_root, REPORT_TRIGGER, REPORT_PARAMS)
    launcher.register(load_pipeline(text, filename="report.yaml"), text.encode(), "report.yaml")
    [target] = events.list_targets_by_rule(Rule="udop-report-after")["Targets"]
    assert target["Arn"] == env.run_events_arn
    assert (
        json.loads(target["InputTransformer"]["InputTemplate"].replace("<aws.events.event>", "{}"))[
            "udop_after_trigger"
        ]["upstream_state_machine_arn"]
        == ingest_arn
    )


def test_an_after_trigger_that_cannot_supply_a_parameter_deploys_nothing(
    env: Any, cli: Any, tmp_path: Path
) -> None:
    path = tmp_path / "report.yaml"
    path.write_text(
        _definition(
            "report", env.log_root, REPORT_TRIGGER, "params: {upstream_run: {type: str}, region: {type: str}}"
        )
    )
    code, _, err = cli("deploy", str(path))
    assert code == 2 and "an after-trigger cannot supply required parameter(s) region" in err, err
    assert env.client("events").list_rules(NamePrefix="udop-")["Rules"] == []
