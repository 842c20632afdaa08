"""Runs of deployed pipelines on Step Functions: deploy a file, start a run, follow it into the
metadata store, redrive a failed one. What ``udop deploy | run --executor stepfunctions | redrive``
(``udop.cli.aws``) and the REST API both call; no click here.

Clients are passed in (tests, the API) or made from the usual boto3 configuration.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from udop.errors import InputError, RunNotFound, TransitionError, UdopError
from udop.settings import AwsResources, load_settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_stepfunctions import SFNClient

__all__ = ["POLL_SECONDS", "client", "deploy_file", "follow_run", "redrive_run", "start_run",
           "state_machine_arn"]

#: seconds between polls while following an execution
POLL_SECONDS = 1.0


@overload
def client(service: Literal["s3"]) -> S3Client: ...
@overload
def client(service: Literal["stepfunctions"]) -> SFNClient: ...
def client(service: Literal["s3", "stepfunctions"]) -> S3Client | SFNClient:
    """A client from the usual boto3 configuration (``AWS_ENDPOINT_URL`` included)."""
    import boto3

    if service == "s3":
        return boto3.client("s3")
    return boto3.client("stepfunctions")


def _load(path: str) -> Any:
    from udop.spec.loader import load_pipeline

    return load_pipeline(path)


def deploy_file(file: str, *, definitions_bucket: str, task_runner_arn: str, role_arn: str,
                log_group_arn: str | None = None, store: Any = None, s3: Any = None,
                sfn: Any = None, engines: Mapping[str, str] | None = None) -> Any:
    from udop.aws.definitions import upload_key
    from udop.aws.deployer import deploy_definition
    from udop.store import open_store

    pipeline = _load(file)  # SpecErrors: one line each, exit 2, nothing deployed
    suffix = Path(file).suffix if Path(file).suffix in (".yaml", ".yml", ".json") else ".yaml"
    key = upload_key(pipeline.name, suffix)
    text = Path(file).read_bytes()
    s3 = s3 or client("s3")
    own_store = store is None
    store = store or open_store()
    try:
        result = deploy_definition(text, source=key, bucket=definitions_bucket, s3=s3,
                                   sfn=sfn or client("stepfunctions"), store=store,
                                   task_runner_arn=task_runner_arn, role_arn=role_arn,
                                   log_group_arn=log_group_arn, engines=engines)
        if result.ok:
            # the deployer function sees the same content already deployed and leaves it
            s3.put_object(Bucket=definitions_bucket, Key=key, Body=text)
        return result
    finally:
        if own_store:
            store.close()


def state_machine_arn(sfn: Any, pipeline: str) -> str:
    from udop.aws.deployer import find_state_machine, state_machine_name

    arn = find_state_machine(sfn, state_machine_name(pipeline))
    if arn is None:
        raise InputError(f"pipeline {pipeline!r} is not deployed (no state machine "
                         f"{state_machine_name(pipeline)}); run `udop deploy FILE` first")
    return arn


def run_context(pipeline: Any, params: Mapping[str, Any], *, store: Any, sfn: Any,
                data_bucket: str | None = None, trigger: str | None = None) -> tuple[str, dict[str, Any]]:
    """(state machine ARN, the execution input's ``run`` without run id and logical date) of a run of
    the deployed ``pipeline``; ``InputError`` when the deployed version is not this definition."""
    from udop.aws.definitions import canonical_definition
    from udop.spec.params import jsonable_params, resolve_params
    from udop.store.sql import content_hash

    values = jsonable_params(resolve_params(pipeline, params))
    sm_arn = state_machine_arn(sfn, pipeline.name)
    record = store.get_pipeline(pipeline.name)
    version = record.latest if record else None
    if version is None or version.content_hash != content_hash(canonical_definition(pipeline)):
        raise InputError(f"pipeline {pipeline.name!r}: the deployed version differs from this file; "
                         "run `udop deploy FILE` first")
    run_ctx: dict[str, Any] = {"params": values, "pipeline_version": version.version}
    if trigger is not None:  # how it was started, for the run-events function that records the run
        run_ctx["trigger"] = trigger
    if data_bucket := data_bucket or load_settings(AwsResources).data_bucket:
        # foreach Map states list the data bucket themselves; the runner defaults to its own setting
        run_ctx.update(data_bucket=data_bucket, data_prefix="")
    return sm_arn, run_ctx


def start_run(pipeline: Any, params: Mapping[str, Any], *, store: Any, sfn: Any, run_id: str | None = None,
              logical_date: datetime | None = None, data_bucket: str | None = None,
              trigger: str | None = None) -> tuple[str, str, str]:
    """Start an execution of the deployed pipeline; returns (run id, execution ARN, state machine ARN).

    ``data_bucket``: default the ``UDOP_DATA_BUCKET`` setting (the CLI passes the stack's output).

    The execution is named after the run id: moto names unnamed executions "None", and a name makes
    a repeated start of the same run fail instead of running twice.
    """
    from udop.executor.local import new_run_id

    sm_arn, run_ctx = run_context(pipeline, params, store=store, sfn=sfn, data_bucket=data_bucket,
                                  trigger=trigger)
    run_id = run_id or new_run_id()
    logical = logical_date or datetime.now(UTC)
    run_ctx = {"run_id": run_id, **run_ctx, "logical_date": logical.isoformat()}
    from udop.observability import tracing
    from udop.observability.context import correlation_id, new_correlation_id

    # every task state passes `run` to the task runner: its log lines and spans join this request's
    run_ctx["correlation_id"] = correlation_id() or new_correlation_id()
    with tracing.span(f"run {pipeline.name}", {"udop.run_id": run_id, "udop.pipeline": pipeline.name}):
        if traceparent := tracing.inject({}).get("traceparent"):
            run_ctx["traceparent"] = traceparent
        run_input = {"run": run_ctx}
        resp = sfn.start_execution(stateMachineArn=sm_arn, name=run_id, input=json.dumps(run_input))
    return run_id, str(resp["executionArn"]), sm_arn


def follow_run(run_id: str, sm_arn: str, execution_arn: str, *, store: Any, sfn: Any,
               on_event: Callable[[Any], None] | None = None, poll: float | None = None,
               timeout: float | None = None, data_bucket: str | None = None) -> Any:
    """Poll the execution, mirror it into the store, report task changes; returns the final run.

    ``data_bucket``: default the ``UDOP_DATA_BUCKET`` setting."""
    from udop.aws.events import run_execution_arns, sync_run
    from udop.executor.events import RunEvent

    seen: dict[str, tuple[str, int]] = {}
    # full results (checks, lineage) when known
    data_bucket = data_bucket or load_settings(AwsResources).data_bucket
    s3 = client("s3") if data_bucket else None
    deadline = None if timeout is None else time.monotonic() + timeout
    conflicts = 0
    while True:
        status = sfn.describe_execution(executionArn=execution_arn)["status"]
        arns = run_execution_arns(execution_arn, run_id, execution_arn.rsplit(":", 1)[-1])
        try:
            run = sync_run(store, sfn, state_machine_arn=sm_arn, run_id=run_id, execution_arns=arns,
                           s3=s3, data_bucket=data_bucket)
            conflicts = 0
        except TransitionError:
            # the run-events function wrote the same change at the same moment: read the store again
            conflicts += 1
            if conflicts > 3:
                raise
            continue
        if run is not None and on_event is not None:
            for task in run.tasks:
                now = (task.state.value, len(task.attempts))
                if seen.get(task.task_id) != now:
                    seen[task.task_id] = now
                    on_event(RunEvent("task", run_id, task.state.value, task.task_id,
                                      len(task.attempts) or None,
                                      message=task.error_message))
        if status != "RUNNING":
            return run
        if deadline is not None and time.monotonic() > deadline:
            raise UdopError(f"run {run_id} still running after {timeout:g}s")
        time.sleep(POLL_SECONDS if poll is None else poll)


def redrive_run(run_id: str, *, store: Any, sfn: Any) -> tuple[str, str]:
    """Resume a failed run from its failed tasks; returns (execution ARN, state machine ARN).

    ``RedriveExecution`` where the service has it (AWS, within 14 days). Where it does not (moto),
    a new execution of the same run, named ``<run_id>--redrive-<n>``: the task runner's
    idempotency records are keyed by run id, so tasks that already succeeded return their results
    without running again and only the failed task and those after it do work.
    """
    from udop.aws.events import REDRIVE_SEPARATOR, run_id_of_execution

    run = store.get_run(run_id)
    if run is None:
        raise RunNotFound(f"no run {run_id!r} in the metadata store")
    if run.executor != "stepfunctions" or not run.external_id:
        raise InputError(f"run {run_id!r} ran locally; resume it with `udop run FILE --resume {run_id}`")
    if run.state == "succeeded":
        raise InputError(f"run {run_id!r} already succeeded; nothing to redrive")
    first = sfn.describe_execution(executionArn=run.external_id)
    sm_arn = first["stateMachineArn"]
    ours = sorted((e for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=sm_arn)
                   for e in page["executions"] if run_id_of_execution(e["name"]) == run_id),
                  key=lambda e: e["startDate"])
    redrives = [e for e in ours if REDRIVE_SEPARATOR in e["name"]]
    latest = str(ours[-1]["executionArn"]) if ours else run.external_id
    status = sfn.describe_execution(executionArn=latest)["status"]
    if status == "RUNNING":
        raise InputError(f"run {run_id!r} is still running ({latest})")
    try:
        sfn.redrive_execution(executionArn=latest)
        return latest, sm_arn
    except (NotImplementedError, AttributeError):
        pass
    except Exception as exc:  # botocore raises ClientError for an operation the endpoint lacks
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code not in ("InvalidAction", "NotImplemented", "UnknownOperationException", "501", "404"):
            raise InputError(f"run {run_id!r}: redrive refused: {exc}") from None
    name = f"{run_id}{REDRIVE_SEPARATOR}{len(redrives) + 1}"
    resp = sfn.start_execution(stateMachineArn=sm_arn, name=name, input=first["input"])
    return str(resp["executionArn"]), sm_arn


def retry_run_from(run_id: str, task_ids: list[str], *, store: Any, sfn: Any) -> tuple[list[str], str, str]:
    """"Retry from here" on Step Functions: run an ended run again from a task (``task_ids``: it and
    everything downstream of it); returns (the ids reset, execution ARN, state machine ARN).

    A redrive cannot run a succeeded state again, so this starts a new execution of the same run,
    named ``<run_id>--redrive-<n>`` (as an emulated redrive), with the first execution's input plus
    ``run.rerun_tasks``: the task runner returns the stored result of every other task that
    succeeded in the run without running it, and runs the listed ones again (their results from
    before are not reused). The run record is reset as locally (``reset_for_retry``: the tasks back
    to pending, their attempts kept, the run pending) before the execution starts; the run-events
    function then records the new attempts on top of the old ones."""
    import json

    from udop.aws.events import REDRIVE_SEPARATOR, run_id_of_execution

    run = store.get_run(run_id)
    if run is None:
        raise RunNotFound(f"no run {run_id!r} in the metadata store")
    if run.executor != "stepfunctions" or not run.external_id:
        raise InputError(f"run {run_id!r} ran locally; retry it there")
    first = sfn.describe_execution(executionArn=run.external_id)
    sm_arn = first["stateMachineArn"]
    ours = sorted((e for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=sm_arn)
                   for e in page["executions"] if run_id_of_execution(e["name"]) == run_id),
                  key=lambda e: e["startDate"])
    if any(e["status"] == "RUNNING" for e in ours):
        raise InputError(f"run {run_id!r} is still running; retry a task once the run has ended")
    reset = store.reset_for_retry(run_id, task_ids)  # TransitionError while the store says it runs
    body = json.loads(first.get("input") or "{}")
    body.setdefault("run", {})["rerun_tasks"] = reset
    redrives = [e for e in ours if REDRIVE_SEPARATOR in e["name"]]
    name = f"{run_id}{REDRIVE_SEPARATOR}{len(redrives) + 1}"
    resp = sfn.start_execution(stateMachineArn=sm_arn, name=name, input=json.dumps(body))
    return reset, str(resp["executionArn"]), sm_arn
