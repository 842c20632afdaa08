"""Alerts on AWS: a failed Step Functions execution, recorded by the run-events path, publishes the
failure to the pipeline's SNS topic (moto: SNS -> SQS subscription read back)."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from udop.aws.runs import deploy_file
from udop.states import RunState

pytestmark = [pytest.mark.aws, pytest.mark.redis, pytest.mark.slow]


def _topic_with_queue(aws: Any) -> tuple[str, Any, str]:
    sns, sqs = aws.client("sns"), aws.client("sqs")
    topic = sns.create_topic(Name=f"udop-alerts-{uuid.uuid4().hex[:8]}")["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"udop-alerts-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn,
                  Attributes={"RawMessageDelivery": "true"})
    return topic, sqs, queue_url


def test_a_failed_execution_publishes_its_failure_to_sns(moto_aws: Any, store: Any, tmp_path: Path) -> None:
    from udop.aws.events import record_status_event
    from udop.aws.runs import start_run
    from udop.spec.loader import load_pipeline

    topic, sqs, queue_url = _topic_with_queue(moto_aws)
    fault = moto_aws.flag("fault")
    moto_aws.set_flag(fault, True)
    path = tmp_path / "alerting.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: alerting}}
        spec:
          alerts:
            on_failure: [{{sns: "{topic}"}}]
          tasks:
            - {{id: bad, type: python, callable: "udop_aws_test_tasks:fails_while",
               args: {{flag: "{fault}", log_dir: "{moto_aws.log_root}"}}}}
        """))
    result = deploy_file(str(path), definitions_bucket=moto_aws.definitions_bucket,
                         task_runner_arn=moto_aws.task_runner_arn, role_arn=moto_aws.role_arn, store=store,
                         s3=moto_aws.client("s3"), sfn=moto_aws.client("stepfunctions"))
    assert result.ok, result.errors
    sfn = moto_aws.client("stepfunctions")
    run_id, arn, sm_arn = start_run(load_pipeline(str(path)), {}, store=store, sfn=sfn)
    assert moto_aws.wait_execution(arn)["status"] == "FAILED"
    event = {"detail": {"executionArn": arn, "stateMachineArn": sm_arn, "name": run_id, "status": "FAILED"}}
    run = record_status_event(event, store=store, sfn=sfn)
    assert run.state == RunState.FAILED
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    assert len(messages) == 1
    body = json.loads(messages[0]["Body"])
    assert body["udop"]["event"] == "failure"
    assert body["udop"]["run_id"] == run_id
    assert body["udop"]["task"] == "bad"
    assert body["text"].startswith(f"udop: run {run_id} of alerting failed at task bad")
    # a second status event for the same ended run sends nothing more
    record_status_event(event, store=store, sfn=sfn)
    assert "Messages" not in sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
