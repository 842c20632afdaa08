"""``udop stream FILE``: run a stream pipeline here until stopped (docs/streams.md)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import click

from udop.errors import InputError


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--workers", type=int, default=4, show_default=True, help="Tasks of one batch run at a time.")
@click.option("--max-batches", type=int, default=None, help="Stop after this many batches (default: never).")
@click.option("--quiet", is_flag=True, help="No live figures on stderr.")
def stream(file: str, workers: int, max_batches: int | None, quiet: bool) -> None:
    """Consume the stream source of the pipeline in FILE, each micro-batch a run of its tasks.

    SIGTERM or SIGINT: the batch in flight finishes and commits, then exit 0; a second signal stops the
    batch too (it stays pending and the next start resumes it), exit 128+signal. Live figures (messages/s,
    lag, last batch) go to stderr.
    """
    from udop.cli.commands import _load

    pipeline = _load(file)
    if pipeline.stream is None:
        raise InputError(
            f"{file}: pipeline {pipeline.name!r} has no spec.trigger.stream; run it with udop run {file}"
        )
    from udop.executor.local import LocalExecutor
    from udop.settings import get_settings
    from udop.store import open_store
    from udop.stream.runner import StreamFigures, StreamRunner, open_source

    base_dir = str(Path(file).parent.resolve())
    store = open_store(expect_history_in=get_settings().resolved_data_root)
    executor = LocalExecutor(store, workers=workers, services={"base_dir": base_dir})
    source = open_source(pipeline, base_dir=base_dir)
    live = sys.stderr.isatty()
    shown = [0.0]

    def report(figures: StreamFigures) -> None:
        now = time.monotonic()
        if quiet or now - shown[0] < 1.0:
            return
        shown[0] = now
        line = figures.line()
        click.echo(f"\r{line}\033[K" if live else line, err=True, nl=not live)

    stop = threading.Event()
    runner = StreamRunner(pipeline, store, executor, source, stop=stop, report=report)
    signals: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)
        if len(signals) == 1:
            stop.set()  # drain: the batch in flight finishes and commits
        else:
            runner.halt()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        figures = runner.run(max_batches=max_batches)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        source.close()
        store.close()
    if live and not quiet:
        click.echo("", err=True)
    click.echo(
        f"udop stream: stopped after {figures.messages:,} messages in {figures.batches:,} batches"
        + (f" ({signal.Signals(signals[0]).name})" if signals else ""),
        err=True,
    )
    if runner.halted:
        click.echo(
            "udop stream: the batch in flight was stopped; it stays pending and the next "
            f"udop stream {file} resumes it",
            err=True,
        )
        raise click.exceptions.Exit(128 + signals[-1])
