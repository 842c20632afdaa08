"""Where a triggered run goes: a background LocalExecutor here, Step Functions on AWS.

The API answers 202 as soon as the run is recorded (state ``pending``) and never waits for it:
API Gateway cuts a request at 29 s. A launcher records the run first, so ``GET /runs/{id}`` finds it
at once, then hands it to an executor.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from udop.errors import InputError, RunNotFound, SpecErrors
from udop.sandbox import Policy, server_policy
from udop.settings import get_settings
from udop.spec.models import Pipeline
from udop.spec.params import check_env, jsonable_params, resolve_params
from udop.spec.secure import check_definition, stored_definition
from udop.states import RunState, TaskState, is_terminal
from udop.store.api import MetadataStore, PipelineVersionRecord, RunRecord

if TYPE_CHECKING:
    from udop.executor.local import LocalExecutor

__all__ = ["CeleryLauncher", "LocalLauncher", "RunLauncher", "definition_of"]

log = logging.getLogger(__name__)


def definition_of(pipeline: Pipeline) -> dict[str, Any]:
    """The stored form of a definition: the same dump the LocalExecutor registers, so one definition
    posted to the API and run from the CLI is one version, not two. Only what was written is kept
    (defaults filled in would reach the connectors as options they refuse: ``path: null``), and
    inline secrets are masked."""
    return stored_definition(pipeline)


def task_ids(pipeline: Pipeline) -> list[str]:
    return [task.id for task in pipeline.spec.tasks]


class RunLauncher(Protocol):
    executor_name: str
    #: what definitions registered and run here may touch (server mode)
    policy: Policy

    def register(self, pipeline: Pipeline, text: bytes, filename: str) -> PipelineVersionRecord:
        """Record (and where needed deploy) a validated definition; ``SpecErrors`` if it cannot be."""
        ...

    def trigger(
        self, pipeline: Pipeline, *, params: Mapping[str, Any], logical_date: datetime | None, run_id: str
    ) -> RunRecord:
        """Record the run and start it without waiting; ``SpecErrors`` for bad parameters."""
        ...

    def cancel(self, run: RunRecord, *, reason: str) -> RunRecord: ...

    def resume(self, run: RunRecord, pipeline: Pipeline) -> RunRecord:
        """Start a failed or cancelled run again from the tasks that did not succeed."""
        ...

    def retry(self, run: RunRecord, pipeline: Pipeline, task_id: str) -> list[str]:
        """Start an ended run again from ``task_id``: it and every task downstream of it go back to
        pending, then the run resumes. Returns the ids reset; ``InputError`` while the run is live."""
        ...

    def close(self) -> None: ...


class LocalLauncher:
    """Runs each triggered run in a background thread of this process, at most ``max_runs`` at once."""

    executor_name = "local"

    def __init__(
        self,
        store: MetadataStore,
        *,
        workers: int = 4,
        max_runs: int = 4,
        data_root: str | None = None,
        policy: Policy | None = None,
        stop_grace: float | None = None,
    ) -> None:
        self.store = store
        #: a server's runs are sandboxed; the default is the server policy over ``data_root``
        self.policy = policy or server_policy(data_root=data_root or get_settings().resolved_data_root)
        self.workers = workers
        self.data_root = data_root
        #: what each run's executor gives an attempt told to stop (``UDOP_STOP_GRACE``)
        self.stop_grace = stop_grace if stop_grace is not None else get_settings().stop_grace
        self._pool = ThreadPoolExecutor(max_workers=max_runs, thread_name_prefix="udop-run")
        self._lock = threading.Lock()
        # run id -> the executor running it in a thread of the pool: told to stop (``request_stop``)
        # to cancel the run. Cooperatively, never by raising an exception into its thread: one raised
        # at an arbitrary instruction can land in a finaliser or between a pool checkout and its return
        # (a connection leaked, a "garbage collector is trying to clean up" warning later)
        self._running: dict[str, LocalExecutor] = {}
        self._futures: dict[str, Future[None]] = {}
        self._cancelled: set[str] = set()  # cancelled after their thread took them, before it started

    # ------------------------------------------------------------------ API side

    def register(self, pipeline: Pipeline, text: bytes, filename: str) -> PipelineVersionRecord:
        SpecErrors.collect(check_definition(pipeline, self.policy))
        return self.store.register_pipeline(pipeline.name, definition_of(pipeline))

    def trigger(
        self, pipeline: Pipeline, *, params: Mapping[str, Any], logical_date: datetime | None, run_id: str
    ) -> RunRecord:
        SpecErrors.collect(check_definition(pipeline, self.policy))
        values = resolve_params(pipeline, params)
        SpecErrors.collect(check_env(pipeline, self.policy.environ()))
        version = self.store.register_pipeline(pipeline.name, definition_of(pipeline))
        run = self.store.create_run(
            run_id=run_id,
            pipeline=pipeline.name,
            pipeline_version=version.version,
            task_ids=task_ids(pipeline),
            params=jsonable_params(values),
            logical_date=logical_date or datetime.now(UTC),
            executor="local",
            trigger="api",
        )
        self._submit(pipeline, run.id)
        return run

    def resume(self, run: RunRecord, pipeline: Pipeline) -> RunRecord:
        with self._lock:
            if run.id in self._futures:
                raise InputError(f"run {run.id!r} is still running in this server")
        if run.state == RunState.SUCCEEDED:
            raise InputError(f"run {run.id!r} already succeeded; nothing to resume")
        if run.state in (RunState.RUNNING, RunState.PENDING) and run.owner is not None:
            from udop.executor.local import owner_alive

            if owner_alive(run.owner):
                raise InputError(f"run {run.id!r} is still running in process {run.owner}")
        self._submit(pipeline, run.id)
        return run

    def retry(self, run: RunRecord, pipeline: Pipeline, task_id: str) -> list[str]:
        from udop.spec.dag import downstream

        if task_id not in {t.id for t in pipeline.spec.tasks}:
            raise RunNotFound(f"run {run.id!r} has no task {task_id!r}")
        with self._lock:  # the reset and the submission together: no resume or retry in between
            if run.id in self._futures:
                raise InputError(f"run {run.id!r} is still running in this server; retry once it has ended")
            reset = self.store.reset_for_retry(run.id, [task_id, *downstream(pipeline, task_id)])
            self._futures[run.id] = self._pool.submit(contextvars.copy_context().run, self._execute,
                                                      pipeline, run.id)
        return reset

    def cancel(self, run: RunRecord, *, reason: str) -> RunRecord:
        if is_terminal(run.state):
            raise InputError(f"run {run.id!r} has already ended ({run.state.value})")
        with self._lock:
            executor = self._running.get(run.id)
            future = self._futures.get(run.id)
        if executor is not None:
            # its running attempts are told to stop and have stop_grace seconds to wind down; then the
            # executor records them, what waits, and the run cancelled, and returns
            executor.request_stop(reason)
            if future is not None:
                try:
                    future.result(timeout=executor.stop_grace + 10)
                except Exception as exc:  # the run's own failure is in the store; not this call's error
                    log.info("run %s ended with %s while cancelling", run.id, exc)
        else:
            from udop.executor.local import owner_alive

            if run.state == RunState.RUNNING and owner_alive(run.owner):
                raise InputError(
                    f"run {run.id!r} is executing in process {run.owner}, not in this server; "
                    "stop it there (Ctrl-C)"
                )
            # Queued here but not started, or started by a process that is gone: record it directly.
            if future is not None and not future.cancel():
                with self._lock:
                    self._cancelled.add(run.id)
            self._record_cancelled(run.id, reason)
        record = self.store.get_run(run.id)
        if record is None:
            raise RunNotFound(f"no run {run.id!r} in the metadata store")
        return record

    def backlog(self) -> int:
        """Runs accepted and not yet started (what /metrics reports as queued)."""
        with self._lock:
            return max(0, len(self._futures) - len(self._running))

    def close(self) -> None:
        """Stop: queued runs stay pending and running ones are cancelled; both can be resumed later."""
        with self._lock:
            running = list(self._running.values())
        for executor in running:
            executor.request_stop("the server stopped")
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ background side

    def _submit(self, pipeline: Pipeline, run_id: str) -> None:
        with self._lock:
            # the run inherits the request's context: its log lines carry the request's correlation id
            self._futures[run_id] = self._pool.submit(contextvars.copy_context().run, self._execute,
                                                      pipeline, run_id)

    def _executor(self) -> LocalExecutor:
        from udop.executor.local import LocalExecutor

        return LocalExecutor(self.store, workers=self.workers, data_root=self.data_root, policy=self.policy,
                             stop_grace=self.stop_grace)

    def _execute(self, pipeline: Pipeline, run_id: str) -> None:
        try:
            executor = self._executor()
            with self._lock:
                if run_id in self._cancelled:
                    self._cancelled.discard(run_id)
                    return  # cancelled while queued
                # from here a cancel reaches the executor; one before its run starts stops it at once
                self._running[run_id] = executor
            try:
                # The run is already recorded: "resume" it from its first task on.
                record = executor.run(pipeline, run_id=run_id, resume=True)
            finally:
                with self._lock:
                    self._running.pop(run_id, None)
            if record.state == RunState.CANCELLED:
                log.info("run %s cancelled: %s", run_id, record.error)
        except Exception as exc:
            log.exception("run %s failed to execute", run_id)
            self._fail(run_id, exc)
        finally:
            with self._lock:
                self._futures.pop(run_id, None)

    def _record_cancelled(self, run_id: str, reason: str = "cancelled through the API") -> None:
        """Mark what is still open as cancelled (the executor's own handler may have done it already)."""
        run = self.store.get_run(run_id)
        if run is None or is_terminal(run.state):
            return
        waiting = [t.task_id for t in run.tasks if t.state in (TaskState.PENDING, TaskState.RETRYING)]
        if waiting:
            self.store.set_task_states(run_id, waiting, TaskState.CANCELLED, error_message=reason)
        self.store.set_run_state(run_id, RunState.CANCELLED, error=f"cancelled: {reason}")

    def _fail(self, run_id: str, exc: Exception) -> None:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        try:
            run = self.store.get_run(run_id)
            if run is not None and not is_terminal(run.state):
                if run.state == RunState.PENDING:
                    self.store.set_run_state(run_id, RunState.RUNNING)  # failed runs have been running
                self.store.set_run_state(
                    run_id, RunState.FAILED, error=f"the run could not execute: {message}"
                )
        except Exception:
            log.exception("could not record that run %s failed", run_id)


class CeleryLauncher(LocalLauncher):
    """Follows each triggered run in a background thread of this server, as ``LocalLauncher`` does, while
    Celery workers (``udop worker``) compute its attempts (``UDOP_EXECUTOR=celery``)."""

    executor_name = "celery"

    def __init__(self, store: MetadataStore, **kwargs: Any) -> None:
        from udop.executor.celery import CeleryExecutor, make_app

        super().__init__(store, **kwargs)
        self.app = make_app()
        CeleryExecutor(store, app=self.app)  # a SQLite store is refused when the server starts

    def _executor(self) -> LocalExecutor:
        from udop.executor.celery import CeleryExecutor

        return CeleryExecutor(self.store, app=self.app, workers=self.workers, data_root=self.data_root,
                              policy=self.policy, stop_grace=self.stop_grace)
