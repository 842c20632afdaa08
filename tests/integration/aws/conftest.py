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

import contextlib
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

# the test pipelines' python callables, and this folder (``from aws_support import load_event``)
for _folder in (TASK_CODE, Path(__file__).resolve().parent):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))




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

    def close(self) -> None:
        """The end of the functions' processes: the state stores and metadata stores their cold starts
        opened (a Lambda keeps them for life) are closed, not left to the garbage collector."""
        for module in self.modules.values():
            for name in ("STATE", "STORE"):
                resource = getattr(module, name, None)
                if resource is not None:
                    resource.close()
        self.modules.clear()

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
        stream = f"2026/11/30/[$LATEST]{uuid.uuid4().hex}"
        # what the Lambda runtime sets: where the invocation's lines go
        self._apply_env({**fn.environment_vars, "AWS_LAMBDA_LOG_GROUP_NAME": fn.logs_group_name,
                         "AWS_LAMBDA_LOG_STREAM_NAME": stream})
        context = FakeLambdaContext(
            function_name=fn.function_name,
            invoked_function_arn=fn.function_arn,
            timeout_s=float(fn.timeout or 3),
            log_group_name=fn.logs_group_name,
            log_stream_name=stream,
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


def _zip_of(*folders: tuple[Path, str]) -> bytes:
    """A deployment package: the ``.py`` files of each (folder, path in the zip)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for folder, inside in folders:
            for file in sorted(folder.rglob("*.py")):
                zf.write(file, f"{inside}{file.relative_to(folder).as_posix()}")
    return buf.getvalue()


def _package(name: str) -> bytes:
    """In moto only the handler matters (it runs in-process); LocalStack needs the udop packages and
    the test tasks next to it (third-party libraries come from layers, see docs/localstack.md)."""
    parts = [(FUNCTIONS / name, "")]
    if LOCALSTACK:
        parts += [(REPO / "shared" / "udop", "udop/"), (TASK_CODE, ""),
                  (REPO / "layers" / "transforms" / "udop_transforms", "udop_transforms/"),
                  (REPO / "layers" / "connectors" / "udop_connectors", "udop_connectors/")]
    return _zip_of(*parts)


@dataclass
class AwsEnv:
    """Buckets, functions and clients of one emulated account; names unique per test."""

    prefix: str
    session: Any
    data_bucket: str
    definitions_bucket: str
    role_arn: str
    lambdas: InProcessLambdas | None
    log_root: str  # where the test tasks count their calls: a folder, or s3:// on LocalStack
    task_runner_arn: str = ""
    deployer_arn: str = ""
    run_events_arn: str = ""
    stream_runner_arn: str = ""
    log_group_arn: str = ""
    database_url: str = ""
    functions: dict[str, str] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        return self.session.client(service, region_name=REGION)

    def calls(self, task: str, run_id: str) -> int:
        """How often the test task ``task`` ran in run ``run_id``."""
        from udop_aws_test_tasks import count_calls

        return int(count_calls(self.log_root, task, run_id))

    def flag(self, name: str) -> str:
        """A fault flag the test tasks can see: a file, or an S3 object on LocalStack."""
        return f"s3://{self.data_bucket}/flags/{name}" if LOCALSTACK else str(Path(self.log_root) / name)

    def set_flag(self, flag: str, on: bool) -> None:
        from udop_aws_test_tasks import set_flag

        set_flag(flag, on)

    def status(self, name: str, previous: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        """The deployer's status report for ``name`` once it differs from ``previous`` (S3 events are
        synchronous in moto, asynchronous on LocalStack)."""
        from udop.aws.definitions import status_key
        from udop.aws.s3 import get_json

        deadline = time.monotonic() + timeout
        while True:
            report = get_json(self.client("s3"), self.definitions_bucket, status_key(name))
            if report is not None and report != previous:
                return report
            if time.monotonic() > deadline:
                raise AssertionError(f"no new status report for {name} after {timeout}s")
            time.sleep(0.2)

    def wait_stopped(self, arn: str, timeout: float = 120.0) -> str:
        """The status of an execution StopExecution was called on, once it ended. moto ends a stopped
        execution only when its running Task call returns (AWS ends it at once), and when the two
        meet its interpreter can pop the wrong value off its stack and fail the execution with
        ``'dict' object has no attribute 'region'`` (a States.Runtime error in the Task's history,
        seen under load): that is moto's race, not ours, and counts as the ABORTED AWS gives."""
        status = str(self.wait_execution(arn, timeout)["status"])
        if status == "FAILED":
            history = self.client("stepfunctions").get_execution_history(executionArn=arn, maxResults=1000)
            if "object has no attribute 'region'" in json.dumps(history["events"], default=str):
                return "ABORTED"
        return status

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


def _pg_schema_urls(prefix: str) -> tuple[str, str]:
    """LocalStack: a fresh PostgreSQL schema, as (URL for this process, URL for the Lambdas)."""
    import psycopg

    test_url = os.environ.get("UDOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    lambda_url = os.environ.get("UDOP_TEST_LAMBDA_PG_URL",
                                "postgresql+psycopg://postgres@host.docker.internal:5432/test")
    schema = prefix.replace("-", "_")
    with psycopg.connect(test_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    option = f"options=-csearch_path%3D{schema}"
    return (f"{test_url}{'&' if '?' in test_url else '?'}{option}",
            f"{lambda_url}{'&' if '?' in lambda_url else '?'}{option}")


@pytest.fixture
def moto_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[AwsEnv]:
    """An account with a data bucket, a definitions bucket, the task runner, the deployer (uploads
    to ``pipelines/`` trigger it) and the run-events function: moto in-process, or LocalStack when
    ``AWS_ENDPOINT_URL`` is set."""
    with aws_account(monkeypatch, tmp_path) as env:
        yield env


@contextlib.contextmanager
def aws_account(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[AwsEnv]:
    """The ``moto_aws`` fixture as a context manager (benchmarks/ use it outside pytest)."""
    import boto3

    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "udop-tests")
    lambdas: InProcessLambdas | None = None
    mock = None
    session: Any = None
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
        env = AwsEnv(prefix=prefix, session=session, data_bucket=f"{prefix}-data",
                     definitions_bucket=f"{prefix}-definitions", role_arn="", lambdas=lambdas,
                     log_root=str(tmp_path / "calls"))
        lambda_db_url = env.database_url = f"sqlite:///{(tmp_path / 'udop.db').as_posix()}"
        redis_url = REDIS_URL
        layers: list[str] = []
        if LOCALSTACK:
            env.log_root = f"s3://{env.data_bucket}/calls"
            env.database_url, lambda_db_url = _pg_schema_urls(prefix)
            redis_url = os.environ.get("UDOP_TEST_LAMBDA_REDIS_URL", "redis://host.docker.internal:6379/0")
            layers = [a for a in os.environ.get("UDOP_TEST_LAMBDA_LAYERS", "").split(",") if a]
        else:
            (tmp_path / "calls").mkdir()
        for bucket in (env.data_bucket, env.definitions_bucket):
            s3.create_bucket(Bucket=bucket)
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRole",
            "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com"]}}]}
        env.role_arn = session.client("iam").create_role(
            RoleName=f"{prefix}-role", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        logs = session.client("logs")
        logs.create_log_group(logGroupName=f"/aws/vendedlogs/states/{prefix}")
        env.log_group_arn = logs.describe_log_groups(
            logGroupNamePrefix=f"/aws/vendedlogs/states/{prefix}")["logGroups"][0]["arn"]
        common = {"UDOP_DEFINITIONS_BUCKET": env.definitions_bucket, "UDOP_DATA_BUCKET": env.data_bucket,
                  "UDOP_DATABASE_URL": lambda_db_url, "POWERTOOLS_TRACE_DISABLED": "true",
                  "POWERTOOLS_METRICS_NAMESPACE": "udop-tests"}
        lam = session.client("lambda")

        def create(name: str, timeout: int, variables: dict[str, str]) -> str:
            env.functions[name] = f"{prefix}-{name.replace('_', '-')}"
            arn = lam.create_function(
                FunctionName=env.functions[name], Runtime="python3.12", Role=env.role_arn,
                Handler="app.handler", Code={"ZipFile": _package(name)}, Timeout=timeout, MemorySize=1024,
                Layers=layers,
                Environment={"Variables": {**common, **variables, "UDOP_TEST_FUNCTION_DIR": name,
                                           "POWERTOOLS_SERVICE_NAME": f"udop-{name.replace('_', '-')}"}},
            )["FunctionArn"]
            if LOCALSTACK:
                lam.get_waiter("function_active_v2").wait(FunctionName=arn)
            return str(arn)

        runner_vars = {"UDOP_STATE_URL": redis_url}
        if not LOCALSTACK:  # in-process: the tasks' files live on this machine
            runner_vars.update(UDOP_TMP_DIR=str(tmp_path), UDOP_CODE_DIR=str(TASK_CODE))
        env.task_runner_arn = create("task_runner", 120, runner_vars)
        env.deployer_arn = create("deployer", 60, {
            "UDOP_TASK_RUNNER_ARN": env.task_runner_arn, "UDOP_STATE_MACHINE_ROLE_ARN": env.role_arn,
            "UDOP_STATE_MACHINE_LOG_GROUP_ARN": env.log_group_arn})
        env.run_events_arn = create("run_events", 60, {})
        env.stream_runner_arn = create("stream_runner", 120, runner_vars)
        if LOCALSTACK:
            lam.add_permission(FunctionName=env.deployer_arn, StatementId="s3",
                               Action="lambda:InvokeFunction", Principal="s3.amazonaws.com",
                               SourceArn=f"arn:aws:s3:::{env.definitions_bucket}")
        s3.put_bucket_notification_configuration(
            Bucket=env.definitions_bucket,
            NotificationConfiguration={"LambdaFunctionConfigurations": [{
                "LambdaFunctionArn": env.deployer_arn, "Events": ["s3:ObjectCreated:*"],
                "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "pipelines/"}]}}}]})
        yield env
    finally:
        if mock is not None and session is not None:
            _stop_executions(session)
        if lambdas is not None:
            lambdas.restore_env()
            lambdas.close()
        if mock is not None:
            mock.stop()


def _stop_executions(session: Any) -> None:
    """Stop the test's Step Functions executions still running, and wait for their threads to end.

    moto runs each execution in a daemon thread that calls our in-process Lambdas; one left running
    (a test that cancelled or gave up on its run, a retry waiting out its backoff) would go on writing
    the Lambdas' log lines into the stdout of whichever test runs next in this worker, and read its
    environment variables.
    """
    from moto.stepfunctions.parser.utils import TMP_THREADS

    sfn = session.client("stepfunctions")
    for machine in sfn.list_state_machines()["stateMachines"]:
        for execution in sfn.list_executions(stateMachineArn=machine["stateMachineArn"],
                                             statusFilter="RUNNING")["executions"]:
            sfn.stop_execution(executionArn=execution["executionArn"], cause="the test ended")
    for thread in list(TMP_THREADS):
        thread.join(120)  # a stopped execution ends after the state it is in (one Lambda call)
    TMP_THREADS[:] = [t for t in TMP_THREADS if t.is_alive()]
