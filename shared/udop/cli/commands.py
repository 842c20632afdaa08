"""``udop init | validate | run | graph | schema``."""

from __future__ import annotations

import json
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from udop.cli import work_starts
from udop.errors import InputError, SpecErrors


def _load(path: str, *, import_callables: bool = True) -> Any:
    from udop.spec.loader import load_pipeline

    return load_pipeline(path, import_callables=import_callables, plugin_checks=True)


def _parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
        params[key.strip()] = value
    return params


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--no-import", is_flag=True, help="Do not import python tasks' callables.")
def validate(files: tuple[str, ...], no_import: bool) -> None:
    """Check pipeline definitions (schema, task graph, references, callables) without running them.

    Prints one line per problem, FILE:LINE: PATH: MESSAGE, and exits 2 if any file is invalid.
    """
    bad = 0
    for file in files:
        try:
            pipeline = _load(file, import_callables=not no_import)
        except SpecErrors as exc:
            bad += 1
            for err in exc.errors:
                click.echo(str(err), err=True)
        else:
            click.echo(f"{file}: ok ({pipeline.name}, {len(pipeline.spec.tasks)} tasks)")
    if bad:
        raise click.exceptions.Exit(2)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--param", "-p", "params", multiple=True, metavar="KEY=VALUE", help="Set a parameter (repeatable)."
)
@click.option(
    "--resume",
    "resume",
    metavar="RUN_ID",
    help="Resume a failed, cancelled or killed run: run only the tasks that did not succeed.",
)
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(1, 256),
    default=4,
    show_default=True,
    help="Tasks run at the same time.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "stepfunctions", "celery"]),
    default="local",
    show_default=True,
    help="Where to run: this machine, the pipeline's deployed Step Functions state machine, or Celery "
    "workers (`udop worker`; this process follows the run, --workers attempts at a time).",
)
@click.option(
    "--stack", help="With --executor stepfunctions: the deployed udop stack ($UDOP_STACK_NAME, else Udop)."
)
@click.option("--emulate", is_flag=True, help="With --executor stepfunctions: rehearse on moto in this "
              "process (nothing deployed; needs udop[emulate]).")
@click.option(
    "--logical-date", metavar="ISO-DATE", help="The run's logical date (${run.logical_date}); default now."
)
@click.option("--run-id", metavar="ID", help="Use this id for the new run instead of a generated one.")
@click.option(
    "--progress/--no-progress", default=None, help="Live display (default when stdout is a terminal)."
)
@click.option(
    "--wait",
    is_flag=True,
    help="When the pipeline's max_active_runs are taken, wait for a free slot instead of exiting 3.",
)
@click.option(
    "--on-new-version",
    is_flag=True,
    help="With --resume: go on under the edited definition (stored as a new version) instead of refusing.",
)
def run(
    file: str,
    *,
    params: tuple[str, ...],
    resume: str | None,
    workers: int,
    executor: str,
    stack: str | None,
    emulate: bool,
    logical_date: str | None,
    run_id: str | None,
    progress: bool | None,
    wait: bool,
    on_new_version: bool,
) -> None:
    """Run the pipeline in FILE and show each task's state.

    Exit 0 if it succeeded, 1 if it failed, 3 if the pipeline's max_active_runs are taken (without
    --wait), 130 on SIGINT and 143 on SIGTERM (the run is cancelled cleanly; --resume continues it).
    """
    given = _parse_params(params)
    logical = None
    if logical_date:
        try:
            logical = datetime.fromisoformat(logical_date)
        except ValueError:
            raise click.BadParameter(
                f"{logical_date!r} is not an ISO date or datetime", param_hint="--logical-date"
            ) from None
        logical = logical if logical.tzinfo else logical.replace(tzinfo=UTC)
    if emulate and executor != "stepfunctions":
        raise InputError("--emulate goes with --executor stepfunctions")
    if emulate or executor == "stepfunctions":
        work_starts()
    if emulate:
        from udop.cli.emulate import rehearse

        raise click.exceptions.Exit(rehearse(file, given, run_id=run_id, resume=resume, logical_date=logical))
    if executor == "stepfunctions":
        from udop.cli.aws import run_on_stepfunctions

        raise click.exceptions.Exit(
            run_on_stepfunctions(file, given, follow=True, run_id=run_id, logical_date=logical, stack=stack)
        )
    pipeline = _load(file)
    if pipeline.stream is not None:
        raise InputError(f"{file}: {pipeline.name!r} is a stream pipeline (spec.trigger.stream): run it "
                         f"with udop stream {file}")
    from udop.masking import apply_setting
    from udop.sandbox import install_log_redaction

    if apply_setting(server=False):  # UDOP_MASK_PII=on: the detectors for a trusted run too
        install_log_redaction()
    if resume and run_id:
        raise InputError("give either --resume RUN_ID or --run-id ID, not both")
    if on_new_version and not resume:
        raise InputError("--on-new-version goes with --resume RUN_ID")

    from udop.cli.progress import make_display
    from udop.executor.local import LocalExecutor
    from udop.settings import get_settings
    from udop.store import open_store

    store = open_store(expect_history_in=get_settings().resolved_data_root)
    live = sys.stdout.isatty() if progress is None else progress
    display = make_display(pipeline, live=live)
    services = {"base_dir": str(Path(file).parent.resolve())}
    if executor == "celery":
        from udop.executor.celery import CeleryExecutor

        executor_: LocalExecutor = CeleryExecutor(store, workers=workers, on_event=display.event,
                                                  services=services)
    else:
        executor_ = LocalExecutor(store, workers=workers, on_event=display.event, services=services)
    stopped_by: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        if stopped_by:  # a second signal: stop waiting for the tasks
            raise KeyboardInterrupt
        stopped_by.append(signum)
        executor_.request_stop(signal.Signals(signum).name)

    def waiting(message: str) -> None:
        click.echo(f"udop: waiting: {message}", err=True)

    from udop.errors import RunLimitReached

    work_starts()  # the modules a run needs are imported (see udop.cli.main)
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with display:
            record = executor_.run(
                pipeline,
                params=given,
                run_id=resume or run_id,
                resume=bool(resume),
                logical_date=logical,
                on_new_version=on_new_version,
                wait=wait,
                on_wait=waiting,
                trigger="cli",
            )
    except RunLimitReached:
        if not stopped_by:
            raise
        name = signal.Signals(stopped_by[0]).name
        click.echo(f"udop: stopped ({name}) while waiting for a free slot; nothing ran", err=True)
        raise click.exceptions.Exit(128 + stopped_by[0]) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    final = store.get_run(record.id)
    display.summary(final, store.get_checks(record.id))
    store.close()
    if stopped_by and record.state == "cancelled":
        click.echo(f"udop: run {record.id} cancelled ({signal.Signals(stopped_by[0]).name}); "
                   f"continue it with: udop run {file} --resume {record.id}", err=True)
        raise click.exceptions.Exit(128 + stopped_by[0])
    raise click.exceptions.Exit(0 if record.state == "succeeded" else 1)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True)
def graph(file: str, fmt: str) -> None:
    """Print the task graph of FILE (Mermaid for Markdown, dot for Graphviz)."""
    from udop.spec.dag import to_dot, to_mermaid

    pipeline = _load(file, import_callables=False)
    click.echo((to_mermaid if fmt == "mermaid" else to_dot)(pipeline), nl=False)


@click.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), help="Write to a file.")
def schema(output: str | None) -> None:
    """Print the JSON Schema of udop/v1 pipeline definitions (for editors: yaml-language-server)."""
    from udop.spec.models import Pipeline

    body = Pipeline.model_json_schema(by_alias=True)
    body = {"$schema": "https://json-schema.org/draft/2020-12/schema", **body, "title": "udop/v1 Pipeline"}
    text = json.dumps(body, indent=2, sort_keys=False) + "\n"
    if output:
        Path(output).write_text(text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@click.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
@click.option(
    "--aws",
    "aws",
    is_flag=True,
    help="A team repository for AWS instead: CDK app, pipelines/, requirements, a test (udop[cdk]).",
)
def init(directory: str, force: bool, aws: bool) -> None:
    """Create DIRECTORY (default: here) with an example pipeline you can run at once.

    With --aws, DIRECTORY (a new folder, e.g. `udop init --aws data-platform`) becomes a repository
    that deploys the udop platform and its pipelines with `npx cdk deploy` and tests them with `pytest`."""
    from udop.cli.scaffold import write_aws_project, write_project

    if aws:
        if force:
            raise click.UsageError(
                "--force does not go with --aws (it never writes into a folder that has files)"
            )
        written = write_aws_project(Path(directory))
        for path in written:
            click.echo(f"created {path}")
        click.echo(
            f"\nNext: cd {directory} && python3 -m venv .venv && . .venv/bin/activate && "
            "pip install -r requirements.txt && npm ci\n      npx cdk deploy   # and: pytest"
        )
        return
    written = write_project(Path(directory), force=force)
    for path in written:
        click.echo(f"created {path}")
    where = "" if directory == "." else f"cd {directory} && "
    click.echo(f"\nNext: {where}udop run pipeline.yaml")
