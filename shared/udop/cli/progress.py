"""Progress while a run goes: a live table on a terminal, one line per event otherwise."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Any

import click

from udop.executor.events import RunEvent

_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "retrying": "yellow",
    "succeeded": "green",
    "failed": "red",
    "upstream_failed": "magenta",
    "cancelled": "dim",
}


def make_display(pipeline: Any, *, live: bool) -> Display:
    return LiveDisplay(pipeline) if live else LineDisplay(pipeline)


class Display:
    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.started = time.monotonic()
        self.rows: dict[str, dict[str, Any]] = {
            t.id: {"type": t.type, "state": "pending", "attempt": 0, "since": None, "message": ""}
            for t in pipeline.spec.tasks
        }

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def event(self, event: RunEvent) -> None:
        if event.task_id is not None and event.task_id in self.rows:
            row = self.rows[event.task_id]
            row["state"] = event.state
            row["message"] = event.message or ""
            if event.attempt:
                row["attempt"] = event.attempt
            if event.state == "running":
                row["since"] = time.monotonic()
            elif row["since"] is not None:
                row["elapsed"] = time.monotonic() - row["since"]
        self.show(event)

    def show(self, event: RunEvent) -> None:
        raise NotImplementedError

    def summary(self, run: Any, checks: list[Any], *, resume: str = "udop run <FILE> --resume") -> None:
        counts: dict[str, int] = {}
        for task in run.tasks:
            counts[task.state.value] = counts.get(task.state.value, 0) + 1
        took = (run.ended_at - run.started_at).total_seconds() if run.ended_at and run.started_at else 0.0
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        colour = "green" if run.state.value == "succeeded" else "red"
        click.echo(
            f"\nrun {run.id} "
            + click.style(run.state.value, fg=colour, bold=True)
            + f" in {took:.2f}s ({parts})"
        )
        for task in run.tasks:
            if task.state.value == "failed":
                first_line = (task.error_message or "").splitlines()[0] if task.error_message else ""
                click.echo(f"  {task.task_id}: {task.error_type}: {first_line}")
        failed_checks = [c for c in checks if not c.passed]
        if checks:
            click.echo(
                f"quality checks: {len(checks) - len(failed_checks)} passed, "
                f"{sum(1 for c in failed_checks if c.severity == 'error')} failed, "
                f"{sum(1 for c in failed_checks if c.severity != 'error')} warned"
            )
            for c in failed_checks:
                click.echo(
                    f"  [{c.severity}] {c.task_id}: {c.rule}: {c.failing_rows} failing rows"
                    + (f" ({c.message})" if c.message else "")
                )
        if run.state.value != "succeeded":
            click.echo(f"resume with: {resume} {run.id}   details: udop runs show {run.id}")


class LineDisplay(Display):
    """For logs and CI: one plain line per state change, flushed at once."""

    def show(self, event: RunEvent) -> None:
        stamp = datetime.fromtimestamp(event.at).strftime("%H:%M:%S")
        if event.task_id is None:
            line = f"{stamp} run {event.run_id} {event.state}"
        else:
            attempt = f" (attempt {event.attempt})" if event.attempt and event.attempt > 1 else ""
            line = f"{stamp} {event.task_id} {event.state}{attempt}"
        if event.message:
            line += f": {event.message}"
        click.echo(line)
        sys.stdout.flush()


class LiveDisplay(Display):
    """For a terminal: a table of tasks redrawn in place (rich)."""

    def __enter__(self) -> LiveDisplay:
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        # get_renderable: redrawn on every refresh, so running tasks' clocks tick between events
        self.live = Live(
            console=self.console, refresh_per_second=8, transient=False, get_renderable=self._table
        )
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.refresh()
        self.live.__exit__(None, None, None)

    def show(self, event: RunEvent) -> None:
        if hasattr(self, "live"):
            self.live.refresh()

    def _table(self) -> Any:
        from rich.table import Table

        done = sum(1 for r in self.rows.values() if r["state"] == "succeeded")
        table = Table(
            title=f"{self.pipeline.name}: {done}/{len(self.rows)} tasks done, "
            f"{time.monotonic() - self.started:.1f}s",
            title_justify="left",
            expand=False,
        )
        for col in ("task", "type", "state", "attempt", "time", "note"):
            table.add_column(col, overflow="fold" if col == "note" else "ellipsis")
        now = time.monotonic()
        for tid, row in self.rows.items():
            secs = (
                row.get("elapsed")
                if row["state"] != "running"
                else (now - row["since"] if row["since"] else None)
            )
            table.add_row(
                tid,
                row["type"],
                f"[{_STYLE.get(row['state'], '')}]{row['state']}[/]",
                str(row["attempt"] or ""),
                f"{secs:.1f}s" if secs is not None else "",
                (row["message"] or "")[:80],
            )
        return table
