"""``udop compile | deploy | redrive`` and ``udop run --executor stepfunctions``: the commands; the
work is ``udop.aws.runs``.

They talk to the AWS account of the usual boto3 configuration, or to ``AWS_ENDPOINT_URL``
(LocalStack, a moto server). Where the platform's resources are comes from the deployed stack's
outputs (``udop.aws.platform``: stack ``UDOP_STACK_NAME`` or ``--stack``, default ``Udop``); an
option or a variable (``UDOP_DEFINITIONS_BUCKET``, ``UDOP_TASK_RUNNER_ARN``,
``UDOP_STATE_MACHINE_ROLE_ARN``, ...) wins. Run records go to the configured metadata store
(``UDOP_DATABASE_URL``), the same one the run-events function writes.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from udop.aws.platform import ENGINE_FIELDS, OUTPUTS, Platform, aws_errors
from udop.aws.runs import client as _client
from udop.aws.runs import deploy_file, follow_run, redrive_run, start_run

__all__ = ["compile_command", "deploy_command", "redrive_and_follow", "redrive_command",
           "run_on_stepfunctions"]


_STACK_HELP = "The deployed udop stack whose outputs name the platform's resources (default: " \
              "$UDOP_STACK_NAME, else Udop)."


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
@click.option("--stack", help=_STACK_HELP)
@click.option("--definitions-bucket", help="Default: $UDOP_DEFINITIONS_BUCKET, else the stack's output.")
@click.option("--task-runner-arn", help="Default: $UDOP_TASK_RUNNER_ARN, else the stack's output.")
@click.option("--state-machine-role-arn",
              help="Default: $UDOP_STATE_MACHINE_ROLE_ARN, else the stack's output.")
@click.option("--state-machine-log-group-arn",
              help="Log group of the state machine (level ALL); default: $UDOP_STATE_MACHINE_LOG_GROUP_ARN, "
                   "else the stack's output; neither: no logging.")
def deploy_command(file: str, *, stack: str | None, definitions_bucket: str | None,
                   task_runner_arn: str | None, state_machine_role_arn: str | None,
                   state_machine_log_group_arn: str | None) -> None:
    """Deploy FILE as the state machine udop-<name> (created or updated, a new version published).

    The definition is validated and deployed now (errors are printed, and the existing state machine
    is left as it was), then uploaded to pipelines/<name>.<ext> in the definitions bucket.
    """
    pipeline = _load(file)  # a bad definition is reported before any AWS configuration is looked at
    platform = Platform(stack)
    if pipeline.stream is not None:
        _deploy_stream(pipeline, platform, definitions_bucket)
        return
    with aws_errors():
        engines: dict[str, str] = {}
        if any(getattr(t, "engine", "duckdb") != "duckdb" for t in pipeline.spec.tasks):
            # the platform's engines (UDOP_EMR_APPLICATION_ID ..., else the stack's outputs)
            engines = {OUTPUTS[f]: v for f in ENGINE_FIELDS if (v := platform.optional(f))}
        result = deploy_file(file, engines=engines,
                             definitions_bucket=platform.require("definitions_bucket", definitions_bucket),
                             task_runner_arn=platform.require("task_runner_arn", task_runner_arn),
                             role_arn=platform.require("state_machine_role_arn", state_machine_role_arn),
                             log_group_arn=platform.optional("state_machine_log_group_arn",
                                                             state_machine_log_group_arn))
    if not result.ok:
        for err in result.errors:
            click.echo(err["text"], err=True)
        raise click.exceptions.Exit(2)
    note = " (unchanged)" if result.skipped else ""
    click.echo(f"{result.pipeline}: version {result.version} deployed{note} -> {result.state_machine_arn}")
    if result.schedule and result.schedule != "none":
        click.echo(f"{result.pipeline}: schedule {result.schedule}")
    if result.trigger and result.trigger != "none":
        click.echo(f"{result.pipeline}: S3 trigger rule {result.trigger}")
    if result.after_trigger and result.after_trigger != "none":
        click.echo(f"{result.pipeline}: after-trigger rule {result.after_trigger}")


def _deploy_stream(pipeline: Any, platform: Platform, definitions_bucket: str | None) -> None:
    """A stream pipeline: a new version in the definitions bucket and an event source mapping on the
    stream-runner function (docs/streams.md)."""
    import boto3

    from udop.aws.streams import deploy_stream
    from udop.store import open_store

    bucket = platform.require("definitions_bucket", definitions_bucket)
    function_arn = platform.require("stream_runner_arn")
    make: Any = boto3.client  # boto3 reads AWS_ENDPOINT_URL itself
    store = open_store()
    try:
        with aws_errors():
            done = deploy_stream(pipeline, bucket=bucket, s3=make("s3"), lam=make("lambda"), store=store,
                                 function_arn=function_arn, client=make)
    finally:
        store.close()
    click.echo(f"{done.pipeline}: version {done.version} deployed -> event source mapping "
               f"{done.mapping_uuid} ({done.source} -> {function_arn})")


def run_on_stepfunctions(pipeline_path: str, params: Mapping[str, Any], follow: bool = True, *,
                         run_id: str | None = None, logical_date: datetime | None = None,
                         store: Any = None, sfn: Any = None, poll: float | None = None,
                         stack: str | None = None) -> int:
    """``udop run FILE --executor stepfunctions``: start, follow with progress, exit 0/1 by the run.

    ``run_id`` and ``logical_date`` are the ``--run-id`` / ``--logical-date`` options (default: a new
    id, now). With ``follow=False`` it returns 0 once the execution started."""
    pipeline = _load(pipeline_path)
    with aws_errors():
        return _run(pipeline, params, follow, run_id=run_id, logical_date=logical_date, store=store, sfn=sfn,
                    poll=poll, stack=stack)


def _run(pipeline: Any, params: Mapping[str, Any], follow: bool, *, run_id: str | None,
         logical_date: datetime | None, store: Any, sfn: Any, poll: float | None, stack: str | None) -> int:
    from udop.cli.progress import make_display
    from udop.store import open_store

    sfn = sfn or _client("stepfunctions")
    data_bucket = Platform(stack).optional("data_bucket")
    own_store = store is None
    store = store or open_store()
    try:
        run_id, execution_arn, sm_arn = start_run(pipeline, params, store=store, sfn=sfn, run_id=run_id,
                                                  logical_date=logical_date, data_bucket=data_bucket,
                                                  trigger="cli")
        click.echo(f"run {run_id} started: {execution_arn}")
        if not follow:
            return 0
        display = make_display(pipeline, live=sys.stdout.isatty())
        with display:
            run = follow_run(run_id, sm_arn, execution_arn, store=store, sfn=sfn, on_event=display.event,
                             poll=poll, data_bucket=data_bucket)
        display.summary(run, store.get_checks(run_id))
        if run.state != "succeeded" and run.error:
            click.echo(f"error: {run.error}", err=True)
        return 0 if run.state == "succeeded" else 1
    finally:
        if own_store:
            store.close()


@click.command("redrive")
@click.argument("run_id")
@click.option("--follow/--no-follow", default=True, show_default=True, help="Follow the run to its end.")
@click.option("--stack", help=_STACK_HELP)
def redrive_command(run_id: str, follow: bool, stack: str | None) -> None:
    """Resume the failed Step Functions run RUN_ID from its failed task; exit 0/1 by the run."""
    with aws_errors():
        code = redrive_and_follow(run_id, follow=follow, stack=stack)
    raise click.exceptions.Exit(code)


def redrive_and_follow(run_id: str, *, follow: bool = True, store: Any = None, sfn: Any = None,
                       poll: float | None = None, stack: str | None = None) -> int:
    from udop.executor.events import RunEvent
    from udop.store import open_store

    sfn = sfn or _client("stepfunctions")
    data_bucket = Platform(stack).optional("data_bucket")
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

        run = follow_run(run_id, sm_arn, execution_arn, store=store, sfn=sfn, on_event=show, poll=poll,
                         data_bucket=data_bucket)
        click.echo(f"run {run_id} {run.state.value}" + (f": {run.error}" if run.error else ""))
        return 0 if run.state == "succeeded" else 1
    finally:
        if own_store:
            store.close()

