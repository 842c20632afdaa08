"""Emulated AWS for the serverless path: moto with Step Functions executing ASL, and Lambda
invocations running our real handlers in-process.

moto runs Lambda code only in Docker; every invocation path (boto3 ``Invoke``, Step Functions
tasks, S3 notifications) goes through ``LambdaFunction._invoke_lambda``, which we replace: it
imports ``functions/<name>/app.py`` once per function (a cold start, with the function's environment
applied so settings validate as on Lambda) and calls its handler.

With ``AWS_ENDPOINT_URL`` set the fixtures talk to that endpoint (LocalStack) instead: no patch,
async effects are polled. See docs/localstack.md.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
import threading
import time
import traceback
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
FUNCTIONS = REPO / "functions"
TASK_CODE = Path(__file__).resolve().parent / "task_code"
EVENTS = REPO / "tests" / "events"
REDIS_URL = os.environ.get("UDOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LOCALSTACK = bool(os.environ.get("AWS_ENDPOINT_URL"))
REGION = "us-east-1"

# the test pipelines' python callables, and this folder (``from conftest import load_event``)
for _folder in (TASK_CODE, Path(__file__).resolve().parent):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))


def load_event(fixture: str, **replace: str) -> dict[str, Any]:
    """A JSON event fixture from tests/events/, with ``{placeholders}`` filled in."""
    text = (EVENTS / fixture).read_text()
    for key, value in replace.items():
        text = text.replace("{" + key + "}", value)
    return json.loads(text)


@dataclass
class FakeLambdaContext:
    """The attributes Powertools and our handlers read from a Lambda context."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int = 1024
    function_version: str = "$LATEST"
    timeout_s: float = 900.0
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = ""
    log_stream_name: str = ""
    _start: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self._start)) * 1000))


class InProcessLambdas:
    """Runs the real handlers for moto's Lambda functions; records every invocation."""

    def __init__(self) -> None:
        self.modules: dict[str, ModuleType] = {}
        self.invocations: list[tuple[str, Any, bool]] = []  # (function name, event, errored)
        self._mutex = threading.Lock()
        self._env_before: dict[str, str | None] = {}

    def _apply_env(self, env: dict[str, str]) -> None:
        for key, value in env.items():
            self._env_before.setdefault(key, os.environ.get(key))
            os.environ[key] = str(value)

    def restore_env(self) -> None:
        for key, value in self._env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._env_before.clear()

    def _module(self, fn: Any) -> ModuleType:
        folder = fn.environment_vars.get("UDOP_TEST_FUNCTION_DIR") or fn.function_name.removeprefix("udop-")
        key = fn.function_arn
        with self._mutex:
            module = self.modules.get(key)
            if module is None:
                path = FUNCTIONS / folder / "app.py"
                name = f"udop_test_lambda_{folder}_{uuid.uuid4().hex[:8]}"
                spec = importlib.util.spec_from_file_location(name, path)
                assert spec is not None, path
                assert spec.loader is not None, path
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)  # the cold start: settings and clients
                self.modules[key] = module
        return module

    def invoke(self, fn: Any, event: Any) -> tuple[str, bool, str]:
        fn.logs_backend.ensure_log_group(fn.logs_group_name)
        if isinstance(event, str | bytes):
            event = json.loads(event or "{}")
        self._apply_env(dict(fn.environment_vars))
        context = FakeLambdaContext(
            function_name=fn.function_name,
            invoked_function_arn=fn.function_arn,
            timeout_s=float(fn.timeout or 3),
        )
        try:
            module = self._module(fn)
            handler_name = (fn.handler or "app.handler").rsplit(".", 1)[-1]
            result = getattr(module, handler_name)(event, context)
        except Exception as exc:
            with self._mutex:
                self.invocations.append((fn.function_name, event, True))
            body = {
                "errorType": type(exc).__name__,
                "errorMessage": str(exc),
                "stackTrace": traceback.format_exception(exc)[-3:],
            }
            return json.dumps(body), True, ""
        with self._mutex:
            self.invocations.append((fn.function_name, event, False))
        return json.dumps(result), False, ""


def _zip_of(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for file in sorted(folder.rglob("*.py")):
            zf.write(file, file.relative_to(folder).as_posix())
    return buf.getvalue()


@dataclass
class AwsEnv:
    """Buckets, functions and clients of one emulated account; names unique per test."""

    prefix: str
    session: Any
    data_bucket: str
    definitions_bucket: str
    role_arn: str
    lambdas: InProcessLambdas | None
    task_runner_arn: str = ""
    deployer_arn: str = ""
    run_events_arn: str = ""
    log_group_arn: str = ""
    database_url: str = ""
    functions: dict[str, str] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        return self.session.client(service, region_name=REGION)

    def runner_invocations(self, task_id: str | None = None) -> list[tuple[str, Any, bool]]:
        assert self.lambdas is not None
        return [
            i
            for i in self.lambdas.invocations
            if i[0] == self.functions["task_runner"] and (task_id is None or i[1].get("task_id") == task_id)
        ]

    def wait_execution(self, arn: str, timeout: float = 120.0) -> dict[str, Any]:
        sfn = self.client("stepfunctions")
        deadline = time.monotonic() + timeout
        while True:
            desc = sfn.describe_execution(executionArn=arn)
            if desc["status"] != "RUNNING":
                return dict(desc)
            if time.monotonic() > deadline:
                raise AssertionError(f"execution {arn} still RUNNING after {timeout}s")
            time.sleep(0.05)


@pytest.fixture
def store(moto_aws: AwsEnv) -> Iterator[Any]:
    """The metadata store the deployer and run-events functions of ``moto_aws`` write to."""
    from udop.store import open_store

    opened = open_store(moto_aws.database_url)
    yield opened
    opened.close()


@pytest.fixture
def moto_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[AwsEnv]:
    """An emulated account with a data bucket, a definitions bucket, the task runner and the deployer
    (definitions uploaded to ``pipelines/`` trigger the deployer)."""
    import boto3

    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "udop-tests")
    lambdas: InProcessLambdas | None = None
    mock = None
    if not LOCALSTACK:
        from moto import mock_aws
        from moto.awslambda.models import LambdaFunction

        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(key, "testing")
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        lambdas = InProcessLambdas()
        runner = lambdas

        def _invoke_lambda(self: Any, event: Any = None) -> tuple[str, bool, str]:
            return runner.invoke(self, event)

        monkeypatch.setattr(LambdaFunction, "_invoke_lambda", _invoke_lambda)
        mock = mock_aws(config={"stepfunctions": {"execute_state_machine": True}})
        mock.start()
    try:
        prefix = f"udop-t{uuid.uuid4().hex[:8]}"
        session = boto3.session.Session(region_name=REGION)
        s3 = session.client("s3")
        env = AwsEnv(
            prefix=prefix,
            session=session,
            data_bucket=f"{prefix}-data",
            definitions_bucket=f"{prefix}-definitions",
            role_arn="",
            lambdas=lambdas,
            database_url=f"sqlite:///{(tmp_path / 'udop.db').as_posix()}",
        )
        for bucket in (env.data_bucket, env.definitions_bucket):
            s3.create_bucket(Bucket=bucket)
        iam = session.client("iam")
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "sts:AssumeRole",
                    "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com"]},
                }
            ],
        }
        env.role_arn = iam.create_role(RoleName=f"{prefix}-role", AssumeRolePolicyDocument=json.dumps(trust))[
            "Role"
        ]["Arn"]
        lam = session.client("lambda")
        logs = session.client("logs")
        logs.create_log_group(logGroupName=f"/aws/vendedlogs/states/{prefix}")
        env.log_group_arn = logs.describe_log_groups(logGroupNamePrefix=f"/aws/vendedlogs/states/{prefix}")[
            "logGroups"][0]["arn"]
        common = {
            "UDOP_DEFINITIONS_BUCKET": env.definitions_bucket,
            "UDOP_DATA_BUCKET": env.data_bucket,
            "UDOP_DATABASE_URL": env.database_url,
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_NAMESPACE": "udop-tests",
        }
        env.functions["task_runner"] = f"{prefix}-task-runner"
        env.task_runner_arn = lam.create_function(
            FunctionName=env.functions["task_runner"],
            Runtime="python3.12",
            Role=env.role_arn,
            Handler="app.handler",
            Code={"ZipFile": _zip_of(FUNCTIONS / "task_runner")},
            Timeout=120,
            Environment={
                "Variables": {
                    **common,
                    "UDOP_STATE_URL": REDIS_URL,
                    "UDOP_TMP_DIR": str(tmp_path),
                    "UDOP_CODE_DIR": str(TASK_CODE),
                    "UDOP_TEST_FUNCTION_DIR": "task_runner",
                    "POWERTOOLS_SERVICE_NAME": "udop-task-runner",
                }
            },
        )["FunctionArn"]
        env.functions["deployer"] = f"{prefix}-deployer"
        env.deployer_arn = lam.create_function(
            FunctionName=env.functions["deployer"],
            Runtime="python3.12",
            Role=env.role_arn,
            Handler="app.handler",
            Code={"ZipFile": _zip_of(FUNCTIONS / "deployer")},
            Timeout=60,
            Environment={
                "Variables": {
                    **common,
                    "UDOP_TASK_RUNNER_ARN": env.task_runner_arn,
                    "UDOP_STATE_MACHINE_ROLE_ARN": env.role_arn,
                    "UDOP_STATE_MACHINE_LOG_GROUP_ARN": env.log_group_arn,
                    "UDOP_TEST_FUNCTION_DIR": "deployer",
                    "POWERTOOLS_SERVICE_NAME": "udop-deployer",
                }
            },
        )["FunctionArn"]
        env.functions["run_events"] = f"{prefix}-run-events"
        env.run_events_arn = lam.create_function(
            FunctionName=env.functions["run_events"],
            Runtime="python3.12",
            Role=env.role_arn,
            Handler="app.handler",
            Code={"ZipFile": _zip_of(FUNCTIONS / "run_events")},
            Timeout=60,
            Environment={
                "Variables": {
                    **common,
                    "UDOP_TEST_FUNCTION_DIR": "run_events",
                    "POWERTOOLS_SERVICE_NAME": "udop-run-events",
                }
            },
        )["FunctionArn"]
        s3.put_bucket_notification_configuration(
            Bucket=env.definitions_bucket,
            NotificationConfiguration={
                "LambdaFunctionConfigurations": [
                    {
                        "LambdaFunctionArn": env.deployer_arn,
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "pipelines/"}]}},
                    }
                ]
            },
        )
        yield env
    finally:
        if lambdas is not None:
            lambdas.restore_env()
        if mock is not None:
            mock.stop()
