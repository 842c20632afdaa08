"""The LocalExecutor: runs a pipeline's tasks on this machine with a pool of worker threads.

Same semantics as the compiled state machine: retries with exponential backoff, full jitter and a
max delay; a per-attempt timeout; a task that fails for good marks its dependants
``upstream_failed`` while unrelated branches finish. One thread (the caller's) owns every state
change and persists it through the metadata store before acting on it, so a run killed at any point
(even SIGKILL) resumes from what the store says: ``run(..., run_id=ID, resume=True)``.

A timed-out attempt is stopped before its retry starts. A ``python`` task with a timeout runs in a
child process, killed at the timeout (``udop.executor.attempt``). Other attempts run in threads,
which cannot be killed in Python; for them there is one mechanism, ``stopping``: an attempt told to
stop (``context.cancel_event`` and the ``on_cancel`` hooks, e.g. DuckDB's interrupt) — at its
timeout or when the run is cancelled — is kept there, with a give-up time ``stop_grace`` seconds
later, until its thread returns. Its worker slot is given back at once; its retry waits while it
is there; at the give-up time its task fails for good rather than run alongside its retry, and
the executor stops waiting for it. When the run ends, it waits for the attempts still stopping up
to their give-up times, so that they clean up (a DuckDB query removes its half-written files)
before the process exits.

``request_stop`` (the CLI calls it on SIGINT and SIGTERM) cancels a run cooperatively: running
attempts are told to stop and given ``stop_grace`` seconds, then the run ends ``cancelled`` and
``--resume`` continues it. While it runs, a run holds a lease in the metadata store, renewed every
few seconds, which with the pipeline's ``max_active_runs`` keeps further runs out.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import queue
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from udop.errors import (
    FatalError,
    InputError,
    RunLimitReached,
    SpecErrors,
    StoreError,
    TaskTimeout,
    classify,
)
from udop.executor.attempt import STARTUP_ALLOWANCE, ChildAttempt, failed_checks, needs_process
from udop.executor.events import RunEvent
from udop.executor.fusion import Fusion
from udop.lineage import openlineage
from udop.observability import hooks
from udop.observability.context import bound, current, new_correlation_id
from udop.observability.tasklogs import attempt_scope, recording_logs
from udop.sandbox import Policy
from udop.sandbox import active as sandbox_active
from udop.spec.dag import dependants, downstream, topological_order
from udop.spec.models import Pipeline
from udop.spec.params import check_env, jsonable_params, resolve_params
from udop.spec.secure import stored_definition
from udop.states import AttemptState, RunState, TaskState
from udop.store.api import MetadataStore, RunRecord, RunSlot
from udop.tasks.contract import TaskContext, TaskResult

__all__ = ["InflightAttempt", "LocalExecutor", "RunLoop", "WorkerPool", "new_run_id", "owner_alive"]

_log = logging.getLogger("udop.executor")

def new_run_id(now: datetime | None = None) -> str:
    """Sortable and readable: ``20261126T010919-3fa9c2``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def _owner() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def owner_alive(owner: str | None) -> bool:
    """Whether ``owner`` (``pid@host``) is another live process on this machine."""
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
class InflightAttempt:
    task_id: str
    number: int
    context: TaskContext
    deadline: float | None
    cancel_hooks: list[Callable[[], None]] = field(default_factory=list)
    work: Callable[[], None] | None = None
    abandoned: bool = False
    returned: threading.Event = field(default_factory=threading.Event)
    child: ChildAttempt | None = None  # set when the attempt runs in a child process
    give_up: float = 0.0  # told to stop: when the executor stops waiting for it (monotonic)


class WorkerPool:
    """Long-lived worker threads (starting a thread per attempt costs ~1 ms under GIL contention).

    An abandoned attempt (timed out) keeps its thread until the task returns, if ever; a
    replacement thread is started at once so the pool keeps ``size`` threads able to take work.
    """

    def __init__(self, size: int) -> None:
        self.jobs: queue.SimpleQueue[InflightAttempt | None] = queue.SimpleQueue()
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

    def submit(self, job: InflightAttempt) -> None:
        self.jobs.put(job)

    def abandon(self, job: InflightAttempt) -> None:
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
        policy: Policy | None = None,
        lease_seconds: float = 60.0,
        stop_grace: float | None = None,
    ) -> None:
        if workers < 1:
            raise InputError("--workers must be at least 1")
        if data_root is None or stop_grace is None:
            from udop.settings import get_settings

            settings = get_settings()
            data_root = settings.resolved_data_root if data_root is None else data_root
            stop_grace = settings.stop_grace if stop_grace is None else stop_grace
        self.store = store
        self.workers = workers
        self.data_root = data_root
        self.on_event = on_event or (lambda _event: None)
        self.services = dict(services or {})
        self.rng = rng or random.Random()
        #: what tasks may touch; ``udop run`` leaves it trusted, a server passes its own
        self.policy = policy or Policy.trusted()
        #: a run's lease in the metadata store; renewed every third of it while the run goes on
        self.lease_seconds = lease_seconds
        #: how long a stopped or timed-out attempt may take to return before it is given up
        #: (``UDOP_STOP_GRACE``, default 10 s)
        self.stop_grace = stop_grace
        self._stop = threading.Event()
        self._stop_reason = ""
        self._active: RunLoop | None = None
        #: the worker threads runs share while ``reusing_workers`` is on (a stream's batches)
        self._kept_pool: WorkerPool | None = None
        self._keep_pool = False

    #: whether a ``python`` task with a timeout runs each attempt in a child process of this one
    child_processes = True

    def request_stop(self, reason: str) -> None:
        """Cancel the run in progress cooperatively (safe to call from a signal handler).

        The executor stays stopped: a run it is waiting to start (``wait``) is given up, and a later
        ``run`` stops at once. Make a new executor to run again.
        """
        self._stop_reason = reason
        self._stop.set()
        active = self._active
        if active is not None:
            active.done.put(None)  # wakes the loop; SimpleQueue.put is reentrant

    @contextlib.contextmanager
    def reusing_workers(self) -> Iterator[None]:
        """Runs started inside share one pool of worker threads, shut down when this ends, instead of
        starting (and joining) ``workers`` threads each: for many small runs in a row (a stream's
        micro-batches), where the threads' start was a measurable part of a batch."""
        self._keep_pool = True
        try:
            yield
        finally:
            self._keep_pool = False
            pool, self._kept_pool = self._kept_pool, None
            if pool is not None:
                pool.shutdown()

    def _slot(self, pipeline: Pipeline) -> RunSlot:
        return RunSlot(owner=_owner(), lease_seconds=self.lease_seconds,
                       max_active=pipeline.active_run_limit(), alive=_holder_alive)

    # ------------------------------------------------------------------ entry point

    def run(
        self,
        pipeline: Pipeline,
        *,
        params: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        resume: bool = False,
        logical_date: datetime | None = None,
        on_new_version: bool = False,
        wait: bool = False,
        on_wait: Callable[[str], None] | None = None,
        trigger: str | None = None,
        given: Mapping[str, TaskResult] | None = None,
    ) -> RunRecord:
        """Run ``pipeline`` (or resume run ``run_id``) to the end and return its final record.
        ``trigger``: how a new run was started, recorded with it (``udop.store.api.RUN_TRIGGERS``).
        ``given``: results of tasks that do not run, recorded as their one succeeded attempt (a stream's
        micro-batch stands in for its extract task this way); a resumed run records those it lacks.

        Raises ``InputError`` (``SpecErrors``, a missing parameter, an unknown run, a resume whose
        definition changed without ``on_new_version``) before anything runs, and ``RunLimitReached``
        when the pipeline's ``max_active_runs`` are taken, unless ``wait``: then it waits for a free
        slot (``on_wait`` is told why, once). A run cancelled by ``request_stop`` returns its
        ``cancelled`` record.
        """
        while True:
            try:
                return self._run_once(pipeline, params, run_id=run_id, resume=resume,
                                      logical_date=logical_date, on_new_version=on_new_version,
                                      trigger=trigger, given=given)
            except RunLimitReached as exc:
                if not wait:
                    raise
                if on_wait is not None:
                    on_wait(str(exc))
                    on_wait = None
                if self._stop.wait(min(2.0, self.lease_seconds / 3)):
                    raise RunLimitReached(f"{exc} (stopped while waiting)") from None

    def _run_once(
        self,
        pipeline: Pipeline,
        params: Mapping[str, Any] | None,
        *,
        run_id: str | None,
        resume: bool,
        logical_date: datetime | None,
        on_new_version: bool,
        trigger: str | None = None,
        given: Mapping[str, TaskResult] | None = None,
    ) -> RunRecord:
        if resume:
            if run_id is None:
                raise InputError("resume needs a run id")
            run, values, logical = self._prepare_resume(pipeline, run_id, params, on_new_version)
        else:
            values = resolve_params(pipeline, params)
            SpecErrors.collect(check_env(pipeline, self.policy.environ()))
            logical = logical_date or datetime.now(UTC)
            # inline secrets of a trusted file are kept masked (a server refuses them before this)
            version = self.store.register_pipeline(
                pipeline.name,
                stored_definition(pipeline),
            )
            run = self.store.create_run(
                run_id=run_id or new_run_id(),
                pipeline=pipeline.name,
                pipeline_version=version.version,
                task_ids=[t.id for t in pipeline.spec.tasks],
                params=jsonable_params(values),
                logical_date=logical,
                slot=self._slot(pipeline),
                trigger=trigger,
            )
        if given:
            self._record_given(run.id, given)
        active = self._new_run(pipeline, run.id, values, logical)
        notify = self.on_event  # with UDOP_OPENLINEAGE=1 the run's events go to OpenLineage too
        self.on_event = openlineage.listen(notify, self.store, pipeline, run.id, logical_date=logical,
                                           results=active.results)
        self.on_event(RunEvent("run", run.id, RunState.RUNNING.value))
        self._active = active
        try:
            record = active.execute()
        finally:
            self._active = None
            self.on_event = notify
        if getattr(pipeline.spec, "alerts", None) is not None:
            from udop.alerts import notify_run_end

            with sandbox_active(self.policy):
                notify_run_end(self.store, pipeline, record.id)
        return record

    def _new_run(self, pipeline: Pipeline, run_id: str, params: dict[str, Any], logical: datetime) -> RunLoop:
        """The scheduling loop of one run (another executor keeps the loop and sends attempts elsewhere)."""
        return RunLoop(self, pipeline, run_id, params, logical)

    def _record_given(self, run_id: str, given: Mapping[str, TaskResult]) -> None:
        record = self.store.get_run(run_id)
        assert record is not None
        for task in record.tasks:
            if task.task_id in given and task.state != TaskState.SUCCEEDED:
                number = len(task.attempts) + 1
                self.store.start_attempt(run_id, task.task_id, number)
                self.store.finish_attempt(run_id, task.task_id, number, attempt_state=AttemptState.SUCCEEDED,
                                          task_state=TaskState.SUCCEEDED,
                                          result=given[task.task_id].to_dict())

    def _prepare_resume(
        self, pipeline: Pipeline, run_id: str, params: Mapping[str, Any] | None, on_new_version: bool
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
        if run.state in (RunState.RUNNING, RunState.PENDING) and owner_alive(run.owner):
            raise InputError(f"run {run_id!r} is still running in process {run.owner}")
        if {t.task_id for t in run.tasks} != {t.id for t in pipeline.spec.tasks}:
            raise InputError(
                f"the definition's tasks differ from run {run_id!r}'s; resume with the same "
                "definition or start a new run"
            )
        new_version = self._check_version(pipeline, run, on_new_version)
        values = resolve_params(pipeline, run.params)
        SpecErrors.collect(check_env(pipeline, self.policy.environ()))
        if new_version is not None:
            new_version = self.store.register_pipeline(
                pipeline.name, stored_definition(pipeline)
            ).version
            self.on_event(RunEvent("run", run_id, "resuming", message=(
                f"resuming on version {new_version} of {pipeline.name!r} (the run started on version "
                f"{run.pipeline_version})")))
        self.store.reset_for_resume(run_id, slot=self._slot(pipeline), pipeline_version=new_version)
        return run, values, run.logical_date

    def _check_version(self, pipeline: Pipeline, run: RunRecord, on_new_version: bool) -> int | None:
        """None when ``pipeline`` is the version ``run`` runs on; else 0, if allowed to change."""
        from udop.store.sql import content_hash

        record = self.store.get_pipeline(pipeline.name)
        versions = record.versions if record else []
        stored = next((v for v in versions if v.version == run.pipeline_version), None)
        given = content_hash(stored_definition(pipeline))
        if stored is None or stored.content_hash == given:
            return None
        if not on_new_version:
            raise InputError(
                f"run {run.id!r} runs version {run.pipeline_version} of pipeline {pipeline.name!r}, and the "
                "definition given differs from it (edited since); restore it, or resume with "
                "--on-new-version to go on under the edited definition (stored as a new version)"
            )
        return 0


def _holder_alive(owner: str | None) -> bool:
    """Whether the process holding a run may still be running: dead only if it is ours to ask."""
    if not owner or "@" not in owner:
        return True
    pid, host = owner.split("@", 1)
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine: its lease decides
    return int(pid) == os.getpid() or owner_alive(owner)


class RunLoop:
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
        self.store = recording_logs(executor.store, executor.data_root)  # keeps each attempt's log record
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
        self.inflight: dict[tuple[str, int], InflightAttempt] = {}
        # None: a wake-up (request_stop)
        self.done: queue.SimpleQueue[
            tuple[str, int, TaskResult | None, dict[str, Any] | None, BaseException | None] | None
        ] = queue.SimpleQueue()
        self.failures: list[str] = []
        # thread attempts told to stop (timed out, cancelled) whose thread has not returned yet
        self.stopping: dict[tuple[str, int], InflightAttempt] = {}
        self.lease_due = time.monotonic() + executor.lease_seconds / 3
        # worker threads do not inherit context variables: each attempt binds the run's ids itself
        self.correlation_id = current().correlation_id or new_correlation_id()
        self.logical_iso = logical_date.isoformat()
        self.started_mono: dict[tuple[str, int], float] = {}
        self.traceparent: str | None = None  # a W3C parent for the run's span (set by a caller)
        self.trace_context: Any = None  # the run span's context, parent of the task spans
        self.final_state: str | None = None
        self.fusion = Fusion(pipeline, lambda tid: self.attempts_done[tid] + 1)

    # ------------------------------------------------------------------ setup

    def _load(self) -> None:
        record = self.store.get_run(self.run_id)
        assert record is not None
        for task in record.tasks:
            self.state[task.task_id] = task.state
            self.attempts_done[task.task_id] = len(task.attempts)
            if task.state == TaskState.SUCCEEDED and task.result is not None:
                self.results[task.task_id] = TaskResult.from_dict(task.result)
        for tid, spec_task in self.tasks.items():
            self.waiting[tid] = sum(1 for d in spec_task.depends_on if self.state[d] != TaskState.SUCCEEDED)
            if self.state[tid] == TaskState.PENDING and self.waiting[tid] == 0:
                heapq.heappush(self.ready, (self.order[tid], tid))

    # ------------------------------------------------------------------ the loop

    def execute(self) -> RunRecord:
        with bound(correlation_id=self.correlation_id, run_id=self.run_id, pipeline=self.pipeline.name,
                   logical_date=self.logical_iso), hooks.run_span(self):
            record = self._execute()
        hooks.run_finished(self.pipeline.name, record.state.value)
        return record

    def _execute(self) -> RunRecord:
        self._load()
        self.pool = self._new_pool()
        try:
            while self.ready or self.inflight or self.retries:
                if self.ex._stop.is_set():
                    return self._stop(self.ex._stop_reason or "stopped")
                self._launch_ready()
                self._wait_and_handle()
                self._renew_lease()
        except BaseException as exc:  # KeyboardInterrupt, SystemExit, a store failure: stop cleanly
            self._cancel(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            raise
        finally:
            if self.pool is not self.ex._kept_pool:
                self.pool.shutdown()
            self._wait_for_stopping_attempts()
        final = (
            RunState.SUCCEEDED
            if all(s == TaskState.SUCCEEDED for s in self.state.values())
            else RunState.FAILED
        )
        error = "; ".join(self.failures) if final == RunState.FAILED else None
        if final == RunState.FAILED and not error:
            error = "not every task succeeded"
        record = self.store.set_run_state(self.run_id, final, error=error)
        self.final_state = final.value
        self.ex.on_event(RunEvent("run", self.run_id, final.value, message=error))
        return record

    def _new_pool(self) -> WorkerPool:
        """Where attempts go: worker threads of this process (``udop.executor.celery``: Celery workers);
        the executor's kept pool while it is ``reusing_workers``."""
        if not self.ex._keep_pool:
            return WorkerPool(self.ex.workers)
        if self.ex._kept_pool is None:
            self.ex._kept_pool = WorkerPool(self.ex.workers)
        return self.ex._kept_pool

    def _renew_lease(self) -> None:
        now = time.monotonic()
        if now < self.lease_due:
            return
        self.lease_due = now + self.ex.lease_seconds / 3
        if not self.store.renew_lease(self.run_id, _owner(), self.ex.lease_seconds):
            _log.warning("run %s: its lease in the metadata store is no longer held by this process",
                         self.run_id)

    def _launch_ready(self) -> None:
        while self.ready and len(self.inflight) < self.ex.workers:
            _, tid = heapq.heappop(self.ready)
            self._start(tid)

    def _next_wakeup(self) -> float | None:
        times = [a.deadline for a in self.inflight.values() if a.deadline is not None]
        if self.retries:
            times.append(self.retries[0][0])
        times.extend(a.give_up for a in self.stopping.values())
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
        for key, attempt in list(self.stopping.items()):
            if now >= attempt.give_up:
                self._did_not_stop(*key)
        held = []
        while self.retries and self.retries[0][0] <= now:
            due, position, tid = heapq.heappop(self.retries)
            if any(key[0] == tid for key in self.stopping):
                held.append((due, position, tid))  # its timed-out attempt has not returned yet
            else:
                heapq.heappush(self.ready, (position, tid))
        for entry in held:
            heapq.heappush(self.retries, entry)

    # ------------------------------------------------------------------ attempts

    def _start(self, tid: str) -> None:
        task = self.tasks[tid]
        number = self.attempts_done[tid] + 1
        self.attempts_done[tid] = number
        self.store.start_attempt(self.run_id, tid, number)
        self.started_mono[(tid, number)] = time.monotonic()
        self.state[tid] = TaskState.RUNNING
        self.ex.on_event(RunEvent("task", self.run_id, TaskState.RUNNING.value, tid, number))
        timeout = self.fusion.timeout(tid, self.pipeline.timeout_for(task))
        attempt = InflightAttempt(
            tid, number, context=None,  # type: ignore[arg-type]  # set just below; it needs the attempt
            deadline=time.monotonic() + timeout if timeout else None,
        )
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
            policy=self.ex.policy,
        )
        self.inflight[(tid, number)] = attempt
        inputs = {d: self.results[d] for d in task.depends_on}
        context = attempt.context
        if self.ex.child_processes and needs_process(task, timeout):
            assert timeout is not None
            attempt.child = ChildAttempt(context, task, inputs, self.ex.workers)
            attempt.deadline = time.monotonic() + timeout + STARTUP_ALLOWANCE

            def started(attempt: InflightAttempt = attempt, timeout: float = timeout) -> None:
                attempt.deadline = time.monotonic() + timeout  # one float store: safe across threads

            attempt.child.on_started = started
        child = attempt.child
        attempt.work = lambda: self._work(context, task, inputs, child)
        self.pool.submit(attempt)

    def _work(
        self, context: TaskContext, task: Any, inputs: dict[str, TaskResult], child: ChildAttempt | None
    ) -> None:
        """Runs in a worker thread: only computes (or waits for the child that does), never touches
        run state. An unstorable result raises here and fails this attempt alone."""
        try:
            with attempt_scope(data_root=context.data_root, run_id=self.run_id, pipeline=self.pipeline.name,
                               task_id=context.task_id, attempt=context.attempt,
                               logical_date=self.logical_iso, correlation_id=self.correlation_id), \
                    hooks.attempt_span(self, context.task_id, context.attempt):
                if child is not None:
                    result, body = child.run()
                else:
                    result, body = self.fusion.compute(context, task, inputs, self.ex.workers)
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
            # a late answer from an attempt that already timed out: ignored, but now its retry may go
            self.stopping.pop((tid, number), None)
            return
        if exc is None:
            assert result is not None
            if body is not None and getattr(self.pipeline.spec, "alerts", None) is not None:
                from udop.alerts import with_anomaly_checks

                body = with_anomaly_checks(self.store, self.pipeline, self.run_id, tid, body)
            try:
                self.store.finish_attempt(
                    self.run_id,
                    tid,
                    number,
                    attempt_state=AttemptState.SUCCEEDED,
                    task_state=TaskState.SUCCEEDED,
                    result=body,
                )
            except StoreError as store_exc:  # the result could not be kept: this task fails, not the run
                self._failed(tid, number, AttemptState.FAILED, FatalError(str(store_exc)))
                return
            self.state[tid] = TaskState.SUCCEEDED
            self.results[tid] = result
            self._observe(tid, number, AttemptState.SUCCEEDED.value, result=result)
            hooks.task_ended(self, tid, TaskState.SUCCEEDED.value)
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

    def _wait_for_stopping_attempts(self) -> None:
        """Before the run returns, wait for the attempts still stopping up to their give-up times: a
        DuckDB query told to stop removes its half-written files, and a process that exits while a
        thread is still inside DuckDB aborts (SIGABRT) instead of exiting with the run's status."""
        for attempt in self.stopping.values():
            if not attempt.returned.wait(max(0.0, attempt.give_up - time.monotonic())):
                _log.warning("task %r attempt %d is still running after it was told to stop; leaving it",
                             attempt.task_id, attempt.number)
                if self.pool is self.ex._kept_pool and not attempt.abandoned:
                    self.pool.abandon(attempt)  # the next run's pool keeps its size without that thread
        self.stopping.clear()

    def _stop_attempt(self, attempt: InflightAttempt, give_up: float | None = None) -> None:
        """Stop a running attempt: a child process is killed (gone when this returns); a thread is
        told to stop and kept in ``stopping`` until it returns or ``give_up`` passes."""
        if attempt.child is not None:
            attempt.child.kill()
            return
        if (attempt.task_id, attempt.number) in self.stopping:
            return  # told already (a cancel after its timeout): its give-up time stands
        self._tell_to_stop(attempt)
        attempt.give_up = give_up if give_up is not None else time.monotonic() + self.ex.stop_grace
        self.stopping[(attempt.task_id, attempt.number)] = attempt

    def _timeout(self, key: tuple[str, int], attempt: InflightAttempt) -> None:
        del self.inflight[key]
        self.pool.abandon(attempt)
        self._stop_attempt(attempt)  # a child is gone before the timeout is recorded and the retry starts
        timeout = self.pipeline.timeout_for(self.tasks[attempt.task_id])
        exc = TaskTimeout(
            f"task {attempt.task_id!r} attempt {attempt.number} ran longer than its timeout of {timeout:g}s"
        )
        self._failed(attempt.task_id, attempt.number, AttemptState.TIMED_OUT, exc)

    def _tell_to_stop(self, attempt: InflightAttempt) -> None:
        attempt.context.cancel_event.set()
        for hook in attempt.cancel_hooks:
            try:
                hook()
            except Exception as exc:  # a hook failing must not stop the run; the attempt is abandoned anyway
                _log.warning("cancel hook of task %r failed: %s", attempt.task_id, exc)

    def _did_not_stop(self, tid: str, number: int) -> None:
        """A thread attempt told to stop ignored it past its give-up time: the executor stops waiting
        for it, and its retry must not run beside it."""
        attempt = self.stopping.pop((tid, number))
        _log.warning("task %r attempt %d is still running after it was told to stop; leaving it",
                     attempt.task_id, attempt.number)
        if self.state[tid] != TaskState.RETRYING:
            return
        self.retries = [entry for entry in self.retries if entry[2] != tid]
        heapq.heapify(self.retries)
        message = (
            f"attempt {number} did not stop within {self.ex.stop_grace:g}s after its timeout; not retried, "
            "so that two attempts never run at once"
        )
        self.store.set_task_states(self.run_id, [tid], TaskState.FAILED, error_message=message)
        self.state[tid] = TaskState.FAILED
        self._failed_for_good(tid, number, f"udop.FatalError: {message}")

    def _failed(self, tid: str, number: int, attempt_state: AttemptState, exc: BaseException) -> None:
        task = self.tasks[tid]
        policy = self.pipeline.retry_for(task)
        failure = classify(exc)  # the same rule as the task runner's and the compiled Retry's
        kind, message = failure.name, failure.message
        body = failed_checks(exc)
        if policy.retries(kind, failure.retryable) and number < policy.max_attempts:
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
            self._observe(tid, number, attempt_state.value, retried=True)
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
        self._observe(tid, number, attempt_state.value)
        self._failed_for_good(tid, number, f"{kind}: {message}")

    def _observe(self, tid: str, number: int, state: str, *, result: TaskResult | None = None,
                 retried: bool = False) -> None:
        started = self.started_mono.pop((tid, number), None)
        seconds = time.monotonic() - started if started is not None else 0.0
        written = result.output.rows if result is not None and result.output is not None else None
        read = None
        if result is not None:
            upstream = [self.results[d].output for d in self.tasks[tid].depends_on if d in self.results]
            read = sum(o.rows or 0 for o in upstream if o is not None) if upstream else None
        hooks.attempt_finished(self.pipeline.name, tid, state, seconds, rows_read=read, rows_written=written,
                               retried=retried)

    def _failed_for_good(self, tid: str, number: int, error: str) -> None:
        self.failures.append(f"task {tid!r} failed: {error}")
        hooks.task_ended(self, tid, TaskState.FAILED.value)
        self.ex.on_event(RunEvent("task", self.run_id, TaskState.FAILED.value, tid, number, message=error))
        blocked = [
            t for t in downstream(self.pipeline, tid, self.children) if self.state[t] == TaskState.PENDING
        ]
        if blocked:
            self.store.set_task_states(
                self.run_id, blocked, TaskState.UPSTREAM_FAILED, error_message=f"upstream task {tid!r} failed"
            )
            for t in blocked:
                self.state[t] = TaskState.UPSTREAM_FAILED
                hooks.task_ended(self, t, TaskState.UPSTREAM_FAILED.value)
                self.ex.on_event(
                    RunEvent(
                        "task",
                        self.run_id,
                        TaskState.UPSTREAM_FAILED.value,
                        t,
                        message=f"upstream task {tid!r} failed",
                    )
                )

    def _stop(self, reason: str) -> RunRecord:
        """Stop requested: tell running attempts to stop and give them ``stop_grace`` seconds to wind
        down (roll back, close connections), then cancel them, what waits, and the run. An attempt
        that returns after it was told to stop counts as cancelled even if it returned a result (it
        may have cut its work short, as the task runner on AWS assumes too); resume runs it again."""
        give_up = time.monotonic() + self.ex.stop_grace
        for attempt in self.inflight.values():
            self._stop_attempt(attempt, give_up)
        while self.inflight and time.monotonic() < give_up:
            try:
                item = self.done.get(timeout=max(0.0, give_up - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                continue
            tid, number = item[0], item[1]
            self.stopping.pop((tid, number), None)
            if self.inflight.pop((tid, number), None) is None:
                continue  # a late answer from an attempt that had timed out before
            self.store.finish_attempt(self.run_id, tid, number, attempt_state=AttemptState.ABANDONED,
                                      task_state=TaskState.CANCELLED, error_type="Cancelled",
                                      error_message=reason)
            self.state[tid] = TaskState.CANCELLED
        self._cancel(reason)
        record = self.store.get_run(self.run_id)
        assert record is not None
        return record

    def _cancel(self, reason: str) -> None:
        """Interrupted: abandon running attempts and mark the run cancelled, as far as the store allows."""
        try:
            for (tid, number), attempt in list(self.inflight.items()):
                self._stop_attempt(attempt)
                self.store.finish_attempt(
                    self.run_id,
                    tid,
                    number,
                    attempt_state=AttemptState.ABANDONED,
                    task_state=TaskState.CANCELLED,
                    error_type="Cancelled",
                    error_message=reason,
                )
            self.inflight.clear()
            waiting = [t for t, s in self.state.items() if s in (TaskState.PENDING, TaskState.RETRYING)]
            if waiting:
                self.store.set_task_states(self.run_id, waiting, TaskState.CANCELLED, error_message=reason)
            self.store.set_run_state(self.run_id, RunState.CANCELLED, error=f"cancelled: {reason}")
            self.ex.on_event(RunEvent("run", self.run_id, RunState.CANCELLED.value, message=reason))
        except Exception as exc:  # the store itself may be what failed; resume repairs the records
            _log.warning("run %s: could not record the cancellation (%s); `udop run --resume %s` "
                         "repairs the records", self.run_id, exc, self.run_id)


def _summary(result: TaskResult) -> str | None:
    if result.output is not None and result.output.rows is not None:
        return f"{result.output.rows:,} rows"
    return None
