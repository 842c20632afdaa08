"""``udop runs list`` and ``udop runs show RUN_ID``: what the metadata store knows about runs."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from udop.errors import RunNotFound
from udop.store.api import RUN_TRIGGERS


def _duration(start: Any, end: Any) -> str:
    if not start or not end:
        return ""
    return f"{(end - start).total_seconds():.2f}s"


@click.group()
def runs() -> None:
    """Look at runs recorded in the metadata store (local and AWS)."""


@runs.command("list")
@click.option("--pipeline", help="Only runs of this pipeline.")
@click.option("--state", type=click.Choice(["pending", "running", "succeeded", "failed", "cancelled"]))
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
@click.option("--logical-date", metavar="ISO-DATE", help="Only runs of this logical date (UTC if no offset).")
@click.option("--trigger", type=click.Choice(list(RUN_TRIGGERS)),
              help="Only runs started this way (as GET /runs?trigger=).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_runs(*, pipeline: str | None, state: str | None, limit: int, logical_date: str | None,
              trigger: str | None, as_json: bool) -> None:
    """List runs, newest first."""
    from udop.schedule.backfill import parse_date
    from udop.states import RunState
    from udop.store import open_store

    store = open_store()
    logical = parse_date(logical_date, what="--logical-date") if logical_date else None
    records = store.list_runs(pipeline=pipeline, state=RunState(state) if state else None, limit=limit,
                              logical_date=logical, trigger=trigger)
    if as_json:
        click.echo(json.dumps([_run_json(r) for r in records], indent=2, default=str))
        return
    if not records:
        click.echo("no runs yet: start one with `udop run pipeline.yaml`")
        return
    click.echo(f"{'RUN ID':<24} {'PIPELINE':<24} {'STATE':<10} {'EXECUTOR':<13} {'LOGICAL DATE':<20} "
               f"{'STARTED':<20} DURATION")
    for r in records:
        started = r.started_at.strftime("%Y-%m-%d %H:%M:%S") if r.started_at else ""
        logical_text = r.logical_date.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(
            f"{r.id:<24} {r.pipeline:<24} {r.state.value:<10} {r.executor:<13} {logical_text:<20} "
            f"{started:<20} {_duration(r.started_at, r.ended_at)}"
        )


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(run_id: str, as_json: bool) -> None:
    """Show a run: its tasks, their attempts, durations and errors, lineage and quality checks."""
    from udop.store import open_store

    store = open_store()
    run = store.get_run(run_id)
    if run is None:
        raise RunNotFound(f"no run {run_id!r} in the metadata store (see `udop runs list`)")
    lineage = store.get_lineage(run_id)
    checks = store.get_checks(run_id)
    if as_json:
        body = _run_json(run)
        body["tasks"] = [asdict(t) for t in run.tasks]
        body["lineage"] = [asdict(x) for x in lineage]
        body["checks"] = [asdict(c) for c in checks]
        body["logs"] = [{"task_id": t, "attempt": n, **log} for t, n, log in _log_files(run)]
        click.echo(json.dumps(body, indent=2, default=str))
        return
    click.echo(f"run       {run.id}")
    click.echo(f"pipeline  {run.pipeline} (version {run.pipeline_version})")
    click.echo(f"state     {run.state.value}" + (f": {run.error}" if run.error else ""))
    click.echo(f"executor  {run.executor}" + (f" ({run.external_id})" if run.external_id else ""))
    click.echo(f"logical   {run.logical_date.isoformat()}")
    click.echo(f"params    {json.dumps(run.params, default=str)}")
    click.echo(f"duration  {_duration(run.started_at, run.ended_at) or '-'}")
    click.echo("\ntasks")
    for task in run.tasks:
        click.echo(
            f"  {task.task_id:<24} {task.state.value:<16} attempts={len(task.attempts)} "
            f"{_duration(task.started_at, task.ended_at)}"
        )
        for a in task.attempts:
            line = f"      #{a.number} {a.state.value:<10} {_duration(a.started_at, a.ended_at)}"
            if a.error_type:
                first = (a.error_message or "").splitlines()[0] if a.error_message else ""
                line += f"  {a.error_type}: {first}"
            click.echo(line)
    logs = _log_files(run)
    if logs:
        from udop.observability.tasklogs import describe

        click.echo(f"\nlogs      udop logs {run.id}  ({len(logs)} attempt logs)")
        for task_id, number, log in logs:
            click.echo(f"  {task_id}#{number}: {describe(log)}")
    if lineage:
        from udop.lineage.columns import task_column_lineage

        columns = task_column_lineage(run)
        click.echo("\nlineage")
        for item in lineage:
            rows = f"{item.rows:,} rows" if item.rows is not None else "rows unknown"
            click.echo(
                f"  {item.task_id}: {', '.join(item.inputs) or '(no inputs)'} -> {item.output_uri} ({rows})"
            )
            for column, sources in columns.get(item.task_id, {}).items():
                named = ", ".join(f"{uri}#{name}" for uri, name in sources) or "(computed)"
                click.echo(f"      {column} <- {named}")
    if checks:
        click.echo("\nquality checks")
        for c in checks:
            status = "pass" if c.passed else ("FAIL" if c.severity == "error" else "warn")
            click.echo(
                f"  {status:<4} {c.task_id}: {c.rule}"
                + ("" if c.passed else f" ({c.failing_rows} failing rows)")
                + (f": {c.message}" if c.message and not c.passed else "")
            )
            for sample in c.sample[:3] if not c.passed else []:
                click.echo(f"         e.g. {json.dumps(sample, default=str)}")


def _run_json(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "pipeline": r.pipeline,
        "version": r.pipeline_version,
        "state": r.state.value,
        "executor": r.executor,
        "trigger": r.trigger,
        "params": r.params,
        "logical_date": r.logical_date,
        "created_at": r.created_at,
        "started_at": r.started_at,
        "ended_at": r.ended_at,
        "error": r.error,
        "external_id": r.external_id,
    }


def _log_files(run: Any, task_id: str | None = None,
               attempt: int | None = None) -> list[tuple[str, int, Any]]:
    from udop.observability.tasklogs import stored_logs
    from udop.settings import get_settings

    return stored_logs(run, task_id, attempt, data_root=get_settings().resolved_data_root)


@click.command("logs")
@click.argument("run_id")
@click.argument("task_id", required=False)
@click.option("--attempt", type=click.IntRange(1), help="Only this attempt (default: every attempt).")
def logs(run_id: str, task_id: str | None, attempt: int | None) -> None:
    """Print what the tasks of run RUN_ID (or only TASK_ID) logged and printed, attempt by attempt."""
    from udop.observability.tasklogs import render_log
    from udop.store import open_store

    store = open_store()
    run = store.get_run(run_id)
    if run is None:
        raise RunNotFound(f"no run {run_id!r} in the metadata store (see `udop runs list`)")
    if task_id is not None and task_id not in {t.task_id for t in run.tasks}:
        raise RunNotFound(f"run {run_id!r} has no task {task_id!r} (see `udop runs show {run_id}`)")
    found = _log_files(run, task_id, attempt)
    if not found:
        where = f"task {task_id!r} of run {run_id!r}" if task_id else f"run {run_id!r}"
        click.echo(f"no logs for {where}: its tasks logged nothing", err=True)
        return
    for task, number, log in found:
        click.echo(f"==> {task} attempt {number} <==")
        click.echo(render_log(log), nl=False)
