"""End to end on emulated AWS: deploy -> Step Functions executes the compiled definition -> the task
runner runs the tasks -> run records in the metadata store. Same pipeline locally for comparison."""

from __future__ import annotations

import io
import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from udop.aws.runs import deploy_file
from udop.cli.aws import redrive_and_follow, run_on_stepfunctions
from udop.states import AttemptState, RunState, TaskState

pytestmark = [pytest.mark.aws, pytest.mark.redis, pytest.mark.slow]

N = 30


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _flow(tmp_path: Path, log_dir: str) -> Path:
    return _write(
        tmp_path,
        "flow",
        f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: flow}}
        spec:
          tasks:
            - {{id: numbers, type: python, callable: "udop_aws_test_tasks:numbers",
               args: {{n: {N}, log_dir: "{log_dir}"}}}}
            - {{id: by_two, type: python, callable: "udop_aws_test_tasks:scaled", depends_on: [numbers],
               args: {{source: numbers, factor: 2, log_dir: "{log_dir}"}}}}
            - {{id: by_five, type: python, callable: "udop_aws_test_tasks:scaled", depends_on: [numbers],
               args: {{source: numbers, factor: 5, log_dir: "{log_dir}"}}}}
            - {{id: totals, type: python, callable: "udop_aws_test_tasks:joined",
               depends_on: [by_two, by_five],
               args: {{log_dir: "{log_dir}"}}}}
        """,
    )


def _deploy(aws: Any, store: Any, path: Path) -> Any:
    result = deploy_file(
        str(path),
        definitions_bucket=aws.definitions_bucket,
        task_runner_arn=aws.task_runner_arn,
        role_arn=aws.role_arn,
        store=store,
        s3=aws.client("s3"),
        sfn=aws.client("stepfunctions"),
    )
    assert result.ok, result.errors
    return result


def _run(aws: Any, store: Any, path: Path, params: dict[str, Any] | None = None) -> tuple[int, Any]:
    code = run_on_stepfunctions(
        str(path), params or {}, store=store, sfn=aws.client("stepfunctions"), poll=0.05
    )
    runs = store.list_runs(pipeline=path.stem, limit=1)
    return code, runs[0]


def _read_s3_table(aws: Any, uri: str) -> Any:
    s3 = aws.client("s3")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    assert [k for k in keys if k.endswith(".parquet")], keys
    tables = [
        pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=k)["Body"].read()))
        for k in sorted(keys)
        if k.endswith(".parquet")
    ]
    import pyarrow as pa

    return pa.concat_tables(tables)


def test_same_rows_locally_and_through_step_functions(moto_aws: Any, store: Any, tmp_path: Path) -> None:
    from udop.executor.local import LocalExecutor
    from udop.spec.loader import load_pipeline
    from udop.store import open_store
    from udop.tasks.contract import Manifest

    log_dir = moto_aws.log_root
    path = _flow(tmp_path, log_dir)
    _deploy(moto_aws, store, path)
    code, run = _run(moto_aws, store, path)
    assert code == 0, run.error
    assert run.state == RunState.SUCCEEDED
    assert run.executor == "stepfunctions"
    assert run.external_id.endswith(f":{run.id}")
    tasks = (
        {t.task_id: t for t in run.tasks}
        if run.tasks
        else {t.task_id: t for t in store.get_run(run.id).tasks}
    )
    assert {t: r.state for t, r in tasks.items()} == dict.fromkeys(
        ["numbers", "by_two", "by_five", "totals"], TaskState.SUCCEEDED
    )
    uri = tasks["totals"].result["output"]["uri"]
    assert uri == f"s3://{moto_aws.data_bucket}/runs/flow/{run.id}/totals/"
    aws_rows = _read_s3_table(moto_aws, uri).to_pylist()

    local_store = open_store(f"sqlite:///{tmp_path / 'local.db'}")
    local = LocalExecutor(local_store, workers=2, data_root=str(tmp_path / "local-data")).run(
        load_pipeline(str(path)), params={}
    )
    assert local.state == RunState.SUCCEEDED
    local_result = next(t for t in local_store.get_run(local.id).tasks if t.task_id == "totals").result
    local_rows = Manifest.from_dict(local_result["output"]).to_arrow().to_pylist()
    local_store.close()

    # independent of both: ids 1..N, value id*2 and id*5, summed per id % 3
    expected = [
        {"grp": g, "total": sum(i * 2 + i * 5 for i in range(1, N + 1) if i % 3 == g)} for g in range(3)
    ]
    assert aws_rows == expected
    assert local_rows == expected


def test_a_task_that_fails_twice_is_retried_by_the_state_machine(
    moto_aws: Any, store: Any, tmp_path: Path
) -> None:
    log_dir = moto_aws.log_root
    path = _write(
        tmp_path,
        "retries",
        f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: retries}}
        spec:
          defaults: {{retry: {{max_attempts: 3, base_delay: 1s, backoff_rate: 1.0, max_delay: 1s}}}}
          tasks:
            - {{id: flaky, type: python, callable: "udop_aws_test_tasks:flaky",
               args: {{fail_times: 2, log_dir: "{log_dir}"}}}}
        """,
    )
    _deploy(moto_aws, store, path)
    code, run = _run(moto_aws, store, path)
    assert code == 0, run.error
    assert moto_aws.calls("flaky", run.id) == 3
    task = store.get_run(run.id).tasks[0]
    assert task.state == TaskState.SUCCEEDED
    assert [a.state for a in task.attempts] == [
        AttemptState.FAILED,
        AttemptState.FAILED,
        AttemptState.SUCCEEDED,
    ]
    assert [a.error_type for a in task.attempts[:2]] == ["udop.RetryableError"] * 2
    assert "transient failure number 2" in (task.attempts[1].error_message or "")


def test_a_failing_task_fails_the_run_and_redrive_finishes_it_without_rerunning_succeeded_tasks(
    moto_aws: Any, store: Any, tmp_path: Path
) -> None:
    log_dir = moto_aws.log_root
    flag = moto_aws.flag("fault")
    moto_aws.set_flag(flag, True)
    path = _write(
        tmp_path,
        "faulty",
        f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: faulty}}
        spec:
          defaults: {{retry: {{max_attempts: 2, base_delay: 1s, backoff_rate: 1.0}}}}
          tasks:
            - {{id: numbers, type: python, callable: "udop_aws_test_tasks:numbers",
               args: {{n: 5, log_dir: "{log_dir}"}}}}
            - {{id: big, type: python, callable: "udop_aws_test_tasks:fails_while", depends_on: [numbers],
               args: {{flag: "{flag}", log_dir: "{log_dir}"}}}}
            - {{id: report, type: python, callable: "udop_aws_test_tasks:scaled", depends_on: [big],
               args: {{source: big, factor: 10, log_dir: "{log_dir}"}}}}
        """,
    )
    _deploy(moto_aws, store, path)
    code, run = _run(moto_aws, store, path)
    assert code == 1
    assert run.state == RunState.FAILED
    assert "fault flag" in (run.error or "")
    tasks = {t.task_id: t for t in store.get_run(run.id).tasks}
    assert tasks["numbers"].state == TaskState.SUCCEEDED
    assert tasks["big"].state == TaskState.FAILED
    assert tasks["big"].error_type == "udop.FatalError"  # not retried: a fatal error
    assert len(tasks["big"].attempts) == 1
    assert tasks["report"].state == TaskState.UPSTREAM_FAILED
    assert moto_aws.calls("big", run.id) == 1

    moto_aws.set_flag(flag, False)  # the fault is fixed
    code = redrive_and_follow(run.id, store=store, sfn=moto_aws.client("stepfunctions"), poll=0.05)
    assert code == 0
    after = store.get_run(run.id)
    assert after.state == RunState.SUCCEEDED
    assert {t.task_id: t.state for t in after.tasks} == dict.fromkeys(
        ["numbers", "big", "report"], TaskState.SUCCEEDED
    )
    assert moto_aws.calls("numbers", run.id) == 1  # not run again
    assert moto_aws.calls("big", run.id) == 2
    assert moto_aws.calls("report", run.id) == 1
    report = next(t for t in after.tasks if t.task_id == "report")
    rows = _read_s3_table(moto_aws, report.result["output"]["uri"]).to_pylist()
    assert [r["value"] for r in rows] == [30, 40, 50]  # ids 3..5 (id > 2) times 10


def test_uploading_definitions_deploys_good_ones_and_keeps_the_old_machine_on_broken_ones(
    moto_aws: Any, store: Any, tmp_path: Path
) -> None:
    log_dir = moto_aws.log_root
    s3 = moto_aws.client("s3")
    sfn = moto_aws.client("stepfunctions")
    good = _flow(tmp_path, log_dir).read_text()
    # moto delivers the key URL-encoded (pipelines%2Fflow.yaml), as S3 does: the deployer decodes it
    s3.put_object(Bucket=moto_aws.definitions_bucket, Key="pipelines/flow.yaml", Body=good.encode())
    status = moto_aws.status("flow")
    assert status["ok"] is True, status
    assert status["version"] == 1
    machine = sfn.describe_state_machine(stateMachineArn=status["state_machine_arn"])
    assert machine["name"] == "udop-flow"
    # the same logging and tracing as the machines the CDK app deploys (orchestration.py)
    logging = machine["loggingConfiguration"]
    assert logging["level"] == "ALL"
    assert logging["includeExecutionData"] is True
    assert logging["destinations"][0]["cloudWatchLogsLogGroup"]["logGroupArn"] == moto_aws.log_group_arn
    assert machine["tracingConfiguration"] == {"enabled": True}
    assert store.get_pipeline("flow").latest.state_machine_arn == status["state_machine_arn"]

    broken = good.replace("depends_on: [by_two, by_five]", "depends_on: [by_two, nowhere]")
    s3.put_object(Bucket=moto_aws.definitions_bucket, Key="pipelines/flow.yaml", Body=broken.encode())
    report = moto_aws.status("flow", previous=status)
    assert report["ok"] is False
    assert any("nowhere" in e["message"] and "depends_on" in (e["path"] or "") for e in report["errors"]), (
        report
    )
    assert (
        sfn.describe_state_machine(stateMachineArn=status["state_machine_arn"])["definition"]
        == machine["definition"]
    )
    assert store.get_pipeline("flow").latest.version == 1

    # the old machine still runs
    path = tmp_path / "flow.yaml"
    code, run = _run(moto_aws, store, path)
    assert code == 0, run.error


def test_redeploying_turns_on_logging_and_tracing_of_a_machine_created_without_them(
    moto_aws: Any, store: Any, tmp_path: Path
) -> None:
    s3 = moto_aws.client("s3")
    sfn = moto_aws.client("stepfunctions")
    # as an older deployer left it: no execution data logged, no X-Ray
    old = sfn.create_state_machine(
        name="udop-flow",
        definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
        roleArn=moto_aws.role_arn,
        loggingConfiguration={"level": "ERROR", "includeExecutionData": False, "destinations": [
            {"cloudWatchLogsLogGroup": {"logGroupArn": moto_aws.log_group_arn}}]},
    )["stateMachineArn"]
    text = _flow(tmp_path, moto_aws.log_root).read_text()
    s3.put_object(Bucket=moto_aws.definitions_bucket, Key="pipelines/flow.yaml", Body=text.encode())
    status = moto_aws.status("flow")
    assert status["ok"] is True, status
    assert status["state_machine_arn"] == old  # updated in place, not a second machine
    machine = sfn.describe_state_machine(stateMachineArn=old)
    assert "numbers" in json.loads(machine["definition"])["States"]  # the pipeline's definition now
    assert machine["loggingConfiguration"]["level"] == "ALL"
    assert machine["loggingConfiguration"]["includeExecutionData"] is True
    assert machine["tracingConfiguration"] == {"enabled": True}


def test_run_events_function_records_aws_runs_in_the_metadata_store(
    moto_aws: Any, store: Any, tmp_path: Path
) -> None:
    from aws_support import load_event

    from udop.aws.runs import start_run
    from udop.spec.loader import load_pipeline

    log_dir = moto_aws.log_root
    path = _flow(tmp_path, log_dir)
    _deploy(moto_aws, store, path)
    sfn = moto_aws.client("stepfunctions")
    run_id, execution_arn, sm_arn = start_run(load_pipeline(str(path)), {}, store=store, sfn=sfn)
    final = moto_aws.wait_execution(execution_arn)
    assert final["status"] == "SUCCEEDED"
    assert store.get_run(run_id) is None  # nothing recorded it yet

    event = load_event(
        "sfn_execution_status_change.json",
        execution_arn=execution_arn,
        state_machine_arn=sm_arn,
        name=run_id,
        status="SUCCEEDED",
        account=sm_arn.split(":")[4],
    )
    resp = moto_aws.client("lambda").invoke(FunctionName=moto_aws.run_events_arn, Payload=json.dumps(event))
    body = json.loads(resp["Payload"].read())
    assert resp.get("FunctionError") is None, body
    assert body == {"run_id": run_id, "state": "succeeded"}
    run = store.get_run(run_id)
    assert run.executor == "stepfunctions"
    assert run.external_id == execution_arn
    assert [(t.state, len(t.attempts)) for t in run.tasks] == [(TaskState.SUCCEEDED, 1)] * 4
    assert [r.id for r in store.list_runs(pipeline="flow")] == [run_id]
    # the same event again changes nothing
    moto_aws.client("lambda").invoke(FunctionName=moto_aws.run_events_arn, Payload=json.dumps(event))
    assert [len(t.attempts) for t in store.get_run(run_id).tasks] == [1, 1, 1, 1]


def test_run_events_takes_the_run_id_from_the_input_of_executions_it_did_not_name(
    moto_aws: Any, store: Any, tmp_path: Path
) -> None:
    """A schedule starts executions with generated names; the run id comes from the input."""
    from aws_support import load_event

    log_dir = moto_aws.log_root
    path = _flow(tmp_path, log_dir)
    deployed = _deploy(moto_aws, store, path)
    sfn = moto_aws.client("stepfunctions")
    run_id = f"scheduled-{uuid.uuid4().hex[:12]}"  # unique: idempotency records outlive the test in Redis
    run_input = {"run": {"run_id": run_id, "params": {}, "logical_date": "2026-01-02T06:00:00+00:00",
                         "trigger": "schedule"}}
    arn = sfn.start_execution(stateMachineArn=deployed.state_machine_arn, name="0b9d2c5e-generated",
                              input=json.dumps(run_input))["executionArn"]
    assert moto_aws.wait_execution(arn)["status"] == "SUCCEEDED"
    event = load_event("sfn_execution_status_change.json", execution_arn=arn,
                       state_machine_arn=deployed.state_machine_arn, name="0b9d2c5e-generated",
                       status="SUCCEEDED", account=arn.split(":")[4])
    resp = moto_aws.client("lambda").invoke(FunctionName=moto_aws.run_events_arn, Payload=json.dumps(event))
    body = json.loads(resp["Payload"].read())
    assert resp.get("FunctionError") is None, body
    run = store.get_run(run_id)
    assert run is not None
    assert run.state == RunState.SUCCEEDED
    assert run.external_id == arn
    assert run.logical_date.isoformat().startswith("2026-01-02T06:00")
    assert {t.state for t in run.tasks} == {TaskState.SUCCEEDED}
    assert moto_aws.calls("totals", run_id) == 1


def test_a_split_pipeline_deploys_its_child_machines_first_with_their_arns_filled_in(
    moto_aws: Any, store: Any, tmp_path: Path
) -> None:
    """moto cannot execute ``startExecution.sync:2`` (see tests/unit/compiler), so this checks the
    deployment only: every machine exists and no ``${...}`` substitution is left in any definition."""
    from udop.aws.deployer import deploy_definition
    from udop.compiler import CompileOptions, compile_pipeline

    def task(i: int) -> str:
        after = f", depends_on: [t{i - 1}]" if i else ""
        return (f"    - {{id: t{i}, type: python, callable: 'udop_aws_test_tasks:numbers', "
                f"args: {{n: 1, log_dir: '{moto_aws.log_root}'}}{after}}}")

    tasks = "\n".join(task(i) for i in range(12))
    text = f"apiVersion: udop/v1\nkind: Pipeline\nmetadata: {{name: chain}}\nspec:\n  tasks:\n{tasks}\n"
    sfn = moto_aws.client("stepfunctions")
    result = deploy_definition(
        text, source="pipelines/chain.yaml", bucket=moto_aws.definitions_bucket, s3=moto_aws.client("s3"),
        sfn=sfn, store=store, task_runner_arn=moto_aws.task_runner_arn, role_arn=moto_aws.role_arn,
        compile_fn=lambda p, version: compile_pipeline(
            p, options=CompileOptions(version=version, max_history_events=40)),
    )
    assert result.ok, result.errors
    machines = {m["name"]: m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]}
    children = sorted(n for n in machines if n.startswith("udop-chain-"))
    assert len(children) >= 2
    main = sfn.describe_state_machine(stateMachineArn=machines["udop-chain"])["definition"]
    assert "${" not in main
    for name in children:
        definition = sfn.describe_state_machine(stateMachineArn=machines[name])["definition"]
        assert "${" not in definition
        assert moto_aws.task_runner_arn in definition or any(machines[c] in definition for c in children)
    assert any(machines[c] in main for c in children)


def test_the_deployer_decodes_event_keys_and_ignores_its_own_status_reports(
    moto_aws: Any, store: Any, tmp_path: Path
) -> None:
    from aws_support import load_event

    text = _flow(tmp_path, moto_aws.log_root).read_bytes()
    # this put deploys it (the bucket notifies the deployer); the events below name it URL-encoded,
    # as S3 does: undecoded, "pipelines%2Fflow.yaml" would not look like a definition at all
    moto_aws.client("s3").put_object(Bucket=moto_aws.definitions_bucket, Key="pipelines/flow.yaml", Body=text)
    lam = moto_aws.client("lambda")

    def invoke(raw_key: str) -> dict[str, Any]:
        event = load_event("s3_put_definition.json", bucket=moto_aws.definitions_bucket, key=raw_key)
        resp = lam.invoke(FunctionName=moto_aws.deployer_arn, Payload=json.dumps(event))
        body = json.loads(resp["Payload"].read())
        assert resp.get("FunctionError") is None, body
        return dict(body)

    assert invoke("pipelines%2Fflow.status.json") == {"deployed": []}
    assert invoke("pipelines%2Fflow.yaml") == {
        "deployed": [{"pipeline": "flow", "ok": True, "version": 1, "errors": []}]
    }
    assert store.get_pipeline("flow").latest.version == 1


def test_a_pipeline_deployed_by_upload_runs_from_a_cli_with_its_own_store_after_udop_deploy(
    moto_aws: Any, tmp_path: Path
) -> None:
    from udop.errors import InputError
    from udop.store import open_store

    path = _flow(tmp_path, moto_aws.log_root)
    moto_aws.client("s3").put_object(Bucket=moto_aws.definitions_bucket, Key="pipelines/flow.yaml",
                                     Body=path.read_bytes())
    assert moto_aws.status("flow")["ok"] is True
    laptop = open_store(f"sqlite:///{tmp_path / 'laptop.db'}")
    try:
        with pytest.raises(InputError, match="udop deploy"):
            _run(moto_aws, laptop, path)
        again = _deploy(moto_aws, laptop, path)
        assert again.skipped  # nothing changed on AWS
        assert laptop.get_pipeline("flow").latest.state_machine_arn == again.state_machine_arn
        code, run = _run(moto_aws, laptop, path)
        assert code == 0, run.error
    finally:
        laptop.close()


def test_concurrent_status_events_for_one_run_record_it_once(
    moto_aws: Any, store: Any, tmp_path: Path
) -> None:
    """EventBridge delivers RUNNING and SUCCEEDED close together, to concurrent function instances."""
    import threading

    from udop.aws.events import record_status_event
    from udop.aws.runs import start_run
    from udop.spec.loader import load_pipeline
    from udop.store import open_store

    path = _flow(tmp_path, moto_aws.log_root)
    _deploy(moto_aws, store, path)
    sfn = moto_aws.client("stepfunctions")
    run_id, arn, sm_arn = start_run(load_pipeline(str(path)), {}, store=store, sfn=sfn)
    assert moto_aws.wait_execution(arn)["status"] == "SUCCEEDED"
    event = {"detail": {"executionArn": arn, "stateMachineArn": sm_arn, "name": run_id,
                        "status": "SUCCEEDED"}}
    errors: list[BaseException] = []

    def handle() -> None:
        own = open_store(moto_aws.database_url)  # one store per function instance
        try:
            record_status_event(event, store=own, sfn=moto_aws.client("stepfunctions"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=handle) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    run = store.get_run(run_id)
    assert run.state == RunState.SUCCEEDED
    assert [(t.state, len(t.attempts)) for t in run.tasks] == [(TaskState.SUCCEEDED, 1)] * 4


def test_a_caught_failure_shows_as_failed_while_other_branches_still_run(
    moto_aws: Any, store: Any, tmp_path: Path
) -> None:
    import time

    from udop.aws.events import sync_run
    from udop.aws.runs import start_run
    from udop.spec.loader import load_pipeline

    log_dir = moto_aws.log_root
    fault, hold = moto_aws.flag("fault"), moto_aws.flag("hold")
    moto_aws.set_flag(fault, True)
    moto_aws.set_flag(hold, True)
    path = _write(tmp_path, "branches", f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: branches}}
        spec:
          tasks:
            - {{id: numbers, type: python, callable: "udop_aws_test_tasks:numbers",
               args: {{n: 5, log_dir: "{log_dir}"}}}}
            - {{id: bad, type: python, callable: "udop_aws_test_tasks:fails_while", depends_on: [numbers],
               args: {{flag: "{fault}", log_dir: "{log_dir}"}}}}
            - {{id: busy, type: python, callable: "udop_aws_test_tasks:held", depends_on: [numbers],
               args: {{flag: "{hold}", log_dir: "{log_dir}"}}}}
        """)
    _deploy(moto_aws, store, path)
    sfn = moto_aws.client("stepfunctions")
    run_id, arn, sm_arn = start_run(load_pipeline(str(path)), {}, store=store, sfn=sfn)
    try:
        for _ in range(600):  # until the caught failure is recorded (at most about 30 s)
            run = sync_run(store, sfn, state_machine_arn=sm_arn, run_id=run_id)
            states = {t.task_id: t.state for t in run.tasks}
            if states["bad"] == TaskState.FAILED:
                break
            time.sleep(0.05)
        assert states["bad"] == TaskState.FAILED  # not "retrying": the Catch took it
        assert sfn.describe_execution(executionArn=arn)["status"] == "RUNNING"  # busy still holds its branch
        assert run.state == RunState.RUNNING
    finally:
        moto_aws.set_flag(hold, False)
    assert moto_aws.wait_execution(arn)["status"] == "FAILED"
    final = sync_run(store, sfn, state_machine_arn=sm_arn, run_id=run_id)
    assert final.state == RunState.FAILED
    assert {t.task_id: t.state for t in final.tasks} == {
        "numbers": TaskState.SUCCEEDED, "bad": TaskState.FAILED, "busy": TaskState.SUCCEEDED}


def test_post_pipelines_deploys_machines_that_log_and_trace_like_the_deployers(
    moto_aws: Any, store: Any, tmp_path: Path
) -> None:
    from udop.api import ApiSettings
    from udop.api.stepfunctions import StepFunctionsLauncher
    from udop.spec.loader import load_pipeline

    settings = ApiSettings(
        database_url="sqlite://",
        jwt_secret="x" * 32,
        executor="stepfunctions",
        definitions_bucket=moto_aws.definitions_bucket,
        data_bucket=moto_aws.data_bucket,
        task_runner_arn=moto_aws.task_runner_arn,
        state_machine_role_arn=moto_aws.role_arn,
        state_machine_log_group_arn=moto_aws.log_group_arn,
    )
    sfn = moto_aws.client("stepfunctions")
    launcher = StepFunctionsLauncher(store, settings, sfn=sfn, s3=moto_aws.client("s3"))
    path = _flow(tmp_path, moto_aws.log_root)
    launcher.register(load_pipeline(str(path)), path.read_bytes(), "flow.yaml")
    arn = store.get_pipeline("flow").latest.state_machine_arn
    machine = sfn.describe_state_machine(stateMachineArn=arn)
    logging = machine["loggingConfiguration"]
    assert logging["level"] == "ALL"
    assert logging["includeExecutionData"] is True
    assert logging["destinations"][0]["cloudWatchLogsLogGroup"]["logGroupArn"] == moto_aws.log_group_arn
    assert machine["tracingConfiguration"] == {"enabled": True}
