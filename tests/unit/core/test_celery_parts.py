"""The Celery executor's parts that need no broker: a task's `queue:`, a reported failure keeping the
name and retryability decided on the worker, `udop worker`'s size option, the SQLite refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from udop.errors import Failure, InputError, ReportedFailure, SpecErrors, classify


def _definition(queue: str) -> str:
    return ("apiVersion: udop/v1\nkind: Pipeline\nmetadata: {name: q}\nspec:\n  tasks:\n"
            f"    - {{id: a, type: python, callable: 'm:f', queue: '{queue}'}}\n")


def test_a_task_names_a_queue_and_a_bad_name_is_refused_where_it_is_written(tmp_path: Path) -> None:
    from udop.spec.loader import load_pipeline

    path = tmp_path / "q.yaml"
    path.write_text(_definition("big-memory"))
    assert load_pipeline(str(path)).spec.tasks[0].queue == "big-memory"
    path.write_text(_definition("no spaces"))
    with pytest.raises(SpecErrors) as caught:
        load_pipeline(str(path))
    assert str(caught.value.errors[0]).startswith(f"{path}:6: spec.tasks[0].queue")


def test_a_reported_failure_keeps_what_the_worker_decided() -> None:
    failure = Failure(name="udop.DataQualityError", retryable=False, message="1 rule failed")
    assert classify(ReportedFailure(failure)) == failure
    assert classify(ReportedFailure(Failure("ValueError", True, "flaky"))).retryable


@pytest.mark.parametrize(("size", "message"), [
    ("lots", "--max-memory-per-task: 'lots' is not a size such as 512M or 2G"),
    ("10M", "--max-memory-per-task: '10M' is below 64M; a task process cannot start in it"),
])
def test_udop_worker_refuses_a_bad_memory_size_in_one_line(size: str, message: str) -> None:
    from udop.cli.worker import _bytes

    with pytest.raises(InputError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        _bytes(size)


def test_udop_worker_reads_sizes() -> None:
    from udop.cli.worker import _bytes

    assert _bytes("2G") == 2 * 1024**3
    assert _bytes("512m") == 512 * 1024**2
    assert _bytes(None) is None


def test_the_celery_executor_refuses_sqlite_unless_single_machine(tmp_path: Path) -> None:
    from udop.executor.celery import CeleryExecutor
    from udop.settings import CelerySettings
    from udop.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    try:
        with pytest.raises(InputError, match="needs a metadata store every worker reaches"):
            CeleryExecutor(store, settings=CelerySettings())
        # allowed on one machine; making the app reaches no broker
        executor = CeleryExecutor(store, settings=CelerySettings(celery_single_machine=True))
        assert executor.app.conf.task_acks_late and executor.app.conf.task_reject_on_worker_lost
        assert executor.app.conf.accept_content == ["json"]
    finally:
        store.close()


def test_udop_worker_is_a_command() -> None:
    from udop.cli import cli

    result = CliRunner().invoke(cli, ["worker", "--help"])
    assert result.exit_code == 0
    assert "--max-memory-per-task" in result.output and "--queues" in result.output
