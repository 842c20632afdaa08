"""The ``udop`` command line. Commands are imported only when used, so ``udop --help`` is fast.

Exit codes: 0 success, 1 the pipeline (or a command's work) failed, 2 invalid input or usage.
Errors are one line on stderr, never a traceback (``UDOP_DEBUG=1`` shows one).
"""

from __future__ import annotations

import gc
import importlib
import sys
from typing import Any

import click

__all__ = ["cli", "main"]

#: command name -> ("module:attribute", short help shown by ``udop --help`` without importing it)
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("udop.cli.commands:init", "Create a project folder with an example pipeline."),
    "validate": ("udop.cli.commands:validate", "Check definitions without running them."),
    "run": ("udop.cli.commands:run", "Run a pipeline (locally by default) and show its progress."),
    "stream": ("udop.cli.stream:stream", "Consume a stream pipeline's source in micro-batches."),
    "graph": ("udop.cli.commands:graph", "Draw a pipeline's task graph as Mermaid or Graphviz dot."),
    "schema": ("udop.cli.commands:schema", "Print the JSON Schema of pipeline definitions."),
    "runs": ("udop.cli.runs:runs", "List runs and show one run's tasks, attempts and lineage."),
    "logs": ("udop.cli.runs:logs", "Print the logs a run's tasks wrote (per attempt)."),
    "lineage": ("udop.cli.lineage:lineage", "Show what a dataset came from or fed, across runs."),
    "compile": ("udop.cli.aws:compile_command", "Compile a pipeline to a Step Functions definition (ASL)."),
    "deploy": ("udop.cli.aws:deploy_command", "Deploy a pipeline as a Step Functions state machine."),
    "redrive": ("udop.cli.aws:redrive_command", "Resume a failed Step Functions run from the failed task."),
    "serve": ("udop.api.cli:serve", "Serve the REST API on this machine."),
    "scheduler": ("udop.cli.schedule:scheduler", "Start scheduled pipelines' runs at their ticks."),
    "backfill": ("udop.cli.schedule:backfill", "Run a pipeline once per logical date of a range."),
    "backfills": ("udop.cli.schedule:backfills", "List, show, cancel and resume backfills."),
    "api-key": ("udop.api.cli:api_key", "Create, list and revoke API keys of service accounts."),
    "worker": ("udop.cli.worker:worker", "Start a Celery worker for runs with --executor celery."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, attr = entry[0].split(":")
        try:
            command: click.Command = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise click.ClickException(
                f"'udop {cmd_name}' is not available: {exc}. Install udop with all extras "
                "(bash scripts/bootstrap.sh) or the extra this command needs (e.g. udop[api], udop[aws])."
            ) from None
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(package_name="udop", prog_name="udop")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines as human text or JSON (default: the UDOP_LOG_FORMAT setting, else text).",
)
def cli(log_format: str | None) -> None:
    """udop runs data pipelines: on this machine (SQLite + Parquet under .udop/) or on AWS Step
    Functions, from the same pipeline.yaml.

    \b
    Start here:
      udop init my-project && cd my-project
      udop run pipeline.yaml
      udop runs show <RUN_ID>
    """
    import logging

    from udop.observability.logs import configure

    if click.get_current_context().invoked_subcommand != "run":
        work_starts()  # ``udop run`` turns it on once the run's modules are imported
    configure(log_format, level=logging.INFO)
    # migrations announce themselves at INFO on every first open: not news to a CLI user
    logging.getLogger("alembic").setLevel(logging.WARNING)


def work_starts() -> None:
    """Turn the cyclic garbage collector back on: the command is done importing (see ``main``).

    What exists now is frozen first: otherwise the next collection would go over every object the
    imports made (~0.05 s), and every full collection after it again."""
    gc.freeze()
    gc.enable()


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: maps errors to one line and an exit code."""
    from udop.errors import UdopError

    # importing what a command needs creates some 300,000 objects and hardly any garbage, yet makes
    # the cyclic collector run over and over (~8% of a 1-task ``udop run``): it is off until the
    # command begins its work (``work_starts``; every command but ``run`` right after parsing)
    enabled = gc.isenabled()
    gc.disable()
    try:
        code = cli.main(args=argv, prog_name="udop", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("udop: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code in (1, 2) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except UdopError as exc:
        if _debug():
            raise
        click.echo(str(exc), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("udop: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if _debug():
            raise
        click.echo(
            f"udop: internal error: {type(exc).__name__}: {exc} (set UDOP_DEBUG=1 for a traceback)", err=True
        )
        sys.exit(1)
    finally:
        if argv is None:  # the process exits: its objects are not collected again at shutdown
            gc.freeze()
        else:  # a caller in this process (tests): its objects are collected as before
            gc.unfreeze()
        if enabled:
            gc.enable()
    sys.exit(code if isinstance(code, int) else 0)


def _debug() -> bool:
    """``UDOP_DEBUG`` set: show the traceback (read only when something failed)."""
    from udop.settings import ProcessSettings, load_settings

    return bool(load_settings(ProcessSettings).debug)
