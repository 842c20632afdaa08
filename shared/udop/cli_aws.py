"""``udop compile | deploy | redrive`` and ``udop run --executor stepfunctions``.

They talk to the AWS account of the usual boto3 configuration, or to ``AWS_ENDPOINT_URL``
(LocalStack, a moto server). Where the platform's resources are comes from the environment, as the
CDK app's outputs name them: ``UDOP_DEFINITIONS_BUCKET``, ``UDOP_TASK_RUNNER_ARN``,
``UDOP_STATE_MACHINE_ROLE_ARN``; run records go to the configured metadata store
(``UDOP_DATABASE_URL``), the same one the run-events function writes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from udop.errors import ConfigError, InputError, RunNotFound, TransitionError, UdopError

__all__ = ["compile_command", "deploy_command", "redrive_command", "redrive_run", "run_on_stepfunctions"]

#: seconds between polls while following an execution
POLL_SECONDS = 1.0


def _env(name: str, given: str | None) -> str:
    value = given or os.environ.get(name)
    if not value:
        raise ConfigError(f"{name} is not set: export it (the CDK app prints it as a stack output) "
                          f"or pass --{name.removeprefix('UDOP_').lower().replace('_', '-')}")
    return value


def _client(service: str) -> Any:
    import boto3  # type: ignore[import-untyped]

    return boto3.client(service)


def _load(path: str) -> Any:
    from udop.spec.loader import load_pipeline

    return load_pipeline(path)


@click.command("compile")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the ASL here (default stdout); "
              "child state machines go next to it as <name>.<child>.json.")
def compile_command(file: str, output: str | None) -> None:
    """Compile FILE to the Amazon States Language definition of a Standard workflow.

    The task runner's ARN stays a ${TaskRunnerArn} substitution, so the output is plain JSON that
    linters read; `udop deploy` substitutes it.
    """
    from udop.compiler import compile_pipeline

    compiled = compile_pipeline(_load(file))
    text = compiled.to_json(indent=2)
    children = compiled.all_children()
    if output is None:
        click.echo(text)
        if children:
            click.echo(f"note: {len(children)} child state machine(s) not shown; write them with -o FILE",
                       err=True)
    else:
        Path(output).write_text(text + "\n")
        for child in children:
            Path(output).with_suffix(f".{child.name}.json").write_text(child.to_json(indent=2) + "\n")
    for machine in [compiled, *children]:
        est = machine.estimates
        click.echo(f"udop-{machine.machine_name}: {est.definition_bytes:,} bytes, {est.states} states, "
                   f"{est.tasks} tasks, up to {est.max_history_events:,} history events per execution",
                   err=True)


@click.command("deploy")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--definitions-bucket", help="Default: $UDOP_DEFINITIONS_BUCKET.")
@click.option("--task-runner-arn", help="Default: $UDOP_TASK_RUNNER_ARN.")
@click.option("--state-machine-role-arn", help="Default: $UDOP_STATE_MACHINE_ROLE_ARN.")
@click.option("--state-machine-log-group-arn",
              help="Log group of the state machine (level ALL); default: $UDOP_STATE_MACHINE_LOG_GROUP_ARN, "
                   "unset: no logging.")
def deploy_command(file: str, definitions_bucket: str | None, task_runner_arn: str | None,
                   state_machine_role_arn: str | None, state_machine_log_group_arn: str | None) -> None:
    """Deploy FILE as the state machine udop-<name> (created or updated, a new version published).

    The definition is validated and deployed now (errors are printed, and the existing state machine
    is left as it was), then uploaded to pipelines/<name>.<ext> in the definitions bucket.
    """
    result = deploy_file(file, definitions_bucket=_env("UDOP_DEFINITIONS_BUCKET", definitions_bucket),
                         task_runner_arn=_env("UDOP_TASK_RUNNER_ARN", task_runner_arn),
                         role_arn=_env("UDOP_STATE_MACHINE_ROLE_ARN", state_machine_role_arn),
                         log_group_arn=state_machine_log_group_arn
                         or os.environ.get("UDOP_STATE_MACHINE_LOG_GROUP_ARN") or None)
    if not result.ok:
        for err in result.errors:
            click.echo(err["text"], err=True)
        raise click.exceptions.Exit(2)
    note = " (unchanged)" if result.skipped else ""
    click.echo(f"{result.pipeline}: version {result.version} deployed{note} -> {result.state_machine_arn}")


def deploy_file(file: str, *, definitions_bucket: str, task_runner_arn: str, role_arn: str,
                log_group_arn: str | None = None, store: Any = None, s3: Any = None,
                sfn: Any = None) -> Any:
    from udop.aws.definitions import upload_key
    from udop.aws.deployer import deploy_definition
    from udop.store import open_store

    pipeline = _load(file)  # SpecErrors: one line each, exit 2, nothing deployed
    suffix = Path(file).suffix if Path(file).suffix in (".yaml", ".yml", ".json") else ".yaml"
    key = upload_key(pipeline.name, suffix)
    text = Path(file).read_bytes()
    s3 = s3 or _client("s3")
    own_store = store is None
    store = store or open_store()
    try:
        result = deploy_definition(text, source=key, bucket=definitions_bucket, s3=s3,
                                   sfn=sfn or _client("stepfunctions"), store=store,
                                   task_runner_arn=task_runner_arn, role_arn=role_arn,
                                   log_group_arn=log_group_arn)
        if result.ok:
            # the deployer function sees the same content already deployed and leaves it
            s3.put_object(Bucket=definitions_bucket, Key=key, Body=text)
        return result
    finally:
        if own_store:
            store.close()


def _state_machine_arn(sfn: Any, pipeline: str) -> str:
    from udop.aws.deployer import _find_state_machine, state_machine_name

    arn = _find_state_machine(sfn, state_machine_name(pipeline))
    if arn is None:
        raise InputError(f"pipeline {pipeline!r} is not deployed (no state machine "
                         f"{state_machine_name(pipeline)}); run `udop deploy FILE` first")
    return arn


def start_run(pipeline: Any, params: Mapping[str, Any], *, store: Any, sfn: Any, run_id: str | None = None,
              logical_date: datetime | None = None) -> tuple[str, str, str]:
    """Start an execution of the deployed pipeline; returns (run id, execution ARN, state machine ARN).

    The execution is named after the run id: moto names unnamed executions "None", and a name makes
    a repeated start of the same run fail instead of running twice.
    """
    from udop.aws.definitions import canonical_definition
    from udop.executor.local import _jsonable, new_run_id
    from udop.spec.params import resolve_params
    from udop.store.sql import content_hash

    values = _jsonable(resolve_params(pipeline, params))
    sm_arn = _state_machine_arn(sfn, pipeline.name)
    record = store.get_pipeline(pipeline.name)
    version = record.latest if record else None
    if version is None or version.content_hash != content_hash(canonical_definition(pipeline)):
        raise InputError(f"pipeline {pipeline.name!r}: the deployed version differs from this file; "
                         "run `udop deploy FILE` first")
    run_id = run_id or new_run_id()
    logical = logical_date or datetime.now(UTC)
    run_ctx: dict[str, Any] = {"run_id": run_id, "params": values, "logical_date": logical.isoformat(),
                               "pipeline_version": version.version}
    if data_bucket := os.environ.get("UDOP_DATA_BUCKET"):
        # foreach Map states list the data bucket themselves; the runner defaults to its own setting
        run_ctx.update(data_bucket=data_bucket, data_prefix="")
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
               timeout: float | None = None) -> Any:
    """Poll the execution, mirror it into the store, report task changes; returns the final run."""
    from udop.aws.events import run_execution_arns, sync_run
    from udop.executor.events import RunEvent

    seen: dict[str, tuple[str, int]] = {}
    data_bucket = os.environ.get("UDOP_DATA_BUCKET")  # full results (checks, lineage) when known
    s3 = _client("s3") if data_bucket else None
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


def run_on_stepfunctions(pipeline_path: str, params: Mapping[str, Any], follow: bool = True, *,
                         run_id: str | None = None, logical_date: datetime | None = None,
                         store: Any = None, sfn: Any = None, poll: float | None = None) -> int:
    """``udop run FILE --executor stepfunctions``: start, follow with progress, exit 0/1 by the run.

    ``run_id`` and ``logical_date`` are the ``--run-id`` / ``--logical-date`` options (default: a new
    id, now). With ``follow=False`` it returns 0 once the execution started."""
    from udop.cli.progress import make_display
    from udop.store import open_store

    pipeline = _load(pipeline_path)
    sfn = sfn or _client("stepfunctions")
    own_store = store is None
    store = store or open_store()
    try:
        run_id, execution_arn, sm_arn = start_run(pipeline, params, store=store, sfn=sfn, run_id=run_id,
                                                  logical_date=logical_date)
        click.echo(f"run {run_id} started: {execution_arn}")
        if not follow:
            return 0
        display = make_display(pipeline, live=sys.stdout.isatty())
        with display:
            run = follow_run(run_id, sm_arn, execution_arn, store=store, sfn=sfn, on_event=display.event,
                             poll=poll)
        display.summary(run, store.get_checks(run_id))
        if run.state != "succeeded" and run.error:
            click.echo(f"error: {run.error}", err=True)
        return 0 if run.state == "succeeded" else 1
    finally:
        if own_store:
            store.close()


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


@click.command("redrive")
@click.argument("run_id")
@click.option("--follow/--no-follow", default=True, show_default=True, help="Follow the run to its end.")
def redrive_command(run_id: str, follow: bool) -> None:
    """Resume the failed Step Functions run RUN_ID from its failed task; exit 0/1 by the run."""
    raise click.exceptions.Exit(redrive_and_follow(run_id, follow=follow))


def redrive_and_follow(run_id: str, *, follow: bool = True, store: Any = None, sfn: Any = None,
                       poll: float | None = None) -> int:
    from udop.executor.events import RunEvent
    from udop.store import open_store

    sfn = sfn or _client("stepfunctions")
    own_store = store is None
    store = store or open_store()
    try:
        execution_arn, sm_arn = redrive_run(run_id, store=store, sfn=sfn)
        click.echo(f"run {run_id} redriven: {execution_arn}")
        if not follow:
            return 0

        def show(event: RunEvent) -> None:
            attempt = f" (attempt {event.attempt})" if event.attempt else ""
            click.echo(f"  {event.task_id}: {event.state}{attempt}")

        run = follow_run(run_id, sm_arn, execution_arn, store=store, sfn=sfn, on_event=show, poll=poll)
        click.echo(f"run {run_id} {run.state.value}" + (f": {run.error}" if run.error else ""))
        return 0 if run.state == "succeeded" else 1
    finally:
        if own_store:
            store.close()

