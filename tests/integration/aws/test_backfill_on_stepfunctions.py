"""``udop backfill --executor stepfunctions`` on moto (Step Functions executing the compiled machine,
our task runner): one execution per logical date, tracked as one backfill; a resume redrives the
failed executions from their failed states."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from udop.aws.runs import deploy_file
from udop.schedule.backfill import parse_date
from udop.schedule.sfn_backfill import StepFunctionsBackfillRunner
from udop.spec.loader import load_pipeline

pytestmark = [pytest.mark.aws, pytest.mark.redis, pytest.mark.slow]


def test_a_backfill_runs_one_execution_per_date_and_resume_redrives_the_failed_ones(
    moto_aws: Any, store: Any, tmp_path: Path
) -> None:
    log_dir, flag = moto_aws.log_root, moto_aws.flag("fault")
    moto_aws.set_flag(flag, True)
    path = tmp_path / "daily.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: daily}}
        spec:
          tasks:
            - {{id: numbers, type: python, callable: "udop_aws_test_tasks:numbers",
               args: {{n: 3, log_dir: "{log_dir}"}}}}
            - {{id: big, type: python, callable: "udop_aws_test_tasks:fails_while", depends_on: [numbers],
               args: {{flag: "{flag}", log_dir: "{log_dir}"}}}}
        """))
    sfn = moto_aws.client("stepfunctions")
    result = deploy_file(str(path), definitions_bucket=moto_aws.definitions_bucket,
                         task_runner_arn=moto_aws.task_runner_arn, role_arn=moto_aws.role_arn, store=store,
                         s3=moto_aws.client("s3"), sfn=sfn)
    assert result.ok, result.errors
    runner = StepFunctionsBackfillRunner(store, load_pipeline(path), sfn=sfn, poll=0.05, watch_seconds=0.1)
    record = runner.create(start=parse_date("2024-01-01", what="--from"),
                           end=parse_date("2024-01-03", what="--to"), step="1d", max_parallel=2,
                           executor="stepfunctions")
    failed = runner.run(record.id)
    assert failed.state == "failed" and failed.counts() == {"failed": 3}
    runs = {r.logical_date: r for r in store.list_runs(pipeline="daily")}
    assert sorted(runs) == [datetime(2024, 1, d, tzinfo=UTC) for d in (1, 2, 3)]
    assert {r.executor for r in runs.values()} == {"stepfunctions"}
    executions = sfn.list_executions(stateMachineArn=result.state_machine_arn)["executions"]
    assert sorted(e["name"] for e in executions) == sorted(r.id for r in runs.values())

    moto_aws.set_flag(flag, False)  # fixed: the resume redrives each failed execution
    done = runner.run(record.id, resume=True)
    assert done.state == "succeeded" and done.counts() == {"succeeded": 3}
    for run_id in done.dates.values():
        assert run_id is not None
        assert moto_aws.calls("numbers", run_id) == 1  # not run again
        assert moto_aws.calls("big", run_id) == 2
    # no new run was started: every execution is one of the three runs (moto lists redrives apart)
    names = [e["name"] for e in sfn.list_executions(stateMachineArn=result.state_machine_arn)["executions"]]
    assert {n.split("--redrive")[0] for n in names} == set(done.dates.values())
    assert len(store.list_runs(pipeline="daily")) == 3


def test_cancelling_a_backfill_stops_its_execution_and_starts_no_more(
    moto_aws: Any, store: Any, tmp_path: Path
) -> None:
    import threading
    import time

    from udop.schedule.backfill import cancel_backfill

    log_dir, flag = moto_aws.log_root, moto_aws.flag("hold")
    moto_aws.set_flag(flag, True)
    path = tmp_path / "slow.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: slow}}
        spec:
          tasks:
            - {{id: busy, type: python, callable: "udop_aws_test_tasks:held",
               args: {{flag: "{flag}", log_dir: "{log_dir}"}}}}
        """))
    sfn = moto_aws.client("stepfunctions")
    result = deploy_file(str(path), definitions_bucket=moto_aws.definitions_bucket,
                         task_runner_arn=moto_aws.task_runner_arn, role_arn=moto_aws.role_arn, store=store,
                         s3=moto_aws.client("s3"), sfn=sfn)
    assert result.ok, result.errors
    # polls a little slower than it could: moto serialises an execution's history while its interpreter
    # thread may still be writing an event; a read at that moment once failed inside moto (TypeError)
    runner = StepFunctionsBackfillRunner(store, load_pipeline(path), sfn=sfn, poll=0.2, watch_seconds=0.1)
    record = runner.create(start=parse_date("2024-01-01", what="--from"),
                           end=parse_date("2024-01-03", what="--to"), step="1d", max_parallel=1,
                           executor="stepfunctions")
    finals: list[Any] = []
    thread = threading.Thread(target=lambda: finals.append(runner.run(record.id)))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not sfn.list_executions(stateMachineArn=result.state_machine_arn)["executions"]:
            assert time.monotonic() < deadline, "no execution started"
            time.sleep(0.05)
        cancel_backfill(store, record.id)  # from "another process": the runner watches the row
        deadline = time.monotonic() + 60
        while not (runner._active and all(e.stopped for e in runner._active.values())):
            assert time.monotonic() < deadline, "the runner did not act on the cancel"
            time.sleep(0.05)
    finally:
        # moto ends a stopped execution once its running task returns: let it return
        moto_aws.set_flag(flag, False)
        thread.join(timeout=120)
    [execution] = sfn.list_executions(stateMachineArn=result.state_machine_arn)["executions"]
    assert moto_aws.wait_stopped(execution["executionArn"]) == "ABORTED"
    [final] = finals
    assert final.state == "cancelled"
    assert final.counts() == {"cancelled": 1, "not started": 2}
    assert len(sfn.list_executions(stateMachineArn=result.state_machine_arn)["executions"]) == 1
