"""``udop run FILE --executor stepfunctions --emulate``: rehearse the pipeline on Step Functions
before deploying it (``udop.aws.emulate``): compiled, deployed to moto in this process, run with the
real task runner, followed with the same progress display and run record as the other executors,
then the figures Step Functions would count and what moto does not show.

``--resume RUN_ID`` goes on with a rehearsed run that failed or was cancelled: the run's folder
(``<UDOP_HOME>/rehearsals/<run id>``) holds what the earlier process's account held, and the run
goes on as a new execution, as ``udop redrive`` does on moto. SIGINT/SIGTERM stop the execution
(``StopExecution``) and record the run cancelled."""

from __future__ import annotations

import signal
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import click

__all__ = ["rehearse"]


def rehearsal_folder(run_id: str) -> Path:
    """Where a rehearsed run's account is kept between commands."""
    from udop.settings import get_settings

    return Path(get_settings().home).absolute() / "rehearsals" / run_id


def rehearse(pipeline_path: str, params: Mapping[str, Any], *, run_id: str | None = None,
             resume: str | None = None, logical_date: datetime | None = None, store: Any = None,
             poll: float = 0.1) -> int:
    """Exit code: 0 the run succeeded, 1 it failed, 2 the definition does not deploy or the run
    cannot be resumed, 128 + the signal's number when a signal cancelled it."""
    from udop.aws.emulate import (
        MAX_HISTORY_EVENTS,
        MAX_PAYLOAD_BYTES,
        MOTO_DIFFERENCES,
        emulated_account,
        execution_figures,
    )
    from udop.aws.events import run_execution_arns
    from udop.aws.runs import deploy_file, follow_run, redrive_run, start_run
    from udop.cli.progress import make_display
    from udop.errors import InputError
    from udop.executor.local import new_run_id
    from udop.spec.loader import load_pipeline
    from udop.store import open_store

    pipeline = load_pipeline(pipeline_path)  # a bad definition: one line, exit 2, nothing emulated
    if resume and run_id:
        raise InputError("give either --resume RUN_ID or --run-id ID, not both")
    own_store = store is None
    store = store or open_store()
    stopped_by: list[int] = []
    try:
        if resume:
            earlier = store.get_run(resume)
            folder = rehearsal_folder(resume)
            kept = (folder / "executions.json").exists()
            if earlier is None or earlier.executor != "stepfunctions" or not kept:
                raise InputError(f"run {resume!r} was not rehearsed here (nothing in {folder}); "
                                 f"resume a local run without --executor, a deployed one with `udop redrive`")
            if earlier.pipeline != pipeline.name:
                raise InputError(f"run {resume!r} is of pipeline {earlier.pipeline!r}, not {pipeline.name!r}")
        run_id = resume or run_id or new_run_id()
        with emulated_account(Path(pipeline_path).parent.resolve(), keep=rehearsal_folder(run_id)) as account:
            result = deploy_file(pipeline_path, definitions_bucket=account.definitions_bucket,
                                 task_runner_arn=account.task_runner_arn, role_arn=account.role_arn,
                                 store=store, s3=account.s3, sfn=account.sfn)
            if not result.ok:
                for err in result.errors:
                    click.echo(err["text"], err=True)
                return 2
            click.echo(f"rehearsal on moto: {pipeline.name} compiled and deployed as "
                       f"{result.state_machine_arn}")
            if resume:
                execution_arn, sm_arn = redrive_run(run_id, store=store, sfn=account.sfn)
                click.echo(f"run {run_id} resumed: {execution_arn}")
            else:
                run_id, execution_arn, sm_arn = start_run(pipeline, params, store=store, sfn=account.sfn,
                                                          run_id=run_id, logical_date=logical_date,
                                                          data_bucket=account.data_bucket)
                click.echo(f"run {run_id} started: {execution_arn}")
            control = account.control

            def stop(signum: int, _frame: object) -> None:
                if stopped_by:  # a second signal: stop waiting for the task runner call in flight
                    raise KeyboardInterrupt
                stopped_by.append(signum)
                # on its own client: the main thread may be in a call on account.sfn
                name = signal.Signals(signum).name
                control.stop_execution(executionArn=execution_arn, error="udop.Cancelled",
                                       cause=f"cancelled by the user ({name})")
                # moto, unlike AWS, ends the stopped execution only when the task runner call in
                # flight returns: say why the command has not ended yet
                click.echo(f"udop: stopping run {run_id} ({name}): the execution is stopped; waiting for the "
                           "task in flight to return (a second signal does not wait)", err=True)

            display = make_display(pipeline, live=sys.stdout.isatty())
            previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                with display:
                    run = follow_run(run_id, sm_arn, execution_arn, store=store, sfn=account.sfn,
                                     on_event=display.event, poll=poll, data_bucket=account.data_bucket)
            except KeyboardInterrupt:
                # moto ends a stopped execution when its Task call returns: not waited for
                from udop.states import RunState, TaskState

                run = store.get_run(run_id)
                if run.state not in (RunState.CANCELLED, RunState.FAILED, RunState.SUCCEEDED):
                    open_tasks = [t.task_id for t in run.tasks if t.state in (
                        TaskState.PENDING, TaskState.RUNNING, TaskState.RETRYING)]
                    if open_tasks:
                        store.set_task_states(run_id, open_tasks, TaskState.CANCELLED)
                    run = store.set_run_state(run_id, RunState.CANCELLED, error="udop.Cancelled")
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
            display.summary(store.get_run(run_id), store.get_checks(run_id),
                            resume=f"udop run {pipeline_path} --executor stepfunctions --emulate --resume")
            if run.state != "succeeded" and run.error and not stopped_by:
                click.echo(f"error: {run.error}", err=True)
            arns = run_execution_arns(execution_arn, run_id, execution_arn.rsplit(":", 1)[-1])
            figures = execution_figures(account.sfn, arns)
            failed = sum(1 for _, errored in account.invocations if errored)
        click.echo(f"rehearsal: {figures.history_events:,} history events (AWS quota "
                   f"{MAX_HISTORY_EVENTS:,} per execution), largest payload "
                   f"{figures.largest_payload_bytes:,} bytes ({figures.largest_payload_state or '-'}; "
                   f"AWS limit {MAX_PAYLOAD_BYTES:,}), "
                   f"{len(account.invocations)} task runner invocation(s), {failed} failed")
        if figures.history_events > MAX_HISTORY_EVENTS:
            click.echo("warning: on AWS this execution would fail: more history events than the quota",
                       err=True)
        if figures.largest_payload_bytes > MAX_PAYLOAD_BYTES:
            click.echo("warning: on AWS this execution would fail with States.DataLimitExceeded", err=True)
        for note in MOTO_DIFFERENCES:
            click.echo(f"note (moto, not AWS): {note}", err=True)
        if stopped_by and run.state == "cancelled":
            click.echo(f"udop: run {run_id} cancelled ({signal.Signals(stopped_by[0]).name}); continue it "
                       f"with: udop run {pipeline_path} --executor stepfunctions --emulate --resume {run_id}",
                       err=True)
            return 128 + stopped_by[0]
        return 0 if run.state == "succeeded" else 1
    finally:
        if own_store:
            store.close()
