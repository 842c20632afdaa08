"""``udop run FILE --executor stepfunctions --emulate``: rehearse the pipeline on Step Functions
before deploying it (``udop.aws.emulate``): compiled, deployed to moto in this process, run with the
real task runner, followed with the same progress display and run record as the other executors,
then the figures Step Functions would count and what moto does not show."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import click

__all__ = ["rehearse"]


def rehearse(pipeline_path: str, params: Mapping[str, Any], *, run_id: str | None = None,
             logical_date: datetime | None = None, store: Any = None, poll: float = 0.1) -> int:
    """Exit code: 0 the run succeeded, 1 it failed, 2 the definition does not deploy."""
    from udop.aws.emulate import (
        MAX_HISTORY_EVENTS,
        MAX_PAYLOAD_BYTES,
        MOTO_DIFFERENCES,
        emulated_account,
        execution_figures,
    )
    from udop.aws.events import run_execution_arns
    from udop.aws.runs import deploy_file, follow_run, start_run
    from udop.cli.progress import make_display
    from udop.spec.loader import load_pipeline
    from udop.store import open_store

    pipeline = load_pipeline(pipeline_path)  # a bad definition: one line, exit 2, nothing emulated
    own_store = store is None
    store = store or open_store()
    try:
        with emulated_account(Path(pipeline_path).parent.resolve()) as account:
            result = deploy_file(pipeline_path, definitions_bucket=account.definitions_bucket,
                                 task_runner_arn=account.task_runner_arn, role_arn=account.role_arn,
                                 store=store, s3=account.s3, sfn=account.sfn)
            if not result.ok:
                for err in result.errors:
                    click.echo(err["text"], err=True)
                return 2
            click.echo(f"rehearsal on moto: {pipeline.name} compiled and deployed as "
                       f"{result.state_machine_arn}")
            run_id, execution_arn, sm_arn = start_run(pipeline, params, store=store, sfn=account.sfn,
                                                      run_id=run_id, logical_date=logical_date,
                                                      data_bucket=account.data_bucket)
            click.echo(f"run {run_id} started: {execution_arn}")
            display = make_display(pipeline, live=sys.stdout.isatty())
            with display:
                run = follow_run(run_id, sm_arn, execution_arn, store=store, sfn=account.sfn,
                                 on_event=display.event, poll=poll, data_bucket=account.data_bucket)
            display.summary(run, store.get_checks(run_id))
            if run.state != "succeeded" and run.error:
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
        return 0 if run.state == "succeeded" else 1
    finally:
        if own_store:
            store.close()
