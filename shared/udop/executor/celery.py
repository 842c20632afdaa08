"""The Celery executor: the LocalExecutor's scheduling loop, with each attempt computed by a Celery worker.

One process, the coordinator (``udop run --executor celery``, the API, the scheduler), owns a run
exactly as the LocalExecutor does: the same loop (``udop.executor.local.RunLoop``) decides retries,
timeouts, ``upstream_failed`` and cancellation, and persists every state change in the metadata
store before acting on it. Only where an attempt is computed changes: instead of a worker thread, a
Celery task on a Redis broker, taken by a ``udop worker`` on any machine that shares the metadata
store (PostgreSQL) and the data root. A message names the run, the task, the attempt and the small
manifests of its inputs; datasets stay on the shared data root, and the worker sends back the small
result body the store keeps (or the failure, already classified by ``udop.errors.classify``).

Fused chains (``udop.executor.fusion``) are fused as locally: the transform's message names its load
and the load's attempt number, the worker runs the pair and sends back both bodies, and the coordinator
keeps the load's until the loop starts the load's attempt, which records it without a Celery task.

Delivery: late acknowledgement and ``reject_on_worker_lost``, so a task whose worker was killed is
delivered again (after ``UDOP_CELERY_VISIBILITY_TIMEOUT``); it carries the same attempt number, and
the coordinator records the attempt once, from whichever delivery answers. Before it runs, a worker
checks that the attempt is still running in the metadata store: one that timed out, was cancelled or
was taken over by a resume is not run again. Loads keep their ledger, so a load delivered twice
writes its rows once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from udop.errors import ConfigError, FatalError, InputError, ReportedFailure, classify
from udop.executor.attempt import STARTUP_ALLOWANCE, compute, failed_checks
from udop.executor.fusion import compute_chain
from udop.executor.local import InflightAttempt, LocalExecutor, RunLoop, WorkerPool
from udop.observability.tasklogs import attempt_scope
from udop.sandbox import Policy
from udop.settings import CelerySettings, load_settings
from udop.spec.models import Pipeline
from udop.spec.params import jsonable_params, resolve_params
from udop.states import AttemptState
from udop.store.api import MetadataStore, RunRecord
from udop.tasks.contract import CheckResult, TaskContext, TaskResult

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["TASK_NAME", "TIMED_TASK_NAME", "CeleryExecutor", "celery_task_id", "make_app", "process_init",
           "run_message", "worker_setup"]

_log = logging.getLogger("udop.executor")

#: the Celery task udop sends: compute one attempt
TASK_NAME = "udop.attempt"
#: the same for a task with a timeout: the worker reports its start (its timeout counts from there),
#: a write the others are spared
TIMED_TASK_NAME = "udop.attempt.timed"
#: seconds a worker may run an attempt past its task's timeout before Celery kills it (the
#: coordinator stops it at the timeout; this holds when the coordinator is gone)
HARD_LIMIT_MARGIN = 30.0
#: seconds between full polls of the in-flight results (pub/sub wakes the coordinator before that)
_POLL = 0.5
#: deliveries of one attempt after which a worker gives up on it: a task whose process dies each time
#: (killed for memory, a crash in native code) would otherwise come back for ever
MAX_DELIVERIES = 5


def celery_task_id(run_id: str, task_id: str, attempt: int) -> str:
    """The Celery task id of an attempt: derived, so a restarted coordinator can find (and revoke) it."""
    return f"udop.{run_id}.{task_id}.{attempt}"


def make_app(settings: CelerySettings | None = None) -> Celery:
    """The Celery application of coordinator and workers, from ``UDOP_CELERY_*``."""
    from celery import Celery

    s = settings or load_settings(CelerySettings)
    prefix = f"{s.celery_prefix}:"
    app = Celery("udop", broker=s.celery_broker_url, backend=s.celery_result_url or s.celery_broker_url,
                 set_as_current=False)
    app.conf.update(
        # JSON only: a message can never carry code (pickle) to a worker
        task_serializer="json", result_serializer="json", accept_content=["json"],
        # at-least-once: acknowledged after the attempt, delivered again if its worker is lost
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        task_default_queue=s.celery_queue,
        broker_transport_options={
            "global_keyprefix": prefix, "visibility_timeout": s.celery_visibility_timeout,
            "unacked_restore_interval": s.celery_restore_interval, "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"global_keyprefix": prefix},
        result_expires=86400,
        # broadcasts (revoke) go to this deployment's workers only
        control_exchange=f"{s.celery_prefix}.control", event_exchange=f"{s.celery_prefix}.events",
        worker_hijack_root_logger=False, worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
    )
    app.task(name=TASK_NAME, bind=True)(_delivered)
    # the coordinator counts a task's timeout from its start on a worker, not from its time in the queue
    app.task(name=TIMED_TASK_NAME, track_started=True, bind=True)(_delivered)
    return app


# ---------------------------------------------------------------------------------------- worker side

class _Worker:
    """What a worker process decided at start (``worker_setup``); inherited by its pool's children."""

    policy: Policy = Policy.trusted()
    trusted = True
    data_root: str | None = None
    code_dir: str | None = None
    memory_limit: int | None = None  # bytes of address space per task process
    store: MetadataStore | None = None
    store_pid = 0
    definitions: dict[tuple[str, int], Pipeline] = {}  # one per process, never shared


def worker_setup(*, trusted: bool, data_root: str | None, code_dir: str | None = None,
                 memory_limit: int | None = None) -> None:
    """Configure this worker process before Celery starts it (``udop worker``).

    ``trusted``: definitions are your own (run with the paths they name); else the server policy
    over ``data_root`` holds in every attempt (docs/security.md)."""
    from udop.sandbox import server_policy

    _Worker.trusted = trusted
    _Worker.data_root = data_root
    _Worker.code_dir = code_dir
    _Worker.memory_limit = memory_limit
    _Worker.policy = Policy.trusted() if trusted else server_policy(data_root=data_root, code_dir=code_dir)


def process_init() -> None:
    """In each of a worker's pool processes, as it starts: cap its address space
    (``udop worker --max-memory-per-task``; a task past it gets ``MemoryError``, a failed attempt),
    and open its metadata store before the first attempt arrives."""
    if _Worker.memory_limit is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (_Worker.memory_limit, _Worker.memory_limit))
    try:
        _store()
    except Exception as exc:  # reported by the first attempt, which opens it again
        _log.warning("udop worker: the metadata store could not be opened: %s", exc)


def _store() -> MetadataStore:
    import os

    from udop.store import open_store

    if _Worker.store is None or _Worker.store_pid != os.getpid():  # a forked child opens its own
        _Worker.store = open_store()
        _Worker.store_pid = os.getpid()
    return _Worker.store


def _definition(store: MetadataStore, name: str, version: int) -> Pipeline:
    cached = _Worker.definitions.get((name, version))
    if cached is not None:
        return cached
    record = store.get_pipeline(name)
    found = next((v for v in record.versions if v.version == version), None) if record else None
    if found is None:
        raise FatalError(f"pipeline {name!r} version {version} is not in the metadata store this "
                         "worker reads")
    pipeline = Pipeline.model_validate(found.definition)
    if not _Worker.trusted:
        from udop.errors import SpecErrors
        from udop.spec.secure import check_definition

        try:
            SpecErrors.collect(check_definition(pipeline, _Worker.policy))
        except SpecErrors as exc:
            raise FatalError(f"refused by this worker's server policy: {exc}") from None
    _Worker.definitions[(name, version)] = pipeline
    return pipeline


def _delivered(task: Any, message: Mapping[str, Any]) -> dict[str, Any]:
    """The Celery task: count this delivery of the attempt, then ``run_message``."""
    meta_key = task.app.backend.get_key_for_task(task.request.id)
    key = (meta_key.decode() if isinstance(meta_key, bytes) else str(meta_key)) + ".deliveries"
    try:
        with task.app.backend.client.pipeline() as pipe:
            count = int(pipe.incr(key).expire(key, 86400).execute()[0])
    except Exception:  # counting is a safeguard; the attempt runs without it
        count = 1
    if count > MAX_DELIVERIES:
        return {"error": {"name": "udop.FatalError", "retryable": False, "checks": None, "message": (
            f"the attempt was delivered {count} times and its worker process was lost each time (killed, "
            "out of memory, crashed); not run again")}}
    return run_message(message)


def run_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """The Celery task: compute one attempt and return what the coordinator records.

    ``{"ok": body}`` (the result body the store keeps), ``{"error": {...}}`` (a failure, classified
    here by the rule every executor uses) or ``{"skipped": why}`` (the attempt had already ended)."""
    try:
        return _run_message(message)
    except Exception as exc:  # every failure goes back to the coordinator, which decides
        failure = classify(exc)
        return {"error": {"name": failure.name, "retryable": failure.retryable, "message": failure.message,
                          "checks": failed_checks(exc)}}


def _run_message(message: Mapping[str, Any]) -> dict[str, Any]:
    try:
        run_id, task_id = str(message["run_id"]), str(message["task_id"])
        number, version = int(message["attempt"]), int(message["version"])
        name = str(message["pipeline"])
        logical = datetime.fromisoformat(str(message["logical_date"]))
        inputs = {str(k): TaskResult.from_dict(v) for k, v in dict(message.get("inputs") or {}).items()}
        fused = message.get("fused")
        chain = (str(fused["task_id"]), int(fused["attempt"])) if fused is not None else None
    except (KeyError, TypeError, ValueError) as exc:
        raise FatalError(f"a udop.attempt message this worker cannot read ({exc}); are the coordinator "
                         "and the workers the same udop version?") from None
    store = _store()
    state = store.attempt_state(run_id, task_id, number)
    if state != AttemptState.RUNNING:
        return {"skipped": f"attempt {number} of task {task_id!r} is {state.value if state else 'unknown'}"}
    pipeline = _definition(store, name, version)
    data_root = str(message.get("data_root") or "")
    if not _Worker.trusted:
        if _Worker.data_root is None or data_root.rstrip("/") != _Worker.data_root.rstrip("/"):
            raise FatalError(f"the run's data root {data_root!r} is not this worker's "
                             f"({_Worker.data_root!r}): coordinator and workers must share one data root")
        base_dir = _Worker.code_dir
    else:
        base_dir = message.get("base_dir") or _Worker.code_dir
    params = resolve_params(pipeline, message.get("params") or {})
    context = TaskContext(pipeline=pipeline, task_id=task_id, run_id=run_id, attempt=number,
                          logical_date=logical, params=params, data_root=data_root,
                          services={"base_dir": str(base_dir)} if base_dir else {}, policy=_Worker.policy)
    with attempt_scope(data_root=data_root, run_id=run_id, pipeline=name, task_id=task_id, attempt=number,
                       logical_date=logical.isoformat(), correlation_id=message.get("correlation_id")):
        if chain is None:
            _, body = compute(context, context.task, inputs, 1)
            return {"ok": body}
        load_id, load_attempt = chain
        load = pipeline.task(load_id)
        if context.task.type != "transform" or task_id not in getattr(load, "depends_on", ()):
            raise FatalError(f"task {task_id!r} is not a transform that {load_id!r} loads; are the "
                             "coordinator and the workers the same udop version?")
        (_, body), loaded = compute_chain(context, context.task, inputs, 1, pipeline=pipeline,
                                          load_id=load_id, load_attempt=load_attempt)
    if loaded is None:  # the fused run failed and the transform ran on its own: the load runs later
        return {"ok": body}
    return {"ok": body, "fused": {"task_id": load_id, "attempt": load_attempt, "ok": loaded[1]}}


# ----------------------------------------------------------------------------------- coordinator side

class CeleryExecutor(LocalExecutor):
    """Run pipelines with every attempt computed by a Celery worker; ``workers`` attempts in flight.

    Same arguments and behaviour as ``LocalExecutor`` (``run``, ``request_stop``, resume). The
    metadata store must be one the workers reach too: PostgreSQL; SQLite only with
    ``single_machine`` (or ``UDOP_CELERY_SINGLE_MACHINE``), coordinator and workers on one machine.
    """

    child_processes = False  # a worker's process is killed instead (Celery revoke)

    def __init__(self, store: MetadataStore, *, app: Celery | None = None,
                 settings: CelerySettings | None = None, single_machine: bool | None = None,
                 **kwargs: Any) -> None:
        self.settings = settings or load_settings(CelerySettings)
        one_machine = self.settings.celery_single_machine if single_machine is None else single_machine
        if getattr(store, "dialect", None) == "sqlite" and not one_machine:
            raise InputError("--executor celery needs a metadata store every worker reaches: set "
                             "UDOP_DATABASE_URL=postgresql://... (a SQLite file is one machine's; "
                             "UDOP_CELERY_SINGLE_MACHINE=1 allows it when all workers run here)")
        super().__init__(store, **kwargs)
        self.app = app or make_app(self.settings)

    def _new_run(self, pipeline: Pipeline, run_id: str, params: dict[str, Any], logical: datetime) -> RunLoop:
        return _CeleryRunLoop(self, pipeline, run_id, params, logical)

    def _prepare_resume(self, pipeline: Pipeline, run_id: str, params: Mapping[str, Any] | None,
                        on_new_version: bool) -> tuple[RunRecord, dict[str, Any], datetime]:
        # a coordinator that died left attempts running on workers: once the resume has recorded
        # them abandoned (a delivery of them that comes later is not run), their processes are stopped
        run = self.store.get_run(run_id)
        running = [celery_task_id(run_id, task.task_id, attempt.number) for task in (run.tasks if run else [])
                   for attempt in task.attempts if attempt.state == AttemptState.RUNNING]
        prepared = super()._prepare_resume(pipeline, run_id, params, on_new_version)
        for celery_id in running:
            self.revoke(celery_id)
        return prepared

    def revoke(self, celery_id: str) -> None:
        """Stop an attempt wherever it is: discarded if still queued, its worker process killed if it runs."""
        try:
            self.app.control.revoke(celery_id, terminate=True, signal="SIGKILL")
        except Exception as exc:  # the broker may be what failed; the worker's own check still holds
            _log.warning("could not revoke %s: %s", celery_id, exc)


class _CeleryRunLoop(RunLoop):
    ex: CeleryExecutor

    def __init__(self, executor: CeleryExecutor, pipeline: Pipeline, run_id: str, params: dict[str, Any],
                 logical_date: datetime) -> None:
        super().__init__(executor, pipeline, run_id, params, logical_date)
        record = executor.store.get_run(run_id)
        assert record is not None
        self.version = record.pipeline_version  # workers read this version of the definition
        self.to_revoke: list[str] = []

    def _new_pool(self) -> WorkerPool:
        try:
            return _CeleryPool(self)
        except ConfigError as exc:
            self._cancel(str(exc))
            raise

    def _stop_attempt(self, attempt: InflightAttempt, give_up: float | None = None) -> None:
        # revoked once its end is recorded (below): a delivery that comes after sees it ended, not running
        self.to_revoke.append(celery_task_id(self.run_id, attempt.task_id, attempt.number))

    def _revoke_stopped(self) -> None:
        while self.to_revoke:
            self.ex.revoke(self.to_revoke.pop())

    def _timeout(self, key: tuple[str, int], attempt: InflightAttempt) -> None:
        super()._timeout(key, attempt)
        self._revoke_stopped()

    def _cancel(self, reason: str) -> None:
        try:
            super()._cancel(reason)
        finally:
            self._revoke_stopped()

    def _stop(self, reason: str) -> RunRecord:
        # the workers' processes are killed at once: nothing to wait for before recording the cancel
        self._cancel(reason)
        record = self.store.get_run(self.run_id)
        assert record is not None
        return record


class _CeleryPool(WorkerPool):
    """Sends attempts as Celery tasks and hands their answers to the loop (``RunLoop.done``).

    One thread follows the results: woken by the result backend's pub/sub message for a task, with a
    full poll every ``_POLL`` seconds for anything missed."""

    def __init__(self, loop: _CeleryRunLoop) -> None:
        self.loop = loop
        self.live = 0
        self.app = loop.ex.app
        self.backend: Any = self.app.backend
        self.client: Any = self.backend.client
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[InflightAttempt, float | None]] = {}  # celery id -> attempt, timeout
        self._closed = threading.Event()
        probe = self.backend.get_key_for_task("x")
        self.prefix = (probe.decode() if isinstance(probe, bytes) else str(probe))[:-1]
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:  # subscribed before the first task is sent: no answer can come before it
            self.pubsub.psubscribe(self.prefix + _glob_escape(f"udop.{loop.run_id}.") + "*")
        except Exception as exc:
            raise _unreachable(loop.ex.settings, exc) from None
        self._thread = threading.Thread(target=self._follow, name="udop-celery-results", daemon=True)
        self._thread.start()

    def submit(self, job: InflightAttempt) -> None:
        loop = self.loop
        early = loop.fusion.take_early(job.task_id)
        if early is not None:
            # a fused chain's load: its transform's worker loaded it; its attempt records that result,
            # with no Celery task (it would load again, or find its ledger entry)
            loop.done.put((job.task_id, job.number, early[0], early[1], None))
            return
        task = loop.tasks[job.task_id]
        # a fused attempt does both tasks' work: the sum of their timeouts, as in the LocalExecutor
        timeout = loop.fusion.timeout(job.task_id, loop.pipeline.timeout_for(task))
        load_id = loop.fusion.chains.get(job.task_id)
        if load_id is not None:
            loop.fusion.take_early(load_id)  # from an earlier attempt of this transform, if any
        celery_id = celery_task_id(loop.run_id, job.task_id, job.number)
        if job.deadline is not None:
            job.deadline += STARTUP_ALLOWANCE  # waiting in the queue; the timeout counts from its start
        message = {
            "run_id": loop.run_id, "pipeline": loop.pipeline.name, "task_id": job.task_id,
            "attempt": job.number, "version": loop.version,
            "logical_date": loop.logical_iso, "params": jsonable_params(loop.params),
            "data_root": loop.ex.data_root, "base_dir": loop.ex.services.get("base_dir"),
            "correlation_id": loop.correlation_id,
            "inputs": {d: loop.results[d].to_dict() for d in task.depends_on},
        }
        if load_id is not None:  # the worker runs the transform inside this attempt of its load
            message["fused"] = {"task_id": load_id, "attempt": loop.fusion.next_attempt(load_id)}
        options: dict[str, Any] = {"task_id": celery_id, "queue": getattr(task, "queue", None)
                                   or loop.ex.settings.celery_queue}
        if timeout is not None:
            options["time_limit"] = timeout + HARD_LIMIT_MARGIN
        with self._lock:
            self._pending[celery_id] = (job, timeout)
        try:
            self.app.send_task(TASK_NAME if timeout is None else TIMED_TASK_NAME, args=[message], **options)
        except Exception as exc:  # the loop cancels the run (resumable) and the command says why
            raise _unreachable(self.loop.ex.settings, exc) from None

    def abandon(self, job: InflightAttempt) -> None:
        """A timed-out attempt: ``RunLoop._stop_attempt`` revokes it; its answer, if any, is ignored."""
        with self._lock:
            self._pending.pop(celery_task_id(self.loop.run_id, job.task_id, job.number), None)

    def shutdown(self) -> None:
        self._closed.set()
        self._thread.join(5)

    # ------------------------------------------------------------------ the results thread

    def _follow(self) -> None:
        prefix = self.prefix
        next_poll = time.monotonic() + _POLL
        try:
            while not self._closed.is_set():
                try:
                    message = self.pubsub.get_message(timeout=0.1)
                    if message is not None and message.get("type") == "pmessage":
                        channel = message["channel"]
                        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
                        self._handle(channel[len(prefix):], message["data"])
                    if time.monotonic() >= next_poll:
                        next_poll = time.monotonic() + _POLL
                        self._poll(prefix)
                except Exception as exc:  # a lost connection, an unreadable result: the polls go on
                    _log.warning("run %s: reading results failed (%s); trying again", self.loop.run_id, exc)
                    self._closed.wait(_POLL)
        finally:
            with contextlib.suppress(Exception):
                self.pubsub.close()

    def _poll(self, prefix: str) -> None:
        with self._lock:
            ids = list(self._pending)
        if not ids:
            return
        try:
            values = self.client.mget([prefix + i for i in ids])
        except Exception as exc:
            _log.warning("run %s: could not read results (%s)", self.loop.run_id, exc)
            return
        for celery_id, raw in zip(ids, values, strict=True):
            if raw is not None:
                self._handle(celery_id, raw)

    def _handle(self, celery_id: str, raw: Any) -> None:
        meta = self.backend.decode_result(raw)
        status = meta.get("status")
        with self._lock:
            entry = self._pending.get(celery_id)
            if entry is None:
                return
            job, timeout = entry
            if status == "STARTED":
                if timeout is not None and job.deadline is not None:
                    job.deadline = min(job.deadline, time.monotonic() + timeout)
                return
            if status not in ("SUCCESS", "FAILURE"):
                return  # PENDING, RETRY; REVOKED only follows our own revoke (already abandoned)
            del self._pending[celery_id]
        answer = meta.get("result")
        done = self.loop.done
        if status == "FAILURE":
            # the task itself never raises: Celery's own failures (a hard time limit, a lost worker
            # with no redelivery, an unknown task)
            kind = type(answer).__name__ if isinstance(answer, BaseException) else "WorkerLost"
            detail = str(answer)
            exc: BaseException = FatalError(f"the Celery worker failed the task: {kind}: {detail}")
            done.put((job.task_id, job.number, None, None, exc))
        elif isinstance(answer, dict) and isinstance(answer.get("ok"), dict):
            body: dict[str, Any] = answer["ok"]
            fused = answer.get("fused")
            if isinstance(fused, dict) and isinstance(fused.get("ok"), dict):
                # kept before the transform's answer goes to the loop: the load starts only after it
                loaded: dict[str, Any] = fused["ok"]
                self.loop.fusion.keep_early(str(fused["task_id"]), (TaskResult.from_dict(loaded), loaded))
            done.put((job.task_id, job.number, TaskResult.from_dict(body), body, None))
        elif isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            done.put((job.task_id, job.number, None, None, _reported(answer["error"])))
        else:
            why = answer.get("skipped") if isinstance(answer, dict) else repr(answer)
            done.put((job.task_id, job.number, None, None,
                      FatalError(f"the worker did not run the attempt: {why}")))


def _unreachable(settings: CelerySettings, exc: Exception) -> ConfigError:
    from udop.store.engine import mask_url

    return ConfigError(f"the Celery broker {mask_url(settings.celery_broker_url)} cannot be reached "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): start it "
                       "or set UDOP_CELERY_BROKER_URL; the run is cancelled, continue it with --resume")


def _reported(error: Mapping[str, Any]) -> ReportedFailure:
    from udop.errors import Failure

    checks: tuple[CheckResult, ...] = ()
    if isinstance(error.get("checks"), dict):
        checks = TaskResult.from_dict(error["checks"]).checks
    failure = Failure(name=str(error.get("name") or "Exception"), retryable=bool(error.get("retryable")),
                      message=str(error.get("message") or ""))
    return ReportedFailure(failure, checks)


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
