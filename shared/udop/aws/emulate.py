"""A local Step Functions rehearsal: the compiled state machine executed by moto in this process,
each Task state invoking udop's real task runner (``udop.aws.runner.run_payload``), datasets in
moto's in-memory S3. What ``udop run FILE --executor stepfunctions --emulate`` runs (the CLI side is
``udop.cli.emulate``); the test suite's AWS fixtures do the same (tests/integration/aws/conftest.py).

moto runs Lambda code only inside Docker; every invocation path goes through
``moto.awslambda.models.LambdaFunction._invoke_lambda``, which is replaced here for the duration of
the rehearsal by a call to the task runner, errors returned with the names the compiled
``Retry``/``Catch`` match (as the task runner function does).

moto's account lives in this process; with ``keep`` (one folder per run) what a resume needs
outlives it: the buckets' objects, the task runner's state store and the executions' histories
(``RecordedExecutions`` serves the earlier ones to the run record's sync).

Needs the ``emulate`` extra (moto). Where moto differs from AWS is listed in ``MOTO_DIFFERENCES``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from udop.errors import ConfigError

__all__ = ["MAX_HISTORY_EVENTS", "MAX_PAYLOAD_BYTES", "MOTO_DIFFERENCES", "EmulatedAccount", "Figures",
           "RecordedExecutions", "emulated_account", "execution_figures"]

#: Step Functions' quotas a rehearsal is measured against (moto enforces neither)
MAX_PAYLOAD_BYTES = 262_144
MAX_HISTORY_EVENTS = 25_000

#: what a rehearsal does not show, said after every one
MOTO_DIFFERENCES = (
    "IAM is not checked: the state machine's and the task runner's permissions are not exercised",
    "the task runner runs in this process with this machine's Python and packages, not the deployed "
    "Lambda layers: no cold starts, memory size, 15-minute timeout or 250 MB package limit",
    "moto enforces neither the 256 KiB payload limit nor the 25,000 history-event quota: the figures "
    "above are compared with them here",
    "S3 and the executions live in this process: their contents are kept in a folder of the run "
    "(under UDOP_HOME/rehearsals) so that `--emulate --resume RUN_ID` goes on from them, as a "
    "new execution of the same run (moto has no RedriveExecution); `udop redrive` talks to AWS",
    "as on AWS, retry intervals and timeouts are whole seconds, at least 1 s (docs/executors.md)",
)

REGION = "us-east-1"


@dataclass
class EmulatedAccount:
    """The resources of one rehearsal's account and its clients."""

    s3: Any
    sfn: Any
    data_bucket: str
    definitions_bucket: str
    task_runner_arn: str
    role_arn: str
    control: Any = None  # a second Step Functions client: a signal handler's, to stop the execution
    invocations: list[tuple[str, bool]] = field(default_factory=list)  # (task id, errored)


def _moto() -> Any:
    try:
        import moto
        from moto.awslambda.models import LambdaFunction
    except ImportError:
        raise ConfigError("--emulate needs moto: pip install 'udop[emulate]'") from None
    return moto, LambdaFunction


@contextmanager
def _aws_environment() -> Iterator[None]:
    """The process's AWS settings for the emulated account: a fixed region, no endpoint (an
    ``AWS_ENDPOINT_URL`` would send the calls past moto) and no profile; moto sets fake credentials."""
    drop = [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL")]
    drop += ["AWS_PROFILE", "AWS_DEFAULT_PROFILE"]
    # the task runner's EMF metrics and traces are for CloudWatch and X-Ray: not printed here
    quiet = {"POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_TRACE_DISABLED": "true"}
    with mock.patch.dict(os.environ, {"AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, **quiet}):
        for key in drop:
            os.environ.pop(key, None)  # restored by patch.dict
        yield


def _invoker(account: EmulatedAccount, *, code_dir: Path, tmp: Path, state_dir: Path) -> tuple[Any, Any]:
    """``LambdaFunction._invoke_lambda`` running the task runner in-process, and its state store
    (idempotency records of this rehearsal only)."""
    import boto3

    from udop.aws.errors import for_state_machine
    from udop.aws.runner import run_payload
    from udop.aws.settings import RunnerSettings
    from udop.state import open_state_store

    settings = RunnerSettings(data_bucket=account.data_bucket, definitions_bucket=account.definitions_bucket,
                              state_url=f"sqlite:///{(state_dir / 'state.db').as_posix()}", tmp_dir=str(tmp),
                              code_dir=str(code_dir))
    s3 = boto3.client("s3", region_name=REGION)
    state = open_state_store(settings.state_url)

    def invoke(fn: Any, event: Any = None) -> tuple[str, bool, str]:
        fn.logs_backend.ensure_log_group(fn.logs_group_name)
        if isinstance(event, str | bytes):
            event = json.loads(event or "{}")
        task_id = str(event.get("task_id", "")) if isinstance(event, dict) else ""
        try:
            result = run_payload(event, settings=settings, s3=s3, state=state)
        except Exception as exc:
            named = for_state_machine(exc)
            account.invocations.append((task_id, True))
            return json.dumps({"errorType": type(named).__name__, "errorMessage": str(named)}), True, ""
        account.invocations.append((task_id, False))
        return json.dumps(result), False, ""

    return invoke, state


def _package() -> bytes:
    """A deployment package for moto to hold: its code never runs (``invoke`` does the work)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("app.py", "def handler(event, context):\n    raise NotImplementedError\n")
    return buf.getvalue()


@contextmanager
def _quiet() -> Iterator[None]:
    """moto logs the interpreter's every branch and failure, the functions' logger every deploy as
    JSON for CloudWatch, the task runner its EMF metrics on stdout: the rehearsal reports those
    itself, so only warnings pass and the metrics are dropped."""
    import logging

    from udop.aws.observability import logger as function_logger
    from udop.aws.observability import metrics

    loggers = [logging.getLogger(name) for name in ("moto", "botocore", "aws_lambda_powertools")]
    before = [(lg, lg.level) for lg in loggers]
    function_level = function_logger.log_level
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL if lg.name == "moto" else logging.WARNING)
        function_logger.setLevel(logging.WARNING)
        with mock.patch("udop.aws.runner.emit_metric", return_value=None):
            yield
    finally:
        metrics.clear_metrics()
        for lg, level in before:
            lg.setLevel(level)
        function_logger.setLevel(function_level)


@contextmanager
def emulated_account(code_dir: Path, *, keep: Path | None = None) -> Iterator[EmulatedAccount]:
    """An emulated account with the data and definitions buckets, a role and the task runner, for
    the duration of the ``with``; ``code_dir`` is where python tasks' callables are imported from.

    ``keep``: a folder that outlives the process (one per run): the task runner's state store
    (its results for a redrive) is kept there, the buckets' objects and the executions' histories
    are saved there when the ``with`` ends and, when it holds them already, put back first."""
    moto, lambda_function = _moto()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="udop-emulate-")))
        state_dir = tmp
        saved: dict[str, Any] = {}
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            state_dir = keep
            if (keep / "account.json").exists():
                saved = json.loads((keep / "account.json").read_text())
            _drop_locks(keep / "state.db")
        stack.enter_context(_aws_environment())
        stack.enter_context(_quiet())
        stack.enter_context(moto.mock_aws(config={"stepfunctions": {"execute_state_machine": True}}))
        import boto3

        prefix = str(saved.get("prefix") or f"udop-rehearsal-{uuid.uuid4().hex[:8]}")
        s3 = boto3.client("s3", region_name=REGION)
        for bucket in (f"{prefix}-data", f"{prefix}-definitions"):
            s3.create_bucket(Bucket=bucket)
            if keep is not None:
                _restore_bucket(s3, bucket, keep / "buckets" / bucket)
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRole",
            "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com"]}}]}
        role_arn = boto3.client("iam", region_name=REGION).create_role(
            RoleName=f"{prefix}-role", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        account = EmulatedAccount(s3=s3, sfn=boto3.client("stepfunctions", region_name=REGION),
                                  data_bucket=f"{prefix}-data", definitions_bucket=f"{prefix}-definitions",
                                  task_runner_arn="", role_arn=role_arn,
                                  control=boto3.client("stepfunctions", region_name=REGION))
        account.task_runner_arn = boto3.client("lambda", region_name=REGION).create_function(
            FunctionName=f"{prefix}-task-runner", Runtime="python3.12", Role=role_arn, Handler="app.handler",
            Code={"ZipFile": _package()}, Timeout=900, MemorySize=1024)["FunctionArn"]
        invoke, state = _invoker(account, code_dir=code_dir, tmp=tmp, state_dir=state_dir)
        if close := getattr(state, "close", None):
            stack.callback(close)

        def _invoke_lambda(self: Any, event: Any = None) -> tuple[str, bool, str]:
            return invoke(self, event)  # type: ignore[no-any-return]

        stack.enter_context(mock.patch.object(lambda_function, "_invoke_lambda", _invoke_lambda))
        if keep is not None:
            account.sfn = RecordedExecutions(account.sfn, keep / "executions.json")
        yield account
        if keep is not None:
            (keep / "account.json").write_text(json.dumps({"prefix": prefix}))
            for bucket in (account.data_bucket, account.definitions_bucket):
                _save_bucket(s3, bucket, keep / "buckets" / bucket)
            account.sfn.save()


def _drop_locks(state_db: Path) -> None:
    """The task runner's locks left by a rehearsal that is over (its process ended, a second signal
    did not wait for the invocation in flight): no invocation of it runs any more."""
    import sqlite3

    if not state_db.exists():
        return
    conn = sqlite3.connect(state_db)
    try:
        with conn:
            conn.execute("DELETE FROM udop_state WHERE key LIKE 'udop:lock:%'")
    except sqlite3.OperationalError:
        pass  # no table yet: nothing was locked
    finally:
        conn.close()


def _save_bucket(s3: Any, bucket: str, folder: Path) -> None:
    import shutil

    if folder.exists():
        shutil.rmtree(folder)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            target = folder / obj["Key"]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))


def _restore_bucket(s3: Any, bucket: str, folder: Path) -> None:
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*")):
        # a deploy status would tell the deployer the state machine exists: this account has none yet
        if path.is_file() and not path.name.endswith(".status.json"):
            s3.upload_file(str(path), bucket, path.relative_to(folder).as_posix())


def _encode(value: Any) -> Any:
    from datetime import datetime

    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _decode(obj: dict[str, Any]) -> Any:
    from datetime import datetime

    if set(obj) == {"$datetime"}:
        return datetime.fromisoformat(obj["$datetime"])
    return obj


class _Pages:
    def __init__(self, pages: Any) -> None:
        self.pages = pages

    def paginate(self, **kwargs: Any) -> Any:
        return self.pages(**kwargs)


class RecordedExecutions:
    """The Step Functions client of a rehearsal that keeps its executions: moto's for everything,
    and for the executions of earlier rehearsals of the same runs (gone with their processes) their
    description and history as saved, so that a resumed run's record is built from all of its
    executions as on AWS. ``save`` writes this process's executions beside the earlier ones."""

    def __init__(self, sfn: Any, path: Path) -> None:
        self._sfn = sfn
        self._path = path
        self._saved: dict[str, Any] = (json.loads(path.read_text(), object_hook=_decode)
                                       if path.exists() else {})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sfn, name)

    def redrive_execution(self, **_: Any) -> Any:
        raise NotImplementedError("moto has no RedriveExecution")  # redrive_run starts a new execution

    def describe_execution(self, *, executionArn: str) -> Any:  # boto3's name
        if executionArn in self._saved:
            return self._saved[executionArn]["describe"]
        return self._sfn.describe_execution(executionArn=executionArn)

    def get_paginator(self, name: str) -> Any:
        real = self._sfn.get_paginator(name)
        if name == "get_execution_history":
            def history(**kwargs: Any) -> Any:
                arn = kwargs["executionArn"]
                if arn in self._saved:
                    return iter([{"events": self._saved[arn]["events"]}])
                return real.paginate(**kwargs)
            return _Pages(history)
        if name == "list_executions":
            def executions(**kwargs: Any) -> Any:
                machine = kwargs.get("stateMachineArn")
                earlier = [{k: v for k, v in e["describe"].items() if k in _LISTED}
                           for e in self._saved.values() if e["describe"].get("stateMachineArn") == machine]
                yield {"executions": earlier}
                yield from real.paginate(**kwargs)
            return _Pages(executions)
        return real

    def save(self) -> None:
        """Every execution moto holds (they have ended or been stopped), with the earlier ones."""
        saved = dict(self._saved)
        for page in self._sfn.get_paginator("list_state_machines").paginate():
            for machine in page["stateMachines"]:
                for listed in self._sfn.get_paginator("list_executions").paginate(
                        stateMachineArn=machine["stateMachineArn"]):
                    for ex in listed["executions"]:
                        arn = ex["executionArn"]
                        describe = self._sfn.describe_execution(executionArn=arn)
                        describe.pop("ResponseMetadata", None)
                        if describe["status"] == "RUNNING":  # its process is ending: it ends too
                            describe["status"] = "ABORTED"
                        events = [ev for history in self._sfn.get_paginator("get_execution_history").paginate(
                            executionArn=arn) for ev in history["events"]]
                        saved[arn] = {"describe": describe, "events": events}
        self._path.write_text(json.dumps(saved, default=_encode))


#: the fields of a ListExecutions item
_LISTED = ("executionArn", "stateMachineArn", "name", "status", "startDate", "stopDate")


@dataclass(frozen=True)
class Figures:
    """What Step Functions would have counted for the run's executions."""

    history_events: int
    largest_payload_bytes: int
    largest_payload_state: str


def execution_figures(sfn: Any, execution_arns: list[str]) -> Figures:
    """History events of the executions, and the largest state input or output among them."""
    events = 0
    largest, where = 0, ""
    current = ""
    for arn in execution_arns:
        for page in sfn.get_paginator("get_execution_history").paginate(executionArn=arn):
            for event in page["events"]:
                events += 1
                for key, details in event.items():
                    if not key.endswith("EventDetails") or not isinstance(details, dict):
                        continue
                    current = str(details.get("name") or current)
                    for part in ("input", "output"):
                        size = len(str(details.get(part) or "").encode())
                        if size > largest:
                            largest, where = size, f"{current} {part}" if current else part
    return Figures(events, largest, where)
