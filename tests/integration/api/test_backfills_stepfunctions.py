"""``POST /pipelines/{name}/backfills`` on a Step Functions server: one parent execution fans out on
AWS (``udop.schedule.sfn_parent``; nothing runs in the server), listed as one backfill, and
``POST /backfills/{id}/cancel`` stops the parent and its dates' executions. On a moto that does not
execute state machines, so the executions stay running as a long backfill's do."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from .conftest import SECRET, LiveServer, bearer, make_token

pytestmark = [pytest.mark.aws]


def test_a_backfill_over_the_api_is_one_parent_execution_cancelled_as_one_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    import httpx
    from moto import mock_aws

    from udop.api import ApiSettings, create_app
    from udop.api.stepfunctions import StepFunctionsLauncher
    from udop.store import open_store

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        definitions, data = f"defs-{uuid.uuid4().hex[:8]}", f"data-{uuid.uuid4().hex[:8]}"
        for bucket in (definitions, data):
            s3.create_bucket(Bucket=bucket)
        monkeypatch.setenv("UDOP_DATA_BUCKET", data)
        url = f"sqlite:///{tmp_path / 'meta.db'}"
        settings = ApiSettings(
            database_url=url,
            jwt_secret=SECRET,
            executor="stepfunctions",
            definitions_bucket=definitions,
            data_bucket=data,
            task_runner_arn="arn:aws:lambda:us-east-1:123456789012:function:udop-task-runner",
            state_machine_role_arn="arn:aws:iam::123456789012:role/udop-state-machine",
        )
        store = open_store(url)
        launcher = StepFunctionsLauncher(store, settings, sfn=sfn, s3=s3)
        definition = {
            "apiVersion": "udop/v1",
            "kind": "Pipeline",
            "metadata": {"name": "daily"},
            "spec": {"tasks": [{"id": "a", "type": "python", "callable": "m:f"}]},
        }
        try:
            with (
                LiveServer(create_app(settings, store=store, launcher=launcher)) as server,
                httpx.Client(base_url=server.url, headers=bearer(make_token("operator")), timeout=60) as op,
                httpx.Client(base_url=server.url, headers=bearer(make_token("admin")), timeout=60) as admin,
            ):
                assert admin.post("/pipelines", json=definition).status_code == 201
                started = op.post(
                    "/pipelines/daily/backfills",
                    json={"from": "2024-01-01", "to": "2024-01-04", "max_parallel": 2},
                )
                assert started.status_code == 202, started.text
                body = started.json()
                assert body["state"] == "running" and len(body["dates"]) == 4
                run_ids = [d["run_id"] for d in body["dates"]]
                assert all(run_ids)
                machines = {
                    m["name"]: m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]
                }
                [parent] = sfn.list_executions(stateMachineArn=machines["udop-daily-Backfill"])["executions"]
                assert parent["name"] == body["id"] and parent["status"] == "RUNNING"
                parent_input = json.loads(
                    sfn.describe_execution(executionArn=parent["executionArn"])["input"]
                )
                assert parent_input["max_parallel"] == 2
                assert parent_input["state_machine_arn"] == machines["udop-daily"]
                # what the parent's Map starts for a date (moto does not run it here)
                child = sfn.start_execution(
                    stateMachineArn=machines["udop-daily"],
                    name=run_ids[0],
                    input=json.dumps({"run": {"run_id": run_ids[0]}}),
                )["executionArn"]
                assert [b["id"] for b in op.get("/backfills", params={"pipeline": "daily"}).json()] == [
                    body["id"]
                ]

                cancelled = op.post(f"/backfills/{body['id']}/cancel")
                assert cancelled.status_code == 200, cancelled.text
                assert cancelled.json()["state"] == "cancelled"
                assert sfn.describe_execution(executionArn=parent["executionArn"])["status"] == "ABORTED"
                assert sfn.describe_execution(executionArn=child)["status"] == "ABORTED"
                assert op.post(f"/backfills/{body['id']}/cancel").status_code == 409
        finally:
            store.close()
