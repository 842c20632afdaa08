"""The LocalExecutor: runs a pipeline's tasks on this machine with a pool of worker threads.

Same semantics as the compiled state machine: retries with exponential backoff, full jitter and a
max delay; a per-attempt timeout; a task that fails for good marks its dependants
``upstream_failed`` while unrelated branches finish. One thread (the caller's) owns every state
change and persists it through the metadata store before acting on it, so a run killed at any point
(even SIGKILL) resumes from what the store says: ``run(..., run_id=ID, resume=True)``.

A timed-out attempt's thread cannot be killed in Python: it is told to stop (``context.cancel_event``
and the ``on_cancel`` hooks, e.g. DuckDB's interrupt), abandoned, and its late result ignored; its
worker slot is given back at once. At its end the run waits up to ``ABANDONED_GRACE_SECONDS`` for such
attempts to return, so they clean up before the process exits.
"""

from __future__ import annotations

import heapq
import logging
import os
import queue
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from udop.errors import FatalError, InputError, SpecErrors, TaskTimeout, error_type
from udop.executor.events import RunEvent
from udop.spec.dag import dependants, downstream, topological_order
from udop.spec.models import Pipeline
from udop.spec.params import check_env, resolve_params
from udop.states import AttemptState, RunState, TaskState
from udop.store.api import MetadataStore, RunRecord
from udop.tasks.contract import TaskContext, TaskResult
from udop.tasks.foreach import run_foreach
from udop.tasks.registry import run_task

__all__ = ["LocalExecutor", "new_run_id"]

_log = logging.getLogger("udop.executor")

#: how long a finished run waits for its timed-out attempts to unwind (all of them together)
ABANDONED_GRACE_SECONDS = 3.0


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and readable: ``20261126T010919-3fa9c2``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def _owner() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def _owner_alive(owner: str | None) -> bool:
    if not owner or "@" not in owner:
        return False
    pid, host = owner.split("@", 1)
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Attempt:
    task_id: str
    number: int
    context: TaskContext
    deadline: float | None
    cancel_hooks: list[Callable[[], None]] = field(default_factory=list)
    work: Callable[[], None] | None = None
    abandoned: bool = False
    returned: threading.Event = field(default_factory=threading.Event)


class _WorkerPool:
    """Long-lived worker threads (starting a thread per attempt costs ~1 ms under GIL contention).

    An abandoned attempt (timed out) keeps its thread until the task returns, if ever; a
    replacement thread is started at once so the pool keeps ``size`` threads able to take work.
    """

    def __init__(self, size: int) -> None:
        self.jobs: queue.SimpleQueue[_Attempt | None] = queue.SimpleQueue()
        self.live = 0
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        self.live += 1
        threading.Thread(target=self._loop, name=f"udop-worker-{self.live}", daemon=True).start()

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None or job.abandoned:
                return  # shut down, or a replacement thread already took this one's place
            assert job.work is not None
            try:
                job.work()
            finally:
                job.returned.set()
            if job.abandoned:
                return

    def submit(self, job: _Attempt) -> None:
        self.jobs.put(job)

    def abandon(self, job: _Attempt) -> None:
        job.abandoned = True
        self._spawn()

    def shutdown(self) -> None:
        for _ in range(self.live):
            self.jobs.put(None)


class LocalExecutor:
    """Run pipelines with ``workers`` tasks at a time, persisting every state change to ``store``."""

    def __init__(
        self,
        store: MetadataStore,
        *,
        workers: int = 4,
        data_root: str | None = None,
        on_event: Callable[[RunEvent], None] | None = None,
        services: Mapping[str, Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if workers < 1:
            raise InputError("--workers must be at least 1")
        if data_root is None:
            from udop.settings import get_settings

            data_root = get_settings().resolved_data_root
        self.store = store
        self.workers = workers
        self.data_root = data_root
        self.on_event = on_event or (lambda _event: None)
        self.services = dict(services or {})
        self.rng = rng or random.Random()

    # ------------------------------------------------------------------ entry point

    def run(
        self,
        pipeline: Pipeline,
        *,
        params: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        resume: bool = False,
        logical_date: datetime | None = None,
    ) -> RunRecord:
        """Run ``pipeline`` (or resume run ``run_id``) to the end and return its final record.

        Raises ``InputError`` (``SpecErrors``, a missing parameter, an unknown run) before anything runs.
        """
        if resume:
            if run_id is None:
                raise InputError("resume needs a run id")
            run, values, logical = self._prepare_resume(pipeline, run_id, params)
        else:
            values = resolve_params(pipeline, params)
            SpecErrors.collect(check_env(pipeline))
            logical = logical_date or datetime.now(UTC)
            version = self.store.register_pipeline(
                pipeline.name, pipeline.model_dump(mode="json", by_alias=True)
            )
            run = self.store.create_run(
                run_id=run_id or new_run_id(),
                pipeline=pipeline.name,
                pipeline_version=version.version,
                task_ids=[t.id for t in pipeline.spec.tasks],
                params=_jsonable(values),
                logical_date=logical,
            )
            self.store.set_run_state(run.id, RunState.RUNNING, owner=_owner())
        self.on_event(RunEvent("run", run.id, RunState.RUNNING.value))
        return _Run(self, pipeline, run.id, values, logical).execute()

    def _prepare_resume(
        self, pipeline: Pipeline, run_id: str, params: Mapping[str, Any] | None
    ) -> tuple[RunRecord, dict[str, Any], datetime]:
        from udop.errors import RunNotFound

        run = self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id!r} in the metadata store")
        if run.pipeline != pipeline.name:
            raise InputError(f"run {run_id!r} belongs to pipeline {run.pipeline!r}, not {pipeline.name!r}")
        if params:
            raise InputError("a resumed run keeps the parameters it started with; do not pass --param")
        if run.state == RunState.SUCCEEDED:
            raise InputError(f"run {run_id!r} already succeeded; nothing to resume")
        if run.state in (RunState.RUNNING, RunState.PENDING) and _owner_alive(run.owner):
            raise InputError(f"run {run_id!r} is still running in process {run.owner}")
        if {t.task_id for t in run.tasks} != {t.id for t in pipeline.spec.tasks}:
            raise InputError(
                f"the definition's tasks differ from run {run_id!r}'s; resume with the same "
                "definition or start a new run"
            )
        values = resolve_params(pipeline, run.params)
        SpecErrors.collect(check_env(pipeline))
        self.store.reset_for_resume(run_id)
        self.store.set_run_state(run_id, RunState.RUNNING, owner=_owner())
        return run, values, run.logical_date


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: v.isoformat() if isinstance(v, datetime) or hasattr(v, "isoformat") else v
        for k, v in values.items()
    }


class _Run:
    """One execution of the scheduling loop. Only the calling thread touches state or the store."""

    def __init__(
        self,
        executor: LocalExecutor,
        pipeline: Pipeline,
        run_id: str,
        params: dict[str, Any],
        logical_date: datetime,
    ) -> None:
        self.ex = executor
        self.store = executor.store
        self.pipeline = pipeline
        self.run_id = run_id
        self.params = params
        self.logical_date = logical_date
        self.tasks = {t.id: t for t in pipeline.spec.tasks}
        self.order = {tid: i for i, tid in enumerate(topological_order(pipeline))}
        self.children = dependants(pipeline)
        self.results: dict[str, TaskResult] = {}
        self.state: dict[str, TaskState] = {}
        self.attempts_done: dict[str, int] = {}
        self.waiting: dict[str, int] = {}  # task id -> dependencies not yet succeeded
        self.ready: list[tuple[int, str]] = []  # heap by topological position
        self.retries: list[tuple[float, int, str]] = []  # heap of (due time, position, task id)
        self.inflight: dict[tuple[str, int], _Attempt] = {}
        self.abandoned: list[_Attempt] = []
        self.done: queue.SimpleQueue[
            tuple[str, int, TaskResult | None, dict[str, Any] | None, BaseException | None]
        ] = queue.SimpleQueue()
        self.failures: list[str] = []

    # ------------------------------------------------------------------ setup

    def _load(self) -> None:
        record = self.store.get_run(self.run_id)
        assert record is not None
        for task in record.tasks:
            self.state[task.task_id] = task.state
            self.attempts_done[task.task_id] = len(task.attempts)
            if task.state == TaskState.SUCCEEDED and task.result is not None:
                self.results[task.task_id] = TaskResult.from_dict(task.result)
        for tid, task in self.tasks.items():
            self.waiting[tid] = sum(1 for d in task.depends_on if self.state[d] != TaskState.SUCCEEDED)
            if self.state[tid] == TaskState.PENDING and self.waiting[tid] == 0:
                heapq.heappush(self.ready, (self.order[tid], tid))

    # ------------------------------------------------------------------ the loop

    def execute(self) -> RunRecord:
        self._load()
        self.pool = _WorkerPool(self.ex.workers)
        try:
            while self.ready or self.inflight or self.retries:
                self._launch_ready()
                self._wait_and_handle()
        except BaseException as exc:  # KeyboardInterrupt, SystemExit, a store failure: stop cleanly
            self._cancel(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            raise
        finally:
            self.pool.shutdown()
            self._let_abandoned_attempts_stop()
        final = (
            RunState.SUCCEEDED
            if all(s == TaskState.SUCCEEDED for s in self.state.values())
            else RunState.FAILED
        )
        error = "; ".join(self.failures) if final == RunState.FAILED else None
        if final == RunState.FAILED and not error:
            error = "not every task succeeded"
        record = self.store.set_run_state(self.run_id, final, error=error)
        self.ex.on_event(RunEvent("run", self.run_id, final.value, message=error))
        return record

    def _launch_ready(self) -> None:
        while self.ready and len(self.inflight) < self.ex.workers:
            _, tid = heapq.heappop(self.ready)
            self._start(tid)

    def _next_wakeup(self) -> float | None:
        times = [a.deadline for a in self.inflight.values() if a.deadline is not None]
        if self.retries:
            times.append(self.retries[0][0])
        return min(times) if times else None

    def _wait_and_handle(self) -> None:
        wake = self._next_wakeup()
        timeout = None if wake is None else max(0.0, wake - time.monotonic())
        if not self.inflight and timeout is None:
            return
        try:
            # Bounded wait so that Ctrl-C is noticed promptly even with no deadline.
            item = self.done.get(timeout=min(timeout, 0.5) if timeout is not None else 0.5)
        except queue.Empty:
            item = None
        if item is not None:
            self._finish(*item)
        now = time.monotonic()
        for key, attempt in list(self.inflight.items()):
            if attempt.deadline is not None and now >= attempt.deadline:
                self._timeout(key, attempt)
        while self.retries and self.retries[0][0] <= now:
            _, position, tid = heapq.heappop(self.retries)
            heapq.heappush(self.ready, (position, tid))

    # ------------------------------------------------------------------ attempts

    def _start(self, tid: str) -> None:
        task = self.tasks[tid]
        number = self.attempts_done[tid] + 1
        self.attempts_done[tid] = number
        self.store.start_attempt(self.run_id, tid, number)
        self.state[tid] = TaskState.RUNNING
        self.ex.on_event(RunEvent("task", self.run_id, TaskState.RUNNING.value, tid, number))
        timeout = self.pipeline.timeout_for(task)
        attempt = _Attempt(
            tid, number, context=None, deadline=time.monotonic() + timeout if timeout else None
        )  # type: ignore[arg-type]
        attempt.context = TaskContext(
            pipeline=self.pipeline,
            task_id=tid,
            run_id=self.run_id,
            attempt=number,
            logical_date=self.logical_date,
            params=self.params,
            data_root=self.ex.data_root,
            on_cancel=attempt.cancel_hooks.append,
            services=self.ex.services,
        )
        self.inflight[(tid, number)] = attempt
        inputs = {d: self.results[d] for d in task.depends_on}
        context = attempt.context
        attempt.work = lambda: self._work(context, task, inputs)
        self.pool.submit(attempt)

    def _work(self, context: TaskContext, task: Any, inputs: dict[str, TaskResult]) -> None:
        """Runs in a worker thread: only computes, never touches run state."""
        try:
            if task.foreach is not None:
                result = run_foreach(context, task, inputs, workers=self.ex.workers)
            else:
                result = run_task(context, task, inputs)
            if not result.inputs:
                lineage = tuple(r.output.uri if r.output else f"task:{tid}" for tid, r in inputs.items())
                result = TaskResult(
                    output=result.output,
                    value=result.value,
                    inputs=lineage,
                    checks=result.checks,
                    metrics=result.metrics,
                )
            body = result.to_dict()  # serialisation errors (a too-large value) fail the attempt here
            self.done.put((context.task_id, context.attempt, result, body, None))
        except BaseException as exc:  # every failure is reported to the loop, which decides
            self.done.put((context.task_id, context.attempt, None, None, exc))

    def _finish(
        self,
        tid: str,
        number: int,
        result: TaskResult | None,
        body: dict[str, Any] | None,
        exc: BaseException | None,
    ) -> None:
        attempt = self.inflight.pop((tid, number), None)
        if attempt is None:
            return  # a late answer from an attempt that already timed out: ignored
        if exc is None:
            assert result is not None
            self.store.finish_attempt(
                self.run_id,
                tid,
                number,
                attempt_state=AttemptState.SUCCEEDED,
                task_state=TaskState.SUCCEEDED,
                result=body,
            )
            self.state[tid] = TaskState.SUCCEEDED
            self.results[tid] = result
            self.ex.on_event(
                RunEvent(
                    "task", self.run_id, TaskState.SUCCEEDED.value, tid, number, message=_summary(result)
                )
            )
            for child in self.children[tid]:
                self.waiting[child] -= 1
                if self.waiting[child] == 0 and self.state[child] == TaskState.PENDING:
                    heapq.heappush(self.ready, (self.order[child], child))
        else:
            self._failed(tid, number, AttemptState.FAILED, exc)

    def _let_abandoned_attempts_stop(self) -> None:
        """Give cancelled attempts a moment to unwind before the run returns: a DuckDB query told to stop
        removes its half-written files, and a process that exits while a thread is still inside DuckDB
        aborts (SIGABRT) instead of exiting with the run's status."""
        until = time.monotonic() + ABANDONED_GRACE_SECONDS
        for attempt in self.abandoned:
            if not attempt.returned.wait(max(0.0, until - time.monotonic())):
                _log.warning("task %r attempt %d is still running after it was cancelled; leaving it",
                             attempt.task_id, attempt.number)

    def _timeout(self, key: tuple[str, int], attempt: _Attempt) -> None:
        del self.inflight[key]
        self.pool.abandon(attempt)
        self.abandoned.append(attempt)
        attempt.context.cancel_event.set()
        for hook in attempt.cancel_hooks:
            try:
                hook()
            except Exception as exc:  # a hook failing must not stop the run; the attempt is abandoned anyway
                _log.warning("cancel hook of task %r failed: %s", attempt.task_id, exc)
        timeout = self.pipeline.timeout_for(self.tasks[attempt.task_id])
        exc = TaskTimeout(
            f"task {attempt.task_id!r} attempt {attempt.number} ran longer than its timeout of {timeout:g}s"
        )
        self._failed(attempt.task_id, attempt.number, AttemptState.TIMED_OUT, exc)

    def _failed(self, tid: str, number: int, attempt_state: AttemptState, exc: BaseException) -> None:
        task = self.tasks[tid]
        policy = self.pipeline.retry_for(task)
        kind, message = error_type(exc), _message(exc)
        checks = getattr(exc, "checks", None)
        body = TaskResult(checks=tuple(checks)).to_dict() if checks else None
        # InputError raised inside a task (an unknown connector, a malformed setting) cannot heal by itself
        retryable = not isinstance(exc, FatalError | InputError | KeyboardInterrupt | SystemExit)
        if retryable and number < policy.max_attempts:
            self.store.finish_attempt(
                self.run_id,
                tid,
                number,
                attempt_state=attempt_state,
                task_state=TaskState.RETRYING,
                error_type=kind,
                error_message=message,
                result=body,
            )
            self.state[tid] = TaskState.RETRYING
            delay = policy.delay(number)
            if policy.jitter == "full":
                delay = self.ex.rng.uniform(0, delay)
            heapq.heappush(self.retries, (time.monotonic() + delay, self.order[tid], tid))
            self.ex.on_event(
                RunEvent(
                    "task",
                    self.run_id,
                    TaskState.RETRYING.value,
                    tid,
                    number,
                    message=f"{kind}: {message} (retry in {delay:.1f}s)",
                )
            )
            return
        self.store.finish_attempt(
            self.run_id,
            tid,
            number,
            attempt_state=attempt_state,
            task_state=TaskState.FAILED,
            error_type=kind,
            error_message=message,
            result=body,
        )
        self.state[tid] = TaskState.FAILED
        self.failures.append(f"task {tid!r} failed: {kind}: {message}")
        self.ex.on_event(
            RunEvent("task", self.run_id, TaskState.FAILED.value, tid, number, message=f"{kind}: {message}")
        )
        blocked = [
            t for t in downstream(self.pipeline, tid, self.children) if self.state[t] == TaskState.PENDING
        ]
        if blocked:
            self.store.set_task_states(
                self.run_id, blocked, TaskState.UPSTREAM_FAILED, error_message=f"upstream task {tid!r} failed"
            )
            for t in blocked:
                self.state[t] = TaskState.UPSTREAM_FAILED
                self.ex.on_event(
                    RunEvent(
                        "task",
                        self.run_id,
                        TaskState.UPSTREAM_FAILED.value,
                        t,
                        message=f"upstream task {tid!r} failed",
                    )
                )

    def _cancel(self, reason: str) -> None:
        """Interrupted: abandon running attempts and mark the run cancelled, as far as the store allows."""
        try:
            for (tid, number), attempt in list(self.inflight.items()):
                attempt.context.cancel_event.set()
                self.abandoned.append(attempt)
                self.store.finish_attempt(
                    self.run_id,
                    tid,
                    number,
                    attempt_state=AttemptState.ABANDONED,
                    task_state=TaskState.CANCELLED,
                    error_type="Cancelled",
                    error_message=reason,
                )
            waiting = [t for t, s in self.state.items() if s in (TaskState.PENDING, TaskState.RETRYING)]
            if waiting:
                self.store.set_task_states(self.run_id, waiting, TaskState.CANCELLED, error_message=reason)
            self.store.set_run_state(self.run_id, RunState.CANCELLED, error=f"cancelled: {reason}")
            self.ex.on_event(RunEvent("run", self.run_id, RunState.CANCELLED.value, message=reason))
        except Exception as exc:  # the store itself may be what failed; resume repairs the records
            _log.warning("run %s: could not record the cancellation (%s); `udop run --resume %s` "
                         "repairs the records", self.run_id, exc, self.run_id)


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:4000]


def _summary(result: TaskResult) -> str | None:
    if result.output is not None and result.output.rows is not None:
        return f"{result.output.rows:,} rows"
    return None
