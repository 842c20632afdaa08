"""Map Step Functions executions onto udop run records: the run-events Lambda's core, also used by
``udop run --executor stepfunctions`` while it follows a run.

A run is identified by its run id (``input.run.run_id``; executions are named after it). A run's
executions are the first one, named ``<run_id>``, and those of emulated redrives, named
``<run_id>--redrive-<n>``. Tasks and attempts are read from the execution histories (one attempt
per ``TaskScheduled`` event of the task runner) and written to the store only where the store is
behind, so handling the same event twice, or events out of order, changes nothing.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from udop.aws.errors import fused_task_of
from udop.aws.observability import logger
from udop.errors import StoreError, TaskTimeout, TransitionError, UdopError, error_name, recorded_name
from udop.lineage import openlineage
from udop.states import AttemptState, RunState, TaskState

__all__ = ["REDRIVE_SEPARATOR", "ExecutionAttempt", "record_status_event", "sync_run"]

REDRIVE_SEPARATOR = "--redrive-"

_RUN_STATE = {"RUNNING": RunState.RUNNING, "SUCCEEDED": RunState.SUCCEEDED, "FAILED": RunState.FAILED,
              "TIMED_OUT": RunState.FAILED, "ABORTED": RunState.CANCELLED,
              "PENDING_REDRIVE": RunState.FAILED}


@dataclass
class ExecutionAttempt:
    task_id: str
    started_at: datetime
    state: AttemptState | None = None  # None: still running
    error_type: str | None = None
    error_message: str | None = None
    result: dict[str, Any] | None = None
    reused: bool = False
    version: int | None = None  # the pipeline version compiled into the payload
    exited: bool = False  # its Task state was left after it (Catch): no retry follows
    item: bool = False  # a foreach task's inline Map item or listing: an attempt only when it failed
    execution: str = ""  # the execution and retry count of its payload: where its log pointer is
    retry: int = 0
    log: dict[str, Any] | None = None  # where its log lines are (CloudWatch)
    #: a fused Task state's invocation: the load run with the task (split into its own attempt)
    fused: str | None = None
    fused_response: dict[str, Any] | None = None  # the load's part of a fused invocation's answer
    log_task: str | None = None  # whose attempt log holds its lines (a fused load's: its transform's)


@dataclass
class _Execution:
    arn: str
    name: str
    status: str
    started: datetime
    input: dict[str, Any]
    error: str | None = None
    cause: str | None = None
    attempts: list[ExecutionAttempt] = field(default_factory=list)


def run_id_of_execution(name: str) -> str:
    return name.split(REDRIVE_SEPARATOR, 1)[0]


def pipeline_of_state_machine(arn: str) -> str:
    name = arn.rsplit(":", 1)[-1]
    return name.removeprefix("udop-")


def record_status_event(event: dict[str, Any], *, store: Any, sfn: Any, s3: Any = None,
                        data_bucket: str | None = None) -> Any:
    """Handle one EventBridge "Step Functions Execution Status Change" event; returns the run record
    (None when the execution is not a udop pipeline's)."""
    detail = event.get("detail") or {}
    arn = detail.get("executionArn")
    sm_arn = detail.get("stateMachineArn") or ""
    if not arn or not sm_arn.rsplit(":", 1)[-1].startswith("udop-"):
        logger.info("ignoring an execution that is not a udop pipeline's", extra={"execution": arn})
        return None
    name = detail.get("name") or arn.rsplit(":", 1)[-1]
    # the run id is in the input; an execution started by udop is also named after it
    run_input = _json(detail.get("input")) or _json(sfn.describe_execution(executionArn=arn).get("input"))
    run_id = str((run_input.get("run") or {}).get("run_id") or run_id_of_execution(name))
    # not named after its run (e.g. started by a schedule): one execution, one run
    arns = [arn] if run_id != run_id_of_execution(name) else run_execution_arns(arn, run_id, name)
    for attempt in range(_SYNC_TRIES):
        try:
            return sync_run(store, sfn, state_machine_arn=sm_arn, run_id=run_id, execution_arns=arns, s3=s3,
                            data_bucket=data_bucket)
        except TransitionError:
            # another writer (a concurrent event, `udop run` following the run) got there first:
            # read the store again and write only what is still missing; a random pause so that
            # several instances delivered the same events at once do not collide again and again
            if attempt == _SYNC_TRIES - 1:
                raise
            time.sleep(random.uniform(0, 0.05 * (attempt + 1)))
    return None


#: how many times a status event re-reads the store after another writer got there first
_SYNC_TRIES = 8


def _json(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def run_execution_arns(arn: str, run_id: str, name: str) -> list[str]:
    """The run's executions up to ``name``, by their names: no ListExecutions permission needed."""
    base = arn[: len(arn) - len(name)]
    count = int(name.split(REDRIVE_SEPARATOR, 1)[1]) if REDRIVE_SEPARATOR in name else 0
    return [base + run_id] + [f"{base}{run_id}{REDRIVE_SEPARATOR}{i}" for i in range(1, count + 1)]


def _executions(sfn: Any, state_machine_arn: str, run_id: str,
                execution_arns: list[str] | None = None) -> list[_Execution]:
    if execution_arns is None:
        execution_arns = [ex["executionArn"]
                          for page in sfn.get_paginator("list_executions").paginate(
                              stateMachineArn=state_machine_arn)
                          for ex in page["executions"] if run_id_of_execution(ex["name"]) == run_id]
    out = []
    for arn in execution_arns:
        try:
            desc = sfn.describe_execution(executionArn=arn)
        except sfn.exceptions.ExecutionDoesNotExist:
            continue
        execution = _Execution(arn=arn, name=desc["name"], status=desc["status"], started=desc["startDate"],
                               input=_json(desc.get("input")), error=desc.get("error"),
                               cause=desc.get("cause"))
        execution.attempts = _attempts(sfn, execution.arn)
        if execution.status == "ABORTED":
            _cancelled(execution)
        out.append(execution)
    out.sort(key=lambda e: e.started)
    done: set[str] = set()  # a redrive's fused state may find its transform done by an earlier execution
    for execution in out:
        execution.attempts = _split_fused(execution.attempts, done)
    return out


def _cancelled(execution: _Execution) -> None:
    """A stopped execution: an attempt whose Task state was not left was cancelled, as the
    LocalExecutor records it, even if its invocation returned a result after the stop (the
    execution ignores it; resume runs the task again)."""
    for attempt in execution.attempts:
        if not attempt.exited and attempt.state in (None, AttemptState.SUCCEEDED):
            attempt.state, attempt.result, attempt.reused = AttemptState.ABANDONED, None, False
            attempt.error_type = "Cancelled"
            attempt.error_message = _cause_message(execution.cause) or "the execution was stopped"


#: the compiler's name for an engine task's job state, and the integrations it uses (docs/engines.md)
ENGINE_JOB_SUFFIX = " job"
ENGINE_RESOURCE_TYPES = ("emr-serverless", "athena")


def _attempts(sfn: Any, execution_arn: str) -> list[ExecutionAttempt]:
    """One attempt per task-runner invocation, in the order they were scheduled."""
    events: dict[int, dict[str, Any]] = {}
    for page in sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
        for ev in page["events"]:
            events[ev["id"]] = ev
    attempts: dict[int, ExecutionAttempt] = {}  # TaskScheduled event id -> attempt
    started_of: dict[int, int] = {}  # TaskStarted id -> TaskScheduled id
    entered = ""  # the Task state entered last: an engine task's "<task> job" has no udop payload
    for ev_id in sorted(events):
        ev = events[ev_id]
        kind = ev["type"]
        if kind == "TaskStateEntered":
            entered = str((ev.get("stateEnteredEventDetails") or {}).get("name") or "")
        elif kind == "TaskScheduled" and entered.endswith(ENGINE_JOB_SUFFIX) and (
                ev["taskScheduledEventDetails"].get("resourceType") in ENGINE_RESOURCE_TYPES):
            # an EMR Serverless job run or Athena query: shown as the task's attempt only when it fails
            # (its success is recorded by the "<task> record" call that follows)
            attempts[ev_id] = ExecutionAttempt(task_id=entered.removesuffix(ENGINE_JOB_SUFFIX),
                                               started_at=ev["timestamp"], item=True)
        elif kind == "TaskScheduled":
            params = json.loads(ev["taskScheduledEventDetails"].get("parameters") or "{}")
            payload = params.get("Payload") or {}
            task_id = payload.get("task_id") if isinstance(payload, dict) else None
            if task_id:
                version = payload.get("version")
                attempts[ev_id] = ExecutionAttempt(task_id=task_id, started_at=ev["timestamp"],
                                                   version=int(version) if version is not None else None,
                                                   # foreach items and listings, and an engine
                                                   # task's prepare call, show only when they fail
                                                   item=payload.get("item") is not None
                                                   or bool(payload.get("list"))
                                                   or payload.get("engine_phase") == "prepare",
                                                   execution=str(payload.get("execution") or ""),
                                                   retry=_int(payload.get("attempt")),
                                                   fused=str(payload["fused"]) if payload.get("fused")
                                                   else None)
        elif kind == "TaskStateExited":
            name = (ev.get("stateExitedEventDetails") or {}).get("name")
            # a foreach task's Map items are followed by its "<task> combine" Task state
            last = next((a for k, a in sorted(attempts.items(), reverse=True)
                         if name in (a.task_id, f"{a.task_id} combine", f"{a.task_id} record")
                         and not a.item), None)
            if last is not None:
                last.exited = True
        elif kind == "TaskStarted" and ev.get("previousEventId") in attempts:
            started_of[ev_id] = ev["previousEventId"]
        elif kind in ("TaskSucceeded", "TaskFailed", "TaskTimedOut", "TaskStartFailed", "TaskSubmitFailed"):
            prev = int(ev.get("previousEventId") or 0)
            attempt = attempts.get(started_of.get(prev, prev))
            if attempt is None:
                continue
            if kind == "TaskSucceeded":
                out = json.loads(ev["taskSucceededEventDetails"].get("output") or "{}")
                payload = out.get("Payload", out) if isinstance(out, dict) else {}
                attempt.state = AttemptState.SUCCEEDED
                attempt.reused = bool(payload.get("reused")) if isinstance(payload, dict) else False
                attempt.result = {"output": payload.get("output")} if isinstance(payload, dict) else None
                fused = payload.get("fused") if isinstance(payload, dict) else None
                attempt.fused_response = fused if isinstance(fused, dict) else None
            else:
                details: dict[str, Any] = next((v for k, v in ev.items() if k.endswith("EventDetails")), {})
                # the names the LocalExecutor records: Step Functions' timeout and the runner's are
                # both a udop.TaskTimeout, and both a timed-out attempt
                attempt.error_type = recorded_name(details.get("error"))
                timed_out = kind == "TaskTimedOut" or attempt.error_type == error_name(TaskTimeout)
                attempt.state = AttemptState.TIMED_OUT if timed_out else AttemptState.FAILED
                attempt.error_message = _cause_message(details.get("cause"))
    # a foreach task's result is its combine call's; of its items only the failures are shown
    return [attempts[k] for k in sorted(attempts)
            if not attempts[k].item or attempts[k].state in (AttemptState.FAILED, AttemptState.TIMED_OUT)]


def _split_fused(attempts: list[ExecutionAttempt], done: set[str]) -> list[ExecutionAttempt]:
    """A fused Task state's invocations as the attempts of its two tasks (docs/aws.md, "Fused
    chains"): a success is both tasks' success; an error marked ``[task <load>]`` is the load's
    (the transform then succeeded in that invocation); any other error is the transform's, unless
    the transform already succeeded, when only its load was left to run. ``done`` holds the fused
    transforms that succeeded so far in the run's executions, in order; it is updated."""
    out: list[ExecutionAttempt] = []
    for attempt in attempts:
        load = attempt.fused
        if load is None:
            out.append(attempt)
            continue
        first = replace(attempt, fused=None, fused_response=None)
        second = replace(attempt, task_id=load, fused=None, fused_response=None, result=None, reused=False,
                         log_task=attempt.task_id)
        if attempt.state is AttemptState.SUCCEEDED:
            answer = attempt.fused_response or {}
            second.reused = bool(answer.get("reused"))
            second.result = {"output": answer.get("output")}
            out += [first, second]
            done.add(attempt.task_id)
            continue
        named, message = fused_task_of(attempt.error_message)
        if named == load:
            second.error_message = message
            first.state, first.error_type, first.error_message = AttemptState.SUCCEEDED, None, None
            first.exited = False
            out += [first, second]
            done.add(attempt.task_id)
        elif attempt.task_id in done:
            out.append(second)  # a timeout or a stop while the load ran alone
        else:
            out.append(first)
    return out


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _cause_message(cause: str | None) -> str | None:
    """The task runner's errorMessage when the cause is its error JSON, else the cause itself."""
    if not cause:
        return cause
    try:
        body = json.loads(cause)
    except ValueError:
        return cause
    return str(body.get("errorMessage", cause)) if isinstance(body, dict) else cause


def _run_error(cause: str | None) -> str | None:
    """The message a failed run records: the task's, without a fused state's mark of whose it is."""
    return fused_task_of(_cause_message(cause))[1]


def _ensure_run(store: Any, run_id: str, pipeline: str, first: _Execution) -> Any:
    run = store.get_run(run_id)
    if run is not None:
        return run
    ctx = first.input.get("run") or {}
    record = store.get_pipeline(pipeline)
    known = {v.version: v for v in (record.versions if record else [])}
    # the version compiled into the Task payloads is the one that ran; the input's is what the
    # starter's store said; either must be in this store to be recorded
    candidates: list[Any] = [a.version for a in first.attempts if a.version is not None]
    candidates.append(ctx.get("pipeline_version"))
    version = next((int(v) for v in candidates if v is not None and int(v) in known), None)
    if version is None:
        if record is None or record.latest is None:
            raise UdopError(f"execution {first.arn}: pipeline {pipeline!r} is not in the metadata store; "
                            "deploy it with `udop deploy` (or an upload to the definitions bucket)")
        version = record.latest.version
    definition = known[version].definition if version in known else {}
    task_ids = [t["id"] for t in definition.get("spec", {}).get("tasks", [])]
    logical = ctx.get("logical_date")
    logical_date = datetime.fromisoformat(logical) if logical else first.started
    if logical_date.tzinfo is None:
        logical_date = logical_date.replace(tzinfo=UTC)
    try:
        store.create_run(run_id=run_id, pipeline=pipeline, pipeline_version=version, task_ids=task_ids,
                         params=dict(ctx.get("params") or {}), logical_date=logical_date,
                         executor="stepfunctions", external_id=first.arn,
                         trigger=_trigger(ctx.get("trigger")))
    except StoreError:
        if store.get_run(run_id) is None:  # not a concurrent writer creating it first: a real problem
            raise
    return store.get_run(run_id)


def sync_run(store: Any, sfn: Any, *, state_machine_arn: str, run_id: str,
             execution_arns: list[str] | None = None, s3: Any = None, data_bucket: str | None = None) -> Any:
    """Bring the run's records up to date with its executions (``execution_arns``, default: those of
    the state machine named after the run); returns the run record.

    With ``s3`` and ``data_bucket`` a succeeded task's full result (quality checks, lineage inputs)
    is read from the result object the task runner wrote; else the execution history's small
    response (the output manifest) is recorded."""
    executions = _executions(sfn, state_machine_arn, run_id, execution_arns)
    if not executions:
        return store.get_run(run_id)
    pipeline = pipeline_of_state_machine(state_machine_arn)
    run = _ensure_run(store, run_id, pipeline, executions[0])
    before = run
    latest = executions[-1]
    target = _RUN_STATE.get(latest.status, RunState.RUNNING)

    by_task: dict[str, list[ExecutionAttempt]] = {}
    for execution in executions:
        # "retry from here" (udop.aws.runs.retry_run_from): these tasks run again in this execution
        rerun = set((execution.input.get("run") or {}).get("rerun_tasks") or [])
        for attempt in execution.attempts:
            done = by_task.get(attempt.task_id, [])
            if any(a.state is AttemptState.SUCCEEDED for a in done) and not (
                    attempt.task_id in rerun and not attempt.reused):
                continue  # later invocations of a succeeded task only returned its result
            by_task.setdefault(attempt.task_id, []).append(attempt)
    seen = sum(len(a) for a in by_task.values())
    recorded = sum(len(t.attempts) for t in run.tasks)
    if run.state == RunState.PENDING:
        store.set_run_state(run_id, RunState.RUNNING)
        run = store.get_run(run_id)  # set_run_state's record carries no tasks
    elif run.state in (RunState.FAILED, RunState.CANCELLED) and (target != run.state or seen > recorded):
        store.reset_for_resume(run_id)  # a redrive (real or emulated) went on after the run ended
        run = store.get_run(run_id)
    tasks = {t.task_id: t for t in run.tasks}
    running = latest.status == "RUNNING"
    for task_id, attempts in by_task.items():
        record = tasks.get(task_id)
        if record is None:
            continue
        fetch = None
        if s3 is not None and data_bucket:
            def fetch(attempts: list[ExecutionAttempt], _p: str = pipeline) -> None:
                _full_results(s3, data_bucket, _p, run_id, attempts)
                _log_pointers(s3, data_bucket, _p, run_id, attempts)
        _sync_task(store, run_id, record, attempts, execution_running=running, fetch=fetch,
                   checked=lambda task_id, result: _with_anomaly_checks(store, run, task_id, result))

    if not running:
        fresh = store.get_run(run_id)
        open_tasks = [t.task_id for t in fresh.tasks if t.state in (TaskState.PENDING,)]
        retrying = [t.task_id for t in fresh.tasks if t.state in (TaskState.RETRYING, TaskState.RUNNING)]
        if retrying:
            store.set_task_states(run_id, retrying, TaskState.CANCELLED if target is RunState.CANCELLED
                                  else TaskState.FAILED)
        if open_tasks and target is not RunState.SUCCEEDED:
            store.set_task_states(run_id, open_tasks, TaskState.UPSTREAM_FAILED if target is RunState.FAILED
                                  else TaskState.CANCELLED)
        fresh = store.get_run(run_id)
        if fresh.state != target:
            error = None
            if target is not RunState.SUCCEEDED:
                error = f"{latest.error}: {_run_error(latest.cause)}" if latest.error else latest.status
            _move_run(store, fresh, target, error=error)
            if target in (RunState.SUCCEEDED, RunState.FAILED):
                from udop.alerts import notify_stored_run  # best effort: never fails the event

                notify_stored_run(store, run_id)
    after = store.get_run(run_id)
    openlineage.recorded(before, after, store)  # with UDOP_OPENLINEAGE=1: events of what was recorded
    return after


def _move_run(store: Any, run: Any, state: RunState, *, error: str | None = None) -> Any:
    if run.state == RunState.PENDING:
        run = store.set_run_state(run.id, RunState.RUNNING)
    return store.set_run_state(run.id, state, error=error)


def _full_results(s3: Any, bucket: str, pipeline: str, run_id: str,
                  attempts: list[ExecutionAttempt]) -> None:
    """Replace the history's summaries with the result objects the task runner wrote: the full
    result of a success, the check results of the last attempt that failed a quality rule."""
    from udop.aws.runner import failed_checks_key, result_key
    from udop.aws.s3 import get_json

    quality = [i for i, a in enumerate(attempts) if a.error_type == "udop.DataQualityError"]
    last_dq = quality[-1] if quality else None
    for i, attempt in enumerate(attempts):
        if attempt.state is AttemptState.SUCCEEDED:
            key = result_key(pipeline, run_id, attempt.task_id)
        elif i == last_dq:
            key = failed_checks_key(pipeline, run_id, attempt.task_id)
        else:
            continue
        try:
            body = get_json(s3, bucket, key)
        except Exception as exc:  # AccessDenied and friends: keep the history's summary
            logger.warning("cannot read the task's result object", extra={"key": key, "error": str(exc)})
            return
        if isinstance(body, dict):
            attempt.result = body


def _log_pointers(s3: Any, bucket: str, pipeline: str, run_id: str,
                  attempts: list[ExecutionAttempt]) -> None:
    """Where each ended attempt's lines are (the pointer its invocation wrote), for its record."""
    from udop.aws.tasklogs import read_log_pointer

    for attempt in attempts:
        if attempt.state is not None and attempt.log is None and not attempt.reused:
            attempt.log = read_log_pointer(s3, bucket, pipeline, run_id, attempt.log_task or attempt.task_id,
                                           execution=attempt.execution, retry=attempt.retry)


def _with_anomaly_checks(store: Any, run: Any, task_id: str, result: dict[str, Any] | None) -> Any:
    """A succeeded task's result with its anomaly checks (``spec.alerts.anomaly``), as the local
    executor records them; rows only (the stored times of AWS tasks are when they were recorded)."""
    from udop.alerts import stored_pipeline_with_alerts, with_anomaly_checks

    if result is None:
        return result
    try:
        pipeline = stored_pipeline_with_alerts(store, run)
    except Exception as exc:  # never fails the event: the run is recorded without the check
        logger.warning("anomaly check skipped", extra={"run_id": run.id, "error": str(exc)})
        return result
    if pipeline is None or pipeline.spec.alerts.anomaly is None:
        return result
    return with_anomaly_checks(store, pipeline, run.id, task_id, result, metrics=("rows",))


def _sync_task(store: Any, run_id: str, record: Any, attempts: list[ExecutionAttempt], *,
               execution_running: bool, fetch: Callable[[list[ExecutionAttempt]], None] | None,
               checked: Callable[[str, Any], Any] | None = None) -> None:
    if record.state == TaskState.SUCCEEDED:
        return
    recorded = {a.number: a for a in record.attempts}
    finished = {a.number for a in record.attempts if a.state != AttemptState.RUNNING}
    if fetch is not None and any(a.state is not None and n not in finished
                                 for n, a in enumerate(attempts, start=1)):
        fetch(attempts)  # the result objects, read only when something new will be written
    if record.state in (TaskState.FAILED, TaskState.UPSTREAM_FAILED, TaskState.CANCELLED) and \
            len(attempts) > len(recorded):
        store.set_task_states(run_id, [record.task_id], TaskState.PENDING)
    for number, attempt in enumerate(attempts, start=1):
        previous = recorded.get(number)
        if previous is None:
            store.start_attempt(run_id, record.task_id, number)
        elif previous.state != AttemptState.RUNNING:
            continue
        if attempt.state is None:
            continue
        last = number == len(attempts)
        if attempt.state is AttemptState.SUCCEEDED:
            task_state = TaskState.SUCCEEDED
        elif attempt.state is AttemptState.ABANDONED:
            task_state = TaskState.CANCELLED
        elif last and (attempt.exited or not execution_running):
            task_state = TaskState.FAILED
        else:
            task_state = TaskState.RETRYING
        result = attempt.result
        if task_state is TaskState.SUCCEEDED and checked is not None:
            result = checked(record.task_id, result)
        store.finish_attempt(run_id, record.task_id, number, attempt_state=attempt.state,
                             task_state=task_state,
                             error_type=attempt.error_type, error_message=attempt.error_message,
                             result=result, log=attempt.log)


def _trigger(value: Any) -> str | None:
    """The execution input's ``trigger`` (an EventBridge schedule's is ``schedule``) when it is one udop
    knows; anything else from an input someone else wrote is not recorded."""
    from udop.store.api import RUN_TRIGGERS

    return value if isinstance(value, str) and value in RUN_TRIGGERS else None
