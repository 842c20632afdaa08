"""The anomaly check on AWS: runs on Step Functions, recorded by the run-events path, are compared with
the pipeline's recent successful runs; an outlier is recorded with the run and published to SNS."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from tests.integration.aws.test_alerts_sns import _topic_with_queue

from udop.states import RunState

pytestmark = [pytest.mark.aws, pytest.mark.redis, pytest.mark.slow]


def _run_with_rows(aws: Any, store: Any, tmp_path: Path, topic: str, n: int) -> Any:
    from udop.aws.events import record_status_event
    from udop.aws.runs import deploy_file, start_run
    from udop.spec.loader import load_pipeline

    path = tmp_path / "counted.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: counted}}
        spec:
          alerts:
            anomaly: {{last: 10, min_runs: 3, k: 4, metrics: [rows, duration], notify: [{{sns: "{topic}"}}]}}
          tasks:
            - {{id: numbers, type: python, callable: "udop_aws_test_tasks:numbers",
               args: {{n: {n}, log_dir: "{aws.log_root}"}}}}
        """))
    sfn, s3 = aws.client("stepfunctions"), aws.client("s3")
    result = deploy_file(str(path), definitions_bucket=aws.definitions_bucket, task_runner_arn=aws.task_runner_arn,
                         role_arn=aws.role_arn, store=store, s3=s3, sfn=sfn)
    assert result.ok, result.errors
    run_id, arn, sm_arn = start_run(load_pipeline(str(path)), {}, store=store, sfn=sfn)
    assert aws.wait_execution(arn)["status"] == "SUCCEEDED"
    event = {"detail": {"executionArn": arn, "stateMachineArn": sm_arn, "name": run_id, "status": "SUCCEEDED"}}
    run = record_status_event(event, store=store, sfn=sfn, s3=s3, data_bucket=aws.data_bucket)
    assert run.state == RunState.SUCCEEDED, "an anomaly is a warning, not a failure"
    return run


def _recorded_past_run(store: Any, rows: int) -> None:
    """A successful earlier run of the pipeline as the run-events path records one (the history the
    check reads is the metadata store's)."""
    from datetime import UTC, datetime

    from udop.executor.local import new_run_id
    from udop.states import AttemptState, TaskState

    version = store.get_pipeline("counted").latest.version
    run_id = new_run_id()
    store.create_run(run_id=run_id, pipeline="counted", pipeline_version=version, task_ids=["numbers"],
                     params={}, logical_date=datetime.now(UTC), executor="stepfunctions")
    store.set_run_state(run_id, RunState.RUNNING)
    store.start_attempt(run_id, "numbers", 1)
    store.finish_attempt(run_id, "numbers", 1, attempt_state=AttemptState.SUCCEEDED,
                         task_state=TaskState.SUCCEEDED, result={"output": {"uri": "s3://b/k/", "rows": rows}})
    store.set_run_state(run_id, RunState.SUCCEEDED)


def test_a_step_functions_run_whose_rows_leave_the_band_is_flagged_recorded_and_published(
    moto_aws: Any, store: Any, tmp_path: Path
) -> None:
    topic, sqs, queue_url = _topic_with_queue(moto_aws)
    normal = _run_with_rows(moto_aws, store, tmp_path, topic, 100)
    assert [c for c in store.get_checks(normal.id) if c.rule.startswith("anomaly")] == [], \
        "no verdict before min_runs earlier runs"
    for rows in (101, 99):
        _recorded_past_run(store, rows)

    outlier = _run_with_rows(moto_aws, store, tmp_path, topic, 3)
    checks = [c for c in store.get_checks(outlier.id) if c.rule.startswith("anomaly")]
    assert [c.rule for c in checks] == ["anomaly:rows"], \
        "rows only: on AWS the stored task times are when the run events recorded them"
    (flagged,) = checks
    assert not flagged.passed and flagged.severity == "warn" and flagged.task_id == "numbers"
    assert "rows 3 rows is outside the band" in flagged.message
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    bodies = [json.loads(m["Body"]) for m in messages]
    assert [(b["udop"]["event"], b["udop"]["run_id"], b["udop"]["task"]) for b in bodies] == [
        ("anomaly", outlier.id, "numbers")]
