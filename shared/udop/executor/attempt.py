"""One attempt of a task: computed in a worker thread, or in a child process when it must be stoppable.

A Python thread cannot be stopped from outside: a ``python`` task that ignores its cancel event
(a busy loop, ``time.sleep``) would go on after its timeout while its retry starts, and its side
effects could happen twice. So a ``python`` task with a ``timeout`` runs each attempt in a child
process (the ``forkserver`` start method: no fork of this multi-threaded process), which the
executor kills before it records the timeout and schedules the retry. Tasks without a timeout stay
in a thread, where an attempt costs far less.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from udop import procid
from udop.errors import FatalError
from udop.observability.context import correlation_id
from udop.observability.logs import configure, configured
from udop.observability.tasklogs import attempt_scope, delegate
from udop.sandbox import Policy, active
from udop.tasks.contract import TaskContext, TaskResult
from udop.tasks.foreach import run_foreach
from udop.tasks.python import import_callable
from udop.tasks.registry import run_task

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import ForkServerContext
    from multiprocessing.process import BaseProcess

__all__ = ["STARTUP_ALLOWANCE", "ChildAttempt", "compute", "failed_checks", "lineage", "needs_process",
           "stored_result"]

#: modules the fork server imports once, so that each child starts with them loaded: the definition
#: models (their task types come from the installed layers), pyarrow (most task modules import it or
#: pandas; a second or two to import on a busy machine). Each child still imports the main module as
#: ``__mp_main__``, as with the spawn method: a script driving udop should import it inside its
#: ``if __name__ == "__main__":`` block (the ``udop`` command's script imports only ``udop.cli``).
_PRELOAD = ["udop.executor.attempt", "udop.spec.models", "udop.tasks.python", "udop.tasks.registry",
            "udop.tasks.foreach", "pyarrow"]
_CONTEXTS: list[ForkServerContext] = []  # the one fork-server context, once made
_CONTEXT_LOCK = threading.Lock()


def needs_process(task: Any, timeout: float | None) -> bool:
    """Whether attempts of ``task`` run in a child process (see the module docstring)."""
    return timeout is not None and task.type == "python"


def compute(
    context: TaskContext, task: Any, inputs: Mapping[str, TaskResult], workers: int
) -> tuple[TaskResult, dict[str, Any]]:
    """Run the task and return its result with the JSON body the store keeps.

    A result the store cannot keep (an ``object()``, a value too large) raises ``FatalError`` here,
    in the attempt, so that it fails this task alone.
    """
    if task.foreach is not None:
        result = run_foreach(context, task, dict(inputs), workers=workers)
    else:
        result = run_task(context, task, dict(inputs))
    return stored_result(result, inputs)


def stored_result(result: TaskResult, inputs: Mapping[str, TaskResult]) -> tuple[TaskResult, dict[str, Any]]:
    """``result`` as the store keeps it (the JSON body) and as downstream tasks see it."""
    body = result.to_dict()
    read = lineage(result, inputs)
    if not result.inputs:
        body["inputs"] = list(read)
    # downstream tasks see the stored value (numpy scalars converted), the same as after a resume
    result = TaskResult(
        output=result.output, value=body["value"], inputs=read, checks=result.checks,
        metrics=body["metrics"], written=result.written, columns=result.columns,
    )
    return result, body


def lineage(result: TaskResult, inputs: Mapping[str, TaskResult]) -> tuple[str, ...]:
    """What an attempt read, as every executor records it: what the task said it read, else its
    upstream tasks' datasets (``task:<id>`` for an upstream without one)."""
    return result.inputs or tuple(r.output.uri if r.output else f"task:{tid}" for tid, r in inputs.items())


def failed_checks(exc: BaseException) -> dict[str, Any] | None:
    """The result body kept for a failed attempt: the check results a ``DataQualityError`` carries
    (``udop runs show`` shows which rule failed), else nothing."""
    checks = getattr(exc, "checks", None)
    return TaskResult(checks=tuple(checks)).to_dict() if checks else None


def _fork_server() -> ForkServerContext:
    import multiprocessing  # with pickle ~10 ms of every run; only an attempt in a child process needs it

    with _CONTEXT_LOCK:
        if not _CONTEXTS:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(_PRELOAD)
            _CONTEXTS.append(context)
        return _CONTEXTS[0]


@dataclass(frozen=True)
class _Job:
    pipeline: Any
    task_id: str
    run_id: str
    attempt: int
    logical_date: datetime
    params: Mapping[str, Any]
    data_root: str
    services: Mapping[str, Any]
    inputs: dict[str, dict[str, Any]]
    workers: int
    policy: Policy  # a server's limits hold in the child too
    correlation_id: str | None = None  # the child's log lines carry the run's correlation id too
    logging: tuple[str, int] | None = None  # the parent's log format and level, repeated in the child
    # the child acts for the executor's process: a watermark lease it renews stays the run's
    run_process: str = field(default_factory=procid.current)


#: how long a child may take to start before its task's timeout begins to count
STARTUP_ALLOWANCE = 30.0


class ChildAttempt:
    """An attempt running in a child process; ``run`` (a worker thread) waits, ``kill`` ends it.

    ``on_started`` is called (in the waiting thread) when the child begins the task: its timeout
    counts from then, not from the process start, which on a loaded machine can take a second.
    """

    def __init__(
        self, context: TaskContext, task: Any, inputs: Mapping[str, TaskResult], workers: int
    ) -> None:
        self._job = _Job(
            pipeline=context.pipeline,
            task_id=context.task_id,
            run_id=context.run_id,
            attempt=context.attempt,
            logical_date=context.logical_date,
            params=dict(context.params),
            data_root=context.data_root,
            services=_picklable(context.services),
            inputs={k: v.to_dict() for k, v in inputs.items()},
            workers=workers,
            policy=context.policy,
            correlation_id=correlation_id(),
            logging=configured(),
        )
        self._lock = threading.Lock()
        self._process: BaseProcess | None = None
        self._killed = False
        self.on_started: Callable[[], None] = lambda: None

    def run(self) -> tuple[TaskResult, dict[str, Any]]:
        delegate()  # the child writes this attempt's log lines
        context = _fork_server()
        results, results_in = context.Pipe(duplex=False)
        lifeline_out, lifeline = context.Pipe(duplex=False)
        process = context.Process(
            target=_child, args=(self._job, results_in, lifeline_out),
            name=f"udop-task-{self._job.task_id}",
        )
        with self._lock:
            if self._killed:
                raise FatalError(f"task {self._job.task_id!r}: stopped before it started")
            process.start()
            self._process = process
        results_in.close()
        lifeline_out.close()
        try:
            try:
                kind, payload = results.recv()
                if kind == "started":
                    self.on_started()
                    kind, payload = results.recv()
            except EOFError:
                process.join()
                raise FatalError(
                    f"task {self._job.task_id!r}: its process ended without a result "
                    f"(exit code {process.exitcode})") from None
        finally:
            results.close()
            lifeline.close()  # the child's watcher sees the pipe close and exits if it still runs
        process.join()
        if kind == "ok":
            body: dict[str, Any] = payload
            return TaskResult.from_dict(body), body
        raise payload

    def kill(self, wait: float = 5.0) -> None:
        """End the child at once (SIGKILL) and wait for it to be gone: no side effect can follow."""
        with self._lock:
            self._killed = True
            process = self._process
        if process is not None and process.exitcode is None:
            process.kill()
            process.join(wait)


def _picklable(services: Mapping[str, Any]) -> dict[str, Any]:
    # services such as an open state store stay in this process; the child gets what can travel
    import pickle

    kept = {}
    for key, value in services.items():
        try:
            pickle.dumps(value)
        except Exception:  # anything that cannot be pickled is simply not passed on
            continue
        kept[key] = value
    return kept


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else an exception of the same class name and message."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        kind = type(exc)
        if isinstance(exc, FatalError):
            return FatalError(str(exc))
        stand_in: type[Exception] = type(kind.__name__, (Exception,), {"__module__": kind.__module__})
        return stand_in(str(exc))
    return exc


def _watch_parent(lifeline: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv()
    os._exit(1)  # the executor is gone (or done with us): nothing may run on unobserved


def _child(job: _Job, results: Connection, lifeline: Connection) -> None:
    threading.Thread(target=_watch_parent, args=(lifeline,), daemon=True).start()
    procid.adopt(job.run_process)
    if job.logging is not None:
        configure(job.logging[0], level=job.logging[1])
    context = TaskContext(
        pipeline=job.pipeline,
        task_id=job.task_id,
        run_id=job.run_id,
        attempt=job.attempt,
        logical_date=job.logical_date,
        params=job.params,
        data_root=job.data_root,
        services=job.services,
        policy=job.policy,
    )
    inputs = {k: TaskResult.from_dict(v) for k, v in job.inputs.items()}
    if context.task.type == "python":
        # imported before the clock starts, as the executor's own process imported it when loading
        # the definition; an import error is reported by the task itself below
        # (under the run's policy: a server's module allowlist is checked before anything is imported)
        with contextlib.suppress(Exception), active(job.policy):
            import_callable(context.task.callable, job.services.get("base_dir"))
    results.send(("started", None))
    try:
        # the child appends to the same per-attempt log file the executor points at
        with attempt_scope(data_root=job.data_root, run_id=job.run_id, pipeline=context.pipeline_name,
                           task_id=job.task_id, attempt=job.attempt,
                           logical_date=job.logical_date.isoformat(), correlation_id=job.correlation_id):
            _, body = compute(context, context.task, inputs, job.workers)
        message: tuple[str, Any] = ("ok", body)
    except BaseException as exc:  # every failure goes back to the executor, which decides
        message = ("error", _portable(exc))
    results.send(message)
    results.close()
