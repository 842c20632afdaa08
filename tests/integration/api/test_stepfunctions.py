"""The API with UDOP_EXECUTOR=stepfunctions on emulated AWS (moto executing the compiled state machine,
the real task-runner and run-events handlers in-process): POST a definition -> deployed state machine;
trigger -> an execution and a run record at once; the run-events function follows it; resume ->
redrive from the failed task."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import SECRET, LiveServer, bearer, make_token

pytestmark = [pytest.mark.aws, pytest.mark.redis, pytest.mark.slow]

_HARNESS_PATH = Path(__file__).resolve().parents[1] / "aws" / "conftest.py"


def _harness() -> Any:
    """The serverless tests' moto harness (its fixtures are not visible from this folder)."""
    name = "udop_aws_test_harness"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _HARNESS_PATH)
        assert spec
        assert spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


moto_aws = _harness().moto_aws


def _run_event(moto: Any, run: dict[str, Any], status: str) -> None:
    """What EventBridge would deliver to the run-events function when the execution changes."""
    events = Path(__file__).resolve().parents[2] / "events" / "sfn_execution_status_change.json"
    sfn = moto.client("stepfunctions")
    execution = sfn.describe_execution(executionArn=run["external_id"])
    machine = execution["stateMachineArn"]
    text = events.read_text()
    for key, value in {
        "execution_arn": run["external_id"],
        "state_machine_arn": machine,
        "name": execution["name"],
        "status": status,
        "account": machine.split(":")[4],
    }.items():
        text = text.replace("{" + key + "}", value)
    resp = moto.client("lambda").invoke(FunctionName=moto.run_events_arn, Payload=text)
    assert resp.get("FunctionError") is None, resp["Payload"].read()


def test_deploy_trigger_follow_and_redrive_through_the_api(
    moto_aws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    from udop.api import ApiSettings, create_app
    from udop.api.stepfunctions import StepFunctionsLauncher
    from udop.store import open_store

    monkeypatch.setenv("UDOP_DATA_BUCKET", moto_aws.data_bucket)
    settings = ApiSettings(
        database_url=moto_aws.database_url,
        jwt_secret=SECRET,
        executor="stepfunctions",
        definitions_bucket=moto_aws.definitions_bucket,
        data_bucket=moto_aws.data_bucket,
        task_runner_arn=moto_aws.task_runner_arn,
        state_machine_role_arn=moto_aws.role_arn,
    )
    store = open_store(moto_aws.database_url)
    sfn = moto_aws.client("stepfunctions")
    launcher = StepFunctionsLauncher(store, settings, sfn=sfn, s3=moto_aws.client("s3"))
    log_dir = moto_aws.log_root
    flag = moto_aws.flag("api-fault")
    moto_aws.set_flag(flag, True)
    definition = {
        "apiVersion": "udop/v1",
        "kind": "Pipeline",
        "metadata": {"name": "api-aws"},
        "spec": {
            "params": {"n": {"type": "int", "default": 3}},
            "tasks": [
                {
                    "id": "numbers",
                    "type": "python",
                    "callable": "udop_aws_test_tasks:numbers",
                    "args": {"n": "${params.n}", "log_dir": log_dir},
                },
                {
                    "id": "big",
                    "type": "python",
                    "callable": "udop_aws_test_tasks:fails_while",
                    "depends_on": ["numbers"],
                    "args": {"flag": flag, "log_dir": log_dir},
                },
            ],
        },
    }
    try:
        with (
            LiveServer(create_app(settings, store=store, launcher=launcher)) as server,
            httpx.Client(base_url=server.url, headers=bearer(make_token("admin")), timeout=120) as c,
        ):
            assert c.get("/health").json()["executor"] == "stepfunctions"
            # a definition the compiler refuses is a 422 and deploys nothing
            broken = {
                **definition,
                "spec": {"tasks": [{"id": "a", "type": "python", "callable": "m:f", "depends_on": ["a"]}]},
            }
            assert c.post("/pipelines", json=broken).status_code == 422

            created = c.post("/pipelines", json=definition)
            assert created.status_code == 201, created.text
            version = c.get("/pipelines/api-aws").json()["versions"][-1]
            machine = version["state_machine_arn"]
            assert machine
            assert sfn.describe_state_machine(stateMachineArn=machine)["status"] == "ACTIVE"
            key = "pipelines/api-aws.json"
            assert (
                json.loads(
                    moto_aws.client("s3")
                    .get_object(Bucket=moto_aws.definitions_bucket, Key=key)["Body"]
                    .read()
                )
                == definition
            )

            accepted = c.post("/pipelines/api-aws/runs", json={"params": {"n": 4}})
            assert accepted.status_code == 202, accepted.text
            run_id = accepted.json()["run_id"]
            run = c.get(f"/runs/{run_id}").json()
            assert run["executor"] == "stepfunctions"
            assert run["params"] == {"n": 4}
            assert sfn.describe_execution(executionArn=run["external_id"])["name"] == run_id

            moto_aws.wait_execution(run["external_id"])
            _run_event(moto_aws, run, "FAILED")
            failed = c.get(f"/runs/{run_id}").json()
            assert failed["state"] == "failed"
            tasks = {t["task_id"]: t for t in failed["tasks"]}
            assert tasks["numbers"]["state"] == "succeeded"
            assert tasks["big"]["state"] == "failed"
            assert tasks["big"]["attempts"][-1]["error_type"] == "udop.FatalError"

            moto_aws.set_flag(flag, False)  # the fault is fixed: redrive from the failed task
            assert c.post(f"/runs/{run_id}/resume").status_code == 202
            latest = max(
                (e for e in sfn.list_executions(stateMachineArn=machine)["executions"]),
                key=lambda e: e["startDate"],
            )
            moto_aws.wait_execution(latest["executionArn"])
            _run_event(moto_aws, {**run, "external_id": latest["executionArn"]}, "SUCCEEDED")
            done = c.get(f"/runs/{run_id}").json()
            assert done["state"] == "succeeded", done
            # the redrive ran only the failed task again
            assert moto_aws.calls("numbers", run_id) == 1
            assert moto_aws.calls("big", run_id) == 2

            # "retry from here" on the succeeded run: a new execution of the same run runs `big` (and
            # what is downstream of it) again and reuses `numbers`' result
            retried = c.post(f"/runs/{run_id}/tasks/big/retry")
            assert retried.status_code == 202, retried.text
            pending = c.get(f"/runs/{run_id}").json()
            assert pending["state"] == "pending"
            assert {t["task_id"]: t["state"] for t in pending["tasks"]} == {"numbers": "succeeded", "big": "pending"}
            latest = max(sfn.list_executions(stateMachineArn=machine)["executions"], key=lambda e: e["startDate"])
            assert latest["name"] == f"{run_id}--redrive-2"
            assert moto_aws.wait_execution(latest["executionArn"])["status"] == "SUCCEEDED"
            _run_event(moto_aws, {**run, "external_id": latest["executionArn"]}, "SUCCEEDED")
            again = c.get(f"/runs/{run_id}").json()
            assert again["state"] == "succeeded", again
            tasks = {t["task_id"]: t for t in again["tasks"]}
            assert [a["state"] for a in tasks["big"]["attempts"]] == ["failed", "succeeded", "succeeded"]
            assert len(tasks["numbers"]["attempts"]) == 1
            assert moto_aws.calls("numbers", run_id) == 1
            assert moto_aws.calls("big", run_id) == 3
            assert c.post(f"/runs/{run_id}/tasks/nope/retry").status_code == 404
            assert c.post(f"/runs/{run_id}/resume").status_code == 409
            assert c.post(f"/runs/{run_id}/cancel").status_code == 409
    finally:
        store.close()


def test_cancel_stops_the_execution(
    moto_aws: Any, monkeypatch: pytest.MonkeyPatch, tasks_module: tuple[str, Any]
) -> None:
    import httpx

    from udop.api import ApiSettings, create_app
    from udop.api.stepfunctions import StepFunctionsLauncher
    from udop.store import open_store

    module, tasks = tasks_module  # the task runner runs in this process: it can wait at the test's gate
    monkeypatch.setenv("UDOP_DATA_BUCKET", moto_aws.data_bucket)
    settings = ApiSettings(
        database_url=moto_aws.database_url,
        jwt_secret=SECRET,
        executor="stepfunctions",
        definitions_bucket=moto_aws.definitions_bucket,
        data_bucket=moto_aws.data_bucket,
        task_runner_arn=moto_aws.task_runner_arn,
        state_machine_role_arn=moto_aws.role_arn,
    )
    store = open_store(moto_aws.database_url)
    sfn = moto_aws.client("stepfunctions")
    launcher = StepFunctionsLauncher(store, settings, sfn=sfn, s3=moto_aws.client("s3"))
    definition = {
        "apiVersion": "udop/v1",
        "kind": "Pipeline",
        "metadata": {"name": "api-stop"},
        "spec": {
            "tasks": [
                {"id": "wait", "type": "python", "callable": f"{module}:wait_for_gate"},
                {"id": "after", "type": "python", "callable": f"{module}:maybe_fail", "depends_on": ["wait"]},
            ]
        },
    }
    try:
        with (
            LiveServer(create_app(settings, store=store, launcher=launcher)) as server,
            httpx.Client(base_url=server.url, headers=bearer(make_token("operator")), timeout=120) as c,
        ):
            assert c.post("/pipelines", json=definition).status_code == 201
            run_id = c.post("/pipelines/api-stop/runs").json()["run_id"]
            arn = c.get(f"/runs/{run_id}").json()["external_id"]
            # cancel while the task is in flight: a stop that moto takes between two states (the
            # execution just started, on a loaded machine) fails the execution with moto's own
            # interpreter error ('dict' object has no attribute 'region') instead of aborting it
            assert tasks.entered.wait(60), "the task never started"
            assert sfn.describe_execution(executionArn=arn)["status"] == "RUNNING"  # blocked at the gate
            cancelled = c.post(f"/runs/{run_id}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            # moto notices the stop when the running task returns (AWS stops at once)
            tasks.gate.set()
            assert moto_aws.wait_execution(arn)["status"] == "ABORTED"
            run = c.get(f"/runs/{run_id}").json()
            _run_event(moto_aws, run, "ABORTED")
            after = c.get(f"/runs/{run_id}").json()
            assert after["state"] == "cancelled"
            assert {t["task_id"]: t["state"] for t in after["tasks"]}["after"] == "cancelled"
            assert c.post(f"/runs/{run_id}/cancel").status_code == 409
    finally:
        tasks.gate.set()
        store.close()
