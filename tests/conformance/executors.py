"""The executors the conformance suite runs every scenario on, behind one small interface.

Each entry turns a pipeline file into the run record the metadata store keeps, normalised
(:func:`view`) so that records from different executors compare field by field. A later executor
(Celery) adds one class and one entry in ``EXECUTORS``: ``celery`` runs real ``udop worker``
processes on the shared Redis and PostgreSQL (tests/support/celery_cluster.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

AWS_TESTS = Path(__file__).resolve().parents[1] / "integration" / "aws"
TASK_CODE = AWS_TESTS / "task_code"


def _aws_fixtures() -> Any:
    """tests/integration/aws/conftest.py under its own name (``import conftest`` is ambiguous)."""
    import sys

    if (loaded := sys.modules.get("udop_aws_fixtures")) is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("udop_aws_fixtures", AWS_TESTS / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["udop_aws_fixtures"] = module
    spec.loader.exec_module(module)  # also puts task_code/ on sys.path
    return module


_DATASET = re.compile(r"^(?:s3://[^/]+/|.*/)runs/[^/]+/[^/]+/([^/]+)/?$")


def _lineage(uri: str) -> str:
    """A dataset a task read, without the executor's root and run id: ``dataset:<task>``."""
    found = _DATASET.match(uri)
    return f"dataset:{found.group(1)}" if found else uri


def view(store: Any, run_id: str) -> dict[str, Any]:
    """The run record as every executor must write it: run state; per task its state, attempts
    (state and error name), output rows and schema fingerprint, lineage; the check results."""
    run = store.get_run(run_id)
    assert run is not None, run_id
    tasks: dict[str, Any] = {}
    for t in run.tasks:
        result = t.result or {}
        output = result.get("output") or {}
        tasks[t.task_id] = {
            "state": t.state.value,
            "attempts": [(a.state.value, a.error_type) for a in t.attempts],
            "rows": output.get("rows"),
            "schema": output.get("schema_fingerprint"),
            "lineage": sorted(_lineage(u) for u in result.get("inputs") or []),
        }
    checks = sorted((c.task_id, c.rule, c.passed, c.failing_rows) for c in store.get_checks(run_id))
    return {"state": run.state.value, "tasks": tasks, "checks": checks}


@dataclass(frozen=True)
class Cancel:
    """Cancel the run once ``when()`` is true, then call ``then()`` (the test lets the working task
    return: moto, unlike AWS, ends a stopped execution only when its Task call has returned)."""

    when: Callable[[], bool]
    then: Callable[[], None]


def _when(cancel: Cancel | None, act: Callable[[], None]) -> None:
    """Cancel from another thread once the scenario says so, as a user would."""
    if cancel is None:
        return

    def watch() -> None:
        deadline = time.monotonic() + 60
        while not cancel.when():
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        act()
        cancel.then()

    threading.Thread(target=watch, daemon=True, name="conformance-cancel").start()


class Executor(Protocol):
    name: str

    def run(self, path: Path, cancel: Cancel | None = None) -> tuple[str, dict[str, Any]]:
        """Run the pipeline file to its end; its run id and :func:`view`. With ``cancel``, the
        run is cancelled the executor's own way meanwhile."""

    def resume(self, path: Path, run_id: str) -> dict[str, Any]:
        """Continue a failed run (``udop run --resume`` / ``udop redrive``); its :func:`view`."""


@dataclass
class Local:
    tmp: Path
    name: str = "local"

    def __post_init__(self) -> None:
        from udop.store import open_store

        self.store = open_store(f"sqlite:///{self.tmp / 'local.db'}")

    def _executor(self) -> Any:
        import random

        from udop.executor.local import LocalExecutor

        return LocalExecutor(self.store, workers=2, data_root=str(self.tmp / "local-data"),
                             rng=random.Random(1), services={"base_dir": str(TASK_CODE)})

    def run(self, path: Path, cancel: Cancel | None = None) -> tuple[str, dict[str, Any]]:
        from udop.spec.loader import load_pipeline

        executor = self._executor()
        _when(cancel, lambda: executor.request_stop("cancelled by the user"))
        record = executor.run(load_pipeline(str(path)), params={})
        return record.id, view(self.store, record.id)

    def resume(self, path: Path, run_id: str) -> dict[str, Any]:
        from udop.spec.loader import load_pipeline

        self._executor().run(load_pipeline(str(path)), run_id=run_id, resume=True)
        return view(self.store, run_id)

    def close(self) -> None:
        self.store.close()


@dataclass
class StepFunctions:
    """moto executing the compiled state machine, each Task invoking our real task runner."""

    aws: Any
    store: Any
    name: str = "stepfunctions"
    _in_flight: int | None = None

    def _deploy(self, path: Path) -> None:
        from udop.aws.runs import deploy_file

        result = deploy_file(str(path), definitions_bucket=self.aws.definitions_bucket,
                             task_runner_arn=self.aws.task_runner_arn, role_arn=self.aws.role_arn,
                             store=self.store, s3=self.aws.client("s3"), sfn=self.aws.client("stepfunctions"))
        assert result.ok, result.errors

    def run(self, path: Path, cancel: Cancel | None = None) -> tuple[str, dict[str, Any]]:
        from udop.aws.runs import follow_run, start_run
        from udop.spec.loader import load_pipeline

        self._deploy(path)
        sfn = self.aws.client("stepfunctions")
        run_id, execution, machine = start_run(load_pipeline(str(path)), {}, store=self.store, sfn=sfn)

        def stop() -> None:
            # the task runner invocation in flight goes on (as on AWS); resume waits for it to return
            self._in_flight = len(self.aws.lambdas.invocations) if self.aws.lambdas is not None else None
            sfn.stop_execution(executionArn=execution, error="udop.Cancelled", cause="cancelled by the user")

        _when(cancel, stop)
        follow_run(run_id, machine, execution, store=self.store, sfn=sfn, poll=0.05, timeout=120)
        return run_id, view(self.store, run_id)

    def resume(self, path: Path, run_id: str) -> dict[str, Any]:
        from udop.cli.aws import redrive_and_follow

        if self._in_flight is not None:  # a cancelled attempt's invocation returns first
            deadline = time.monotonic() + 60
            while len(self.aws.lambdas.invocations) <= self._in_flight and time.monotonic() < deadline:
                time.sleep(0.02)

        redrive_and_follow(run_id, store=self.store, sfn=self.aws.client("stepfunctions"))
        return view(self.store, run_id)


@contextlib.contextmanager
def local(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> Iterator[Executor]:
    import sys

    monkeypatch.syspath_prepend(str(TASK_CODE))
    sys.modules.pop("udop_conformance_tasks", None)
    runner = Local(tmp)
    try:
        yield runner
    finally:
        runner.close()


@contextlib.contextmanager
def stepfunctions(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> Iterator[Executor]:
    from udop.store import open_store

    (tmp / "aws").mkdir()
    with _aws_fixtures().aws_account(monkeypatch, tmp / "aws") as aws:
        monkeypatch.setenv("UDOP_DATA_BUCKET", aws.data_bucket)  # follow_run reads full results
        # the task runner is a server: file loads may write to the scenarios' folder (not only its own)
        monkeypatch.setenv("UDOP_SANDBOX_ROOTS", str(tmp))
        store = open_store(aws.database_url)
        try:
            yield StepFunctions(aws, store)
        finally:
            store.close()


@dataclass
class CeleryRunner(Local):
    """The Celery executor's coordinator here, attempts computed by real ``udop worker`` processes."""

    cluster: Any = None
    name: str = "celery"

    def __post_init__(self) -> None:
        from udop.store import open_store

        self.store = open_store(self.cluster.database_url)

    def _executor(self) -> Any:
        import random

        from udop.executor.celery import CeleryExecutor

        return CeleryExecutor(self.store, app=self.cluster.app, settings=self.cluster.settings(), workers=2,
                              data_root=str(self.tmp / "celery-data"), rng=random.Random(1),
                              services={"base_dir": str(TASK_CODE)})


_CLUSTERS: list[Any] = []  # one set of workers for the whole session, started by the first scenario


def _cluster() -> Any:
    if not _CLUSTERS:
        import atexit
        import tempfile

        from support.celery_cluster import Cluster

        cluster = Cluster(Path(tempfile.mkdtemp(prefix="udop-conformance-celery-")), remove_root=True)
        atexit.register(cluster.close)
        _CLUSTERS.append(cluster)
        # three processes: a killed one (timeout, cancel) is replaced while two attempts go on
        cluster.start_worker("conformance", concurrency=3)
    return _CLUSTERS[0]


@contextlib.contextmanager
def celery(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> Iterator[Executor]:
    runner = CeleryRunner(tmp, cluster=_cluster())
    try:
        yield runner
    finally:
        runner.close()


#: name -> how to make one, and the marks its tests carry
EXECUTORS = [
    pytest.param(local, id="local"),
    pytest.param(stepfunctions, id="stepfunctions", marks=[pytest.mark.aws, pytest.mark.redis, pytest.mark.slow]),
    pytest.param(celery, id="celery", marks=[pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]),
]
