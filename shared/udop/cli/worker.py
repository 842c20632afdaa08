"""``udop worker``: a Celery worker computing the attempts of runs started with ``--executor celery``."""

from __future__ import annotations

import click

from udop.errors import InputError

_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}


def _bytes(text: str | None) -> int | None:
    if not text:
        return None
    value = text.strip().lower().removesuffix("b")
    factor = _UNITS.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in _UNITS else value
    try:
        amount = int(float(number) * factor)
    except ValueError:
        raise InputError(f"--max-memory-per-task: {text!r} is not a size such as 512M or 2G") from None
    if amount < 64 * 1024**2:
        raise InputError(f"--max-memory-per-task: {text!r} is below 64M; a task process cannot start in it")
    return amount


@click.command()
@click.option("--concurrency", "-c", type=click.IntRange(1, 512), default=2, show_default=True,
              help="Attempts computed at once (one process each).")
@click.option("--queues", "-Q", metavar="NAMES",
              help="Comma-separated queues to take tasks from (default $UDOP_CELERY_QUEUE, else udop); "
              "a task's `queue:` sends it to the workers of that queue.")
@click.option("--max-memory-per-task", metavar="SIZE",
              help="Address space of each task process (e.g. 2G); a task past it fails with MemoryError.")
@click.option("--time-limit", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Kill an attempt that runs longer (for tasks without a timeout of their own).")
@click.option("--max-tasks-per-child", type=click.IntRange(min=1),
              help="Replace a task process after N attempts.")
@click.option("--prefetch-multiplier", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Tasks each process holds ready beyond the one it computes: more saves a round trip "
              "per short task; a task held behind a long one waits for it (or for another worker only once "
              "this one is lost).")
@click.option("--trusted", is_flag=True,
              help="Run definitions as your own (any path, module, variable); default: the server policy "
              "over the data root (docs/security.md).")
@click.option("--hostname", "-n", help="The worker's node name (default udop@<host>).")
@click.option("--loglevel", "-l", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def worker(*, concurrency: int, queues: str | None, max_memory_per_task: str | None, time_limit: float | None,
           max_tasks_per_child: int | None, prefetch_multiplier: int, trusted: bool, hostname: str | None,
           loglevel: str) -> None:
    """Start a Celery worker: take attempts from the Redis broker ($UDOP_CELERY_BROKER_URL), compute
    them on the shared data root and metadata store ($UDOP_DATA_ROOT, $UDOP_DATABASE_URL).

    Stop it with SIGTERM (it finishes its attempts first); a worker killed outright has its attempts
    delivered to another worker after $UDOP_CELERY_VISIBILITY_TIMEOUT seconds."""
    try:
        from celery.signals import worker_process_init
    except ImportError:
        raise InputError("udop worker needs the celery extra: pip install 'udop[celery]'") from None
    from udop.executor.celery import make_app, process_init, worker_setup
    from udop.settings import CelerySettings, get_settings, load_settings

    memory = _bytes(max_memory_per_task)
    settings = load_settings(CelerySettings)
    base = get_settings()
    from udop.settings import CodeSettings

    worker_setup(trusted=trusted, data_root=base.resolved_data_root,
                 code_dir=load_settings(CodeSettings).code_dir, memory_limit=memory)
    worker_process_init.connect(lambda **_: process_init(), weak=False)
    app = make_app(settings)
    _preload()
    argv = ["worker", "--pool", "prefork", "--concurrency", str(concurrency),
            "--queues", queues or settings.celery_queue, "--loglevel", loglevel.upper(),
            "--without-gossip", "--hostname", hostname or "udop@%h",
            "--prefetch-multiplier", str(prefetch_multiplier)]
    if time_limit is not None:
        argv += ["--time-limit", str(time_limit)]
    if max_tasks_per_child is not None:
        argv += ["--max-tasks-per-child", str(max_tasks_per_child)]
    app.worker_main(argv)


def _preload() -> None:
    """Import what every attempt needs once, in the main process: the pool's processes are forked from
    it and start with them loaded (importing pyarrow and the task types takes seconds on a busy machine)."""
    import importlib

    for module in ("pyarrow", "pyarrow.parquet", "udop.tasks.registry", "udop.tasks.python",
                   "udop.tasks.foreach", "udop.spec.models", "udop.store.sql"):
        importlib.import_module(module)
    from udop.plugins import entry_points_of
    from udop.tasks.registry import ENTRY_POINT_GROUP, get_handler

    for entry in entry_points_of(ENTRY_POINT_GROUP):
        try:
            get_handler(entry.name)
        except Exception as exc:  # a broken plugin fails its own tasks, with its own message, later
            click.echo(f"udop worker: task type {entry.name!r} did not load: {exc}", err=True)
