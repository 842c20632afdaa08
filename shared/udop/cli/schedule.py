"""``udop scheduler``, ``udop backfill`` and ``udop backfills``: runs nobody starts by hand."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import click

from udop.errors import InputError


def _backfill_json(record: Any) -> dict[str, Any]:
    return {
        "id": record.id, "pipeline": record.pipeline, "state": record.state,
        "from": record.start.isoformat(), "to": record.end.isoformat(), "step": record.step,
        "max_parallel": record.max_parallel, "executor": record.executor, "error": record.error,
        "created_at": record.created_at.isoformat(), "counts": record.counts(),
        "dates": [{"logical_date": d.isoformat(), "run_id": r, "state": record.run_states.get(r or "")}
                  for d, r in record.dates.items()],
    }


def _summary(record: Any) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(record.counts().items()))
    return f"backfill {record.id} of {record.pipeline}: {record.state} ({counts})"


@click.command()
@click.option("--pipelines", "folder", default="pipelines", show_default=True,
              type=click.Path(file_okay=False), help="Folder of definitions; those with a schedule run.")
@click.option("--trusted", is_flag=True,
              help="Run scheduled definitions as `udop run` does (your own machine, your own files). "
              "Without it they run under the server-mode sandbox, like runs started through the API.")
@click.option("--max-runs", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Scheduled runs at the same time in this process.")
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Tasks at a time within one run.")
@click.option("--lease", "lease_seconds", type=click.IntRange(10, 86400), default=300, show_default=True,
              help="Seconds after which a tick claimed by a scheduler whose run never started (it died) "
              "is started by another.")
@click.option("--executor", type=click.Choice(["local", "celery"]), default="local", show_default=True,
              help="celery: the runs' attempts go to Celery workers (`udop worker`); this process "
              "follows the runs.")
def scheduler(*, folder: str, trusted: bool, max_runs: int, workers: int, lease_seconds: int,
              executor: str) -> None:
    """Start the runs of every scheduled pipeline in a folder at its ticks, until Ctrl-C.

    Any number of schedulers may share one metadata store: each tick starts one run.
    """
    from udop.sandbox import Policy, server_policy
    from udop.schedule.scheduler import DirectoryPipelines, Scheduler
    from udop.settings import get_settings
    from udop.store import open_store

    if not Path(folder).is_dir():
        raise InputError(f"--pipelines {folder!r} is not a folder of pipeline definitions")
    data_root = get_settings().resolved_data_root
    policy = Policy.trusted() if trusted else server_policy(data_root=data_root)
    store = open_store(expect_history_in=data_root)
    source = DirectoryPipelines(folder, on_error=lambda line: click.echo(f"udop: {line}", err=True))
    make_executor = None
    if executor == "celery":
        import functools

        from udop.executor.celery import CeleryExecutor, make_app

        app = make_app()
        CeleryExecutor(store, app=app)  # refuses a SQLite store at start, not at the first tick
        make_executor = functools.partial(CeleryExecutor, app=app)
    sched = Scheduler(store, source, policy=policy, max_runs=max_runs, workers=workers, data_root=data_root,
                      lease_seconds=lease_seconds, executor=make_executor)
    names = [sp.pipeline.name for sp in source()]
    mode = "trusted" if trusted else "sandboxed (server mode)"
    click.echo(f"udop: scheduling {len(names)} pipeline(s) from {folder}, {mode}: "
               f"{', '.join(names) or 'none yet'}", err=True)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        sched.run_forever(stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sched.close()
        store.close()
    click.echo("udop: scheduler stopped", err=True)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--from", "start", required=True, metavar="DATE", help="First logical date (ISO).")
@click.option("--to", "end", required=True, metavar="DATE", help="Last logical date (ISO), included.")
@click.option("--step", default="1d", show_default=True, help="Between logical dates: 30m, 6h, 1d, 1w.")
@click.option("--max-parallel", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Runs at the same time (the pipeline's max_active_runs still applies).")
@click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE", help="Parameter of every run.")
@click.option("--executor", type=click.Choice(["local", "stepfunctions"]), default="local", show_default=True,
              help="stepfunctions: one execution per date of the deployed pipeline, started and followed "
              "from here (docs/scheduling.md).")
@click.option("--fan-out", type=click.Choice(["parent", "client"]), default="parent", show_default=True,
              help="stepfunctions only: one parent execution fanning out on AWS (runs without this "
              "process), or executions started and followed from here.")
@click.option("--stack", help="stepfunctions, parent: the CloudFormation stack whose outputs name the data "
              "bucket and the state machine role (default: $UDOP_DATA_BUCKET, $UDOP_STATE_MACHINE_ROLE_ARN).")
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the backfill as JSON at the end.")
def backfill(file: str, *, start: str, end: str, step: str, max_parallel: int, params: tuple[str, ...],
             executor: str, fan_out: str, stack: str | None, workers: int, as_json: bool) -> None:
    """Run the pipeline in FILE once per logical date from --from to --to.

    Exit 0 when every date succeeded, 1 otherwise. The backfill is one unit: `udop backfills` lists,
    cancels and resumes it.
    """
    from udop.cli.commands import _load, _parse_params
    from udop.schedule.backfill import parse_date
    from udop.settings import get_settings
    from udop.store import open_store

    pipeline = _load(file)
    store = open_store(expect_history_in=get_settings().resolved_data_root)
    runner = _runner(executor if executor == "local" or fan_out == "client" else "stepfunctions-parent",
                     store, pipeline, file, workers, stack=stack)
    record = runner.create(start=parse_date(start, what="--from"), end=parse_date(end, what="--to"),
                           step=step, max_parallel=max_parallel, params=_parse_params(params),
                           executor=executor)
    click.echo(f"udop: backfill {record.id}: {len(record.dates)} logical date(s), {max_parallel} at a time",
               err=True)
    _run(runner, record.id, resume=False, as_json=as_json)


def _run(runner: Any, backfill_id: str, *, resume: bool, as_json: bool) -> None:
    from udop.schedule.sfn_parent import ParentBackfillRunner

    if isinstance(runner, ParentBackfillRunner):
        _run_parent(runner, backfill_id, resume=resume, as_json=as_json)
        return
    stops: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        from udop.schedule.backfill import cancel_backfill

        if stops:
            raise KeyboardInterrupt
        stops.append(signum)
        cancel_backfill(runner.store, backfill_id)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        final = runner.run(backfill_id, resume=resume)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        runner.store.close()
    click.echo(json.dumps(_backfill_json(final), indent=2) if as_json else _summary(final))
    if final.state == "cancelled":
        click.echo(f"udop: continue it with: udop backfills resume {backfill_id} FILE", err=True)
    raise click.exceptions.Exit(0 if final.state == "succeeded" else 1)


def _run_parent(runner: Any, backfill_id: str, *, resume: bool, as_json: bool) -> None:
    """Start the parent execution and follow it; Ctrl-C stops following, not the backfill."""
    from udop.aws.platform import aws_errors

    with aws_errors():
        arn = runner.start(backfill_id, resume=resume)
    click.echo(f"udop: parent execution {arn} (Ctrl-C stops following it; `udop backfills cancel "
               f"{backfill_id}` stops the backfill)", err=True)
    try:
        with aws_errors():
            final = runner.follow(backfill_id, arn)
    except KeyboardInterrupt:
        click.echo(f"udop: backfill {backfill_id} goes on on Step Functions", err=True)
        raise click.exceptions.Exit(130) from None
    finally:
        runner.store.close()
    click.echo(json.dumps(_backfill_json(final), indent=2) if as_json else _summary(final))
    if final.state != "succeeded":
        click.echo(f"udop: continue it with: udop backfills resume {backfill_id} FILE", err=True)
    raise click.exceptions.Exit(0 if final.state == "succeeded" else 1)


@click.group()
def backfills() -> None:
    """List, show, cancel and resume backfills."""


@backfills.command("list")
@click.option("--pipeline", help="Only backfills of this pipeline.")
@click.option("--json", "as_json", is_flag=True)
def list_backfills(pipeline: str | None, as_json: bool) -> None:
    """Backfills, newest first."""
    from udop.schedule.store import ScheduleStore
    from udop.store import open_store

    records = ScheduleStore(open_store()).list_backfills(pipeline)
    if as_json:
        click.echo(json.dumps([_backfill_json(r) for r in records], indent=2))
        return
    if not records:
        click.echo("no backfills yet: start one with `udop backfill FILE --from D1 --to D2`")
        return
    click.echo(f"{'BACKFILL':<30} {'PIPELINE':<20} {'STATE':<10} {'FROM':<26} {'TO':<26} DATES")
    for r in records:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(r.counts().items()))
        click.echo(f"{r.id:<30} {r.pipeline:<20} {r.state:<10} {r.start.isoformat():<26} "
                   f"{r.end.isoformat():<26} {counts}")


@backfills.command("show")
@click.argument("backfill_id")
@click.option("--json", "as_json", is_flag=True)
def show_backfill(backfill_id: str, as_json: bool) -> None:
    """One backfill: each logical date and its run."""
    from udop.schedule.store import ScheduleStore
    from udop.store import open_store

    record = ScheduleStore(open_store()).get_backfill(backfill_id)
    if record is None:
        raise InputError(f"no backfill {backfill_id!r} (see `udop backfills list`)")
    if as_json:
        click.echo(json.dumps(_backfill_json(record), indent=2))
        return
    click.echo(_summary(record) + (f": {record.error}" if record.error else ""))
    for d, run_id in record.dates.items():
        click.echo(f"  {d.isoformat():<26} {run_id or '-':<24} {record.run_states.get(run_id or '', '')}")


@backfills.command("cancel")
@click.argument("backfill_id")
def cancel(backfill_id: str) -> None:
    """Stop a backfill: its runner stops its running runs and starts no more (on Step Functions with a
    parent execution: the parent and its dates' executions are stopped)."""
    from udop.schedule.backfill import cancel_backfill
    from udop.schedule.sfn_parent import EXECUTOR, stop_parent_backfill
    from udop.schedule.store import ScheduleStore
    from udop.store import open_store

    store = open_store()
    record = ScheduleStore(store).get_backfill(backfill_id)
    if record is not None and record.executor == EXECUTOR:
        from udop.aws.platform import aws_errors
        from udop.aws.runs import client

        with aws_errors():
            click.echo(_summary(stop_parent_backfill(store, client("stepfunctions"), backfill_id)))
        return
    click.echo(_summary(cancel_backfill(store, backfill_id)))


@backfills.command("resume")
@click.argument("backfill_id")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def resume(backfill_id: str, file: str, workers: int, as_json: bool) -> None:
    """Go on with a failed or cancelled backfill: new runs for dates without one, failed and cancelled
    runs resumed from their failed tasks, succeeded ones left alone."""
    from udop.cli.commands import _load
    from udop.settings import get_settings
    from udop.store import open_store

    pipeline = _load(file)
    store = open_store(expect_history_in=get_settings().resolved_data_root)
    from udop.schedule.store import ScheduleStore

    record = ScheduleStore(store).get_backfill(backfill_id)
    runner = _runner(record.executor if record else "local", store, pipeline, file, workers)
    _run(runner, backfill_id, resume=True, as_json=as_json)


def _runner(executor: str, store: Any, pipeline: Any, file: str, workers: int, *,
            stack: str | None = None) -> Any:
    from udop.schedule.backfill import BackfillRunner

    if executor == "stepfunctions-parent":
        from udop.aws.platform import Platform
        from udop.aws.runs import client
        from udop.schedule.sfn_parent import ParentBackfillRunner

        platform = Platform(stack)
        return ParentBackfillRunner(store, pipeline, sfn=client("stepfunctions"), s3=client("s3"),
                                    role_arn=platform.require("state_machine_role_arn"),
                                    data_bucket=platform.require("data_bucket"))
    if executor == "stepfunctions":
        from udop.aws.runs import client
        from udop.schedule.sfn_backfill import StepFunctionsBackfillRunner

        return StepFunctionsBackfillRunner(store, pipeline, sfn=client("stepfunctions"))
    return BackfillRunner(store, pipeline, workers=workers,
                          services={"base_dir": str(Path(file).parent.resolve())})
