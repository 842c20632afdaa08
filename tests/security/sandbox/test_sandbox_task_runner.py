"""The task runner Lambda (moto, real handler) is a server too: a deployed definition that reads a
host file through SQL, or names a variable off the allowlist, is refused there, and the answer Step
Functions gets holds neither the file nor the secret."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from udop.aws.definitions import canonical_definition, put_version
from udop.spec.models import Pipeline

pytestmark = [pytest.mark.aws, pytest.mark.redis]

CANARY = "canary-" + uuid.uuid4().hex


def _deploy(aws: Any, name: str, tasks: list[dict[str, Any]]) -> None:
    pipeline = Pipeline.model_validate({"apiVersion": "udop/v1", "kind": "Pipeline",
                                        "metadata": {"name": name}, "spec": {"tasks": tasks}})
    put_version(aws.client("s3"), aws.definitions_bucket, name, 1, canonical_definition(pipeline))


def _invoke(aws: Any, name: str, task_id: str, run_id: str) -> tuple[dict[str, Any], str | None]:
    payload = {"run": {"run_id": run_id, "params": {}, "logical_date": "2026-01-02"}, "pipeline": name,
               "version": 1, "task_id": task_id, "attempt": 0,
               "execution": f"arn:aws:states:us-east-1:123456789012:execution:udop-{name}:{run_id}"}
    resp = aws.client("lambda").invoke(FunctionName=aws.task_runner_arn, Payload=json.dumps(payload))
    return json.loads(resp["Payload"].read()), resp.get("FunctionError")


def test_sql_cannot_read_host_files_in_the_task_runner(moto_aws: Any) -> None:
    name = f"sbx-{uuid.uuid4().hex[:8]}"
    _deploy(moto_aws, name, [
        {"id": "numbers", "type": "python", "callable": "udop_aws_test_tasks:numbers",
         "args": {"n": 3, "log_dir": str(moto_aws.log_root)}},
        {"id": "t", "type": "transform", "depends_on": ["numbers"],
         "steps": [{"sql": "SELECT * FROM read_text('/proc/self/environ')"}]},
    ])
    run_id = uuid.uuid4().hex
    body, err = _invoke(moto_aws, name, "numbers", run_id)
    assert err is None, body
    body, err = _invoke(moto_aws, name, "t", run_id)
    assert err
    assert body["errorType"] == "udop.FatalError"
    assert "sandbox" in body["errorMessage"]
    assert "PATH=" not in json.dumps(body)


def test_an_env_reference_off_the_allowlist_is_refused_by_the_task_runner(
    moto_aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UDOP_CANARY_PASSWORD", CANARY)
    name = f"sbx-{uuid.uuid4().hex[:8]}"
    _deploy(moto_aws, name, [
        {"id": "numbers", "type": "python", "callable": "udop_aws_test_tasks:numbers",
         "args": {"n": 3, "log_dir": str(moto_aws.log_root), "leak": "${env.UDOP_CANARY_PASSWORD}"}},
        {"id": "p", "type": "python", "callable": "builtins:print"},
    ])
    for task in ("numbers", "p"):
        body, err = _invoke(moto_aws, name, task, uuid.uuid4().hex)
        assert err
        text = json.dumps(body)
        assert "refused by the task runner's sandbox" in text
        assert "UDOP_CANARY_PASSWORD" in text and CANARY not in text
