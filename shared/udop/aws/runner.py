"""Run one task from a Step Functions payload: the task runner Lambda's core.

The payload names the run, the pipeline version and the task; the definition is read from the
definitions bucket (the exact version the state machine was compiled from), upstream results from
their result objects in S3, and the datasets they point at are staged to local disk so that the
task runs through ``udop.tasks.run_task`` exactly as under the LocalExecutor. The output goes back to
its deterministic key ``runs/<pipeline>/<run_id>/<task_id>/`` and a small dict is returned.

Idempotent: the result is kept in the state store (Redis) under the run id and task id, so a
second invocation for a task that already succeeded in the same run (a Lambda retry, a redrive)
returns it without running the task again. The key uses the run id rather than the execution ARN
because a redrive on an emulator without ``RedriveExecution`` is a new execution of the same run.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from udop.aws.definitions import DefinitionCache
from udop.aws.errors import for_fused_task
from udop.aws.observability import emit_metric, logger, metrics
from udop.aws.s3 import S3Staging, get_json, put_json
from udop.aws.settings import RunnerSettings
from udop.aws.tasklogs import attempt_logging
from udop.errors import DataQualityError, FatalError, RetryableError, StoreError, TaskTimeout
from udop.executor.attempt import failed_checks, lineage
from udop.observability import tracing
from udop.observability.context import bound
from udop.sandbox import Policy, SandboxViolation, server_policy
from udop.spec.secure import check_definition
from udop.tasks.contract import (
    SNAPSHOT_FORMAT,
    SOURCE_FILES,
    VIEW_FORMAT,
    VIEW_NAME,
    SourceFiles,
    TaskContext,
    TaskResult,
)

__all__ = ["TaskPayload", "failed_checks_key", "item_result_key", "partitions_key", "result_key",
           "run_payload", "state_key"]

#: how long a finished task's result is kept for idempotency: longer than the 14-day redrive window
RESULT_TTL = 15 * 86400.0
#: seconds before the Lambda deadline at which a running task is asked to stop
CANCEL_MARGIN = 10.0


@dataclass(frozen=True)
class TaskPayload:
    """What the compiled Task state sends (see ``udop.compiler``)."""

    pipeline: str
    version: int
    task_id: str
    run_id: str
    execution: str
    attempt: int  # 1-based; the state carries ``$$.State.RetryCount`` (0-based)
    params: Mapping[str, Any] = field(default_factory=dict)
    logical_date: datetime = field(default_factory=lambda: datetime.now(UTC))
    data_root: str | None = None
    #: "retry from here": the tasks this execution runs again although they succeeded in the run
    #: (``udop.aws.runs.retry_run_from``); their earlier results are not reused
    rerun_tasks: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, event: Mapping[str, Any]) -> TaskPayload:
        if not isinstance(event, Mapping):
            raise FatalError(f"task runner: expected a JSON object as payload, got {type(event).__name__}")
        missing = [k for k in ("pipeline", "version", "task_id") if event.get(k) in (None, "")]
        if missing:
            raise FatalError(f"task runner: payload lacks {', '.join(missing)}; is the state machine "
                             "compiled by this udop version?")
        run = event.get("run") or {}
        execution = str(event.get("execution") or "")
        run_id = run.get("run_id") or (execution.rsplit(":", 1)[-1] if execution else None)
        if not run_id:
            raise FatalError("task runner: payload has neither run.run_id nor execution")
        logical = run.get("logical_date")
        try:
            logical_date = (datetime.fromisoformat(str(logical)) if logical else datetime.now(UTC))
            version = int(event["version"])
            attempt = int(event.get("attempt") or 0) + 1
        except ValueError as exc:
            raise FatalError(f"task runner: malformed payload: {exc}") from None
        if logical_date.tzinfo is None:
            logical_date = logical_date.replace(tzinfo=UTC)
        data_root = run.get("data_root")
        if not data_root and run.get("data_bucket"):
            # the compiler's Map states address the data as data_bucket + data_prefix
            data_root = f"s3://{run['data_bucket']}/{run.get('data_prefix') or ''}".rstrip("/")
        return cls(pipeline=str(event["pipeline"]), version=version, task_id=str(event["task_id"]),
                   run_id=str(run_id), execution=execution, attempt=attempt,
                   params=dict(run.get("params") or {}), logical_date=logical_date,
                   data_root=data_root, rerun_tasks=frozenset(str(t) for t in run.get("rerun_tasks") or []))


def state_key(pipeline: str, run_id: str, task_id: str) -> str:
    return f"udop:task-result:{pipeline}:{run_id}:{task_id}"


def _stored_result(state: Any, key: str, payload: TaskPayload) -> Any:
    """The result a task (or item) stored when it succeeded in this run, to return instead of running
    it again; for a task this execution re-runs ("retry from here"), only a result this very execution
    stored counts (a duplicate invocation), not the one from before the retry."""
    done = state.get(key)
    rerun = payload.task_id in payload.rerun_tasks
    if done is not None and rerun and state.get(f"{key}:by") != payload.execution:
        return None
    return done


def _store_result(state: Any, key: str, payload: TaskPayload, body: str) -> None:
    if payload.task_id in payload.rerun_tasks:
        state.set(f"{key}:by", payload.execution, ttl=RESULT_TTL)
    state.set(key, body, ttl=RESULT_TTL)


def result_key(pipeline: str, run_id: str, task_id: str) -> str:
    """The S3 key (in the data bucket) of a finished task's ``TaskResult`` JSON."""
    return f"results/{pipeline}/{run_id}/{task_id}.json"


def failed_checks_key(pipeline: str, run_id: str, task_id: str) -> str:
    """The S3 key of the check results of a task's last attempt that failed a quality rule."""
    return f"results/{pipeline}/{run_id}/{task_id}.failed-checks.json"


def item_result_key(pipeline: str, run_id: str, task_id: str, index: int) -> str:
    """The S3 key of one foreach item's ``TaskResult`` JSON; the finalize step combines them."""
    return f"results/{pipeline}/{run_id}/{task_id}/item-{index:05d}.json"


def partitions_key(output_key: str) -> str:
    """The partition list a task writes into its output folder when a ``foreach: {over: partitions}``
    reads it: a JSON array of S3 prefixes, which a Distributed Map's ``ItemReader`` reads."""
    return f"{output_key.rstrip('/')}/_partitions.json"


@dataclass(frozen=True)
class ForeachItem:
    """One Map iteration: an S3 key (a file, or a partition prefix ending in ``/``) and its index."""

    key: str
    index: int
    skipped: bool


def _record_id(task_id: str, item: ForeachItem | None) -> str:
    return task_id if item is None else f"{task_id}/item-{item.index:05d}"


def _input_prefix(payload: TaskPayload, settings: RunnerSettings, input_task: str) -> str:
    """The S3 key prefix of a task's output folder in this run (what the compiled Map lists)."""
    from udop.aws.s3 import split_uri

    root = (payload.data_root or f"s3://{settings.data_bucket}").rstrip("/") + "/"
    return f"{split_uri(root)[1]}runs/{payload.pipeline}/{payload.run_id}/{input_task}/"


def _item_of(event: Mapping[str, Any], payload: TaskPayload, task: Any,
             settings: RunnerSettings) -> ForeachItem | None:
    from udop.tasks.foreach import is_skipped

    raw = event.get("item")
    if raw is None:
        return None
    if getattr(task, "foreach", None) is None:
        raise FatalError(f"task {payload.task_id!r} has no `foreach` but was invoked for a Map item; "
                         "redeploy the pipeline so the state machine matches its definition")
    try:
        key, index = str(raw["key"]), int(raw["index"])
    except (KeyError, TypeError, ValueError):
        raise FatalError(f"task {payload.task_id!r}: malformed Map item {raw!r}; expected "
                         '{"key": <S3 key>, "index": <n>}') from None
    prefix = _input_prefix(payload, settings, task.foreach.input)
    if not key.startswith(prefix):
        raise FatalError(f"task {payload.task_id!r}: Map item {key!r} is not below the output of its "
                         f"foreach input {task.foreach.input!r} ({prefix})")
    return ForeachItem(key=key, index=index, skipped=is_skipped(key.removeprefix(prefix), task.foreach.over))


_definitions = DefinitionCache()


def runner_policy(settings: RunnerSettings) -> Policy:
    """The task runner is a server: its tasks use only its staging folder and the allowlists of
    ``UDOP_SANDBOX_*``; python callables come from ``UDOP_CODE_DIR`` (the pipelines' code)."""
    return server_policy(data_root=settings.tmp_dir, code_dir=settings.code_dir)


def run_payload(event: Mapping[str, Any], *, settings: RunnerSettings, s3: Any, state: Any,
                remaining_ms: int | None = None) -> dict[str, Any]:
    """Run the task ``event`` names (or return its earlier result) and return a small response:
    ``{"task_id", "output": manifest or None, "reused": bool}``.

    Raises udop task errors (``RetryableError``, ``FatalError``, ``DataQualityError``) or whatever
    the task code raised; the handler names them for the state machine. An unreachable state store
    or a transient S3 failure is retryable; a missing object or a denied access is not.
    """
    try:
        with _observed(event), attempt_logging(event, s3=s3, bucket=settings.data_bucket,
                                               request_id=logger.get_current_keys().get("function_request_id")):
            return _run_payload(event, settings=settings, s3=s3, state=state, remaining_ms=remaining_ms)
    except Exception as exc:
        translated = _translated(exc)
        if translated is exc:
            raise
        raise translated from exc


def _translated(exc: BaseException) -> BaseException:
    """An unreachable state store or a transient S3 failure is retryable; a missing object or a denied
    access is not; anything else is itself."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, StoreError):
        return RetryableError(f"state store: {exc}")
    if isinstance(exc, BotoCoreError):
        return RetryableError(f"AWS: {exc}")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _FATAL_AWS_ERRORS:
            return FatalError(f"AWS: {exc}")
        return RetryableError(f"AWS: {exc}")
    return exc


@contextmanager
def _observed(event: Mapping[str, Any]) -> Iterator[None]:
    """The run's correlation id (from the request that started it) on every log line, the attempt's
    span below the run's trace, and the attempt's metrics under the names /metrics uses."""
    run = event.get("run") if isinstance(event, Mapping) else None
    run = run if isinstance(run, Mapping) else {}
    cid = str(run.get("correlation_id") or event.get("execution") or "") or None
    if cid:
        logger.set_correlation_id(cid)
    task_id, pipeline = str(event.get("task_id") or ""), str(event.get("pipeline") or "")
    try:
        attempt = int(event.get("attempt") or 0) + 1
    except (TypeError, ValueError):
        attempt = 0  # the payload's own check names the problem
    started = time.monotonic()
    state = "failed"
    with bound(correlation_id=cid, run_id=str(run.get("run_id") or "") or None, pipeline=pipeline or None,
               task_id=task_id or None, attempt=attempt or None,
               logical_date=str(run.get("logical_date") or "") or None), \
            tracing.remote_span(f"attempt {task_id}#{attempt}", run.get("traceparent"),
                                {"udop.run_id": str(run.get("run_id") or ""), "udop.task_id": task_id,
                                 "udop.attempt": attempt}):
        try:
            yield
            state = "succeeded"
        finally:
            # own EMF blobs: the handler's metrics keep their dimensions (alarms select on them)
            dims = {"pipeline": pipeline or "unknown", "state": state}
            emit_metric("udop_attempt_duration_seconds", "Seconds", time.monotonic() - started, dims)
            emit_metric("udop_tasks", "Count", 1, dims)
            if attempt > 1:
                emit_metric("udop_retries", "Count", 1, {"pipeline": dims["pipeline"]})


#: S3 error codes another attempt cannot fix
_FATAL_AWS_ERRORS = frozenset({"NoSuchKey", "NoSuchBucket", "AccessDenied", "403", "404",
                               "InvalidObjectState"})


def _run_payload(event: Mapping[str, Any], *, settings: RunnerSettings, s3: Any, state: Any,
                 remaining_ms: int | None) -> dict[str, Any]:
    payload = TaskPayload.parse(event)
    logger.append_keys(pipeline=payload.pipeline, run_id=payload.run_id, task_id=payload.task_id,
                       attempt=payload.attempt)
    pipeline = _definitions.get(s3, settings.definitions_bucket, payload.pipeline, payload.version)
    policy = runner_policy(settings)
    refused = check_definition(pipeline, policy)
    if refused:
        raise SandboxViolation(f"pipeline {payload.pipeline!r} version {payload.version} is refused by the "
                               f"task runner's sandbox: {refused[0]}"
                               + (f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""))
    try:
        task = pipeline.task(payload.task_id)
    except KeyError:
        raise FatalError(f"pipeline {payload.pipeline!r} version {payload.version} has no task "
                         f"{payload.task_id!r}") from None

    item = _item_of(event, payload, task, settings)
    if item is not None:
        logger.append_keys(item=item.index)
    if event.get("engine_phase"):
        return _engine_phase(event, payload, pipeline, task, settings=settings, s3=s3, state=state)
    if event.get("finalize"):
        return _finalize(payload, pipeline, task, settings=settings, s3=s3, state=state)
    if event.get("list"):
        return _list_partitions(payload, task, settings=settings, s3=s3, max_items=event.get("max_items"))
    if item is not None and item.skipped:
        logger.info("not a data item of the foreach input; skipped", extra={"item": item.key})
        return {"task_id": payload.task_id, "item": item.index, "skipped": True}

    if event.get("fused") is not None:
        if item is not None:
            raise FatalError(f"task {payload.task_id!r}: a fused chain has no Map items; redeploy the "
                             "pipeline so the state machine matches its definition")
        return _run_chain(payload, pipeline, task, str(event["fused"]), settings=settings, s3=s3, state=state,
                          remaining_ms=remaining_ms)

    key = state_key(payload.pipeline, payload.run_id, _record_id(payload.task_id, item))
    if (done := _stored_result(state, key, payload)) is not None:
        logger.info("task already succeeded in this run; returning its result")
        metrics.add_metric(name="TaskReused", unit="Count", value=1)
        return _response(payload.task_id, json.loads(done), reused=True)

    timeout = pipeline.timeout_for(task)
    lock = state.lock(f"task:{payload.pipeline}:{payload.run_id}:{_record_id(payload.task_id, item)}",
                      ttl=(timeout or 900.0) + 60.0)
    if not lock.acquire():
        what = f"item {item.index} of task" if item is not None else "task"
        raise RetryableError(f"{what} {payload.task_id!r} of run {payload.run_id} is being run by another "
                             "invocation right now")
    try:
        if (done := _stored_result(state, key, payload)) is not None:  # finished while we waited for the lock
            return _response(payload.task_id, json.loads(done), reused=True)
        try:
            result = _run(payload, pipeline, task, settings=settings, s3=s3, remaining_ms=remaining_ms,
                          item=item, state=state)
        except DataQualityError as exc:
            # the rules' results, for `udop runs show` (run events read them back)
            checks = failed_checks(exc)
            if checks:
                put_json(s3, settings.data_bucket, failed_checks_key(payload.pipeline, payload.run_id,
                                                                     payload.task_id), checks)
            raise
        body = result.to_dict()
        if item is None:
            put_json(s3, settings.data_bucket, result_key(payload.pipeline, payload.run_id, payload.task_id),
                     body)
        else:  # with the item's key: the combine step checks that every item has its result
            put_json(s3, settings.data_bucket, item_result_key(payload.pipeline, payload.run_id,
                                                               payload.task_id, item.index),
                     {**body, "item": {"key": item.key, "index": item.index}})
        _store_result(state, key, payload, json.dumps(body, default=str))
    finally:
        lock.release()
    metrics.add_metric(name="TaskSucceeded", unit="Count", value=1)
    if result.output is not None and result.output.rows is not None:
        metrics.add_metric(name="RowsWritten", unit="Count", value=result.output.rows)
        emit_metric("udop_rows_written", "Count", result.output.rows, {"pipeline": payload.pipeline})
    return _response(payload.task_id, body, reused=False)


def _run_chain(payload: TaskPayload, pipeline: Any, task: Any, load_id: str, *, settings: RunnerSettings,
               s3: Any, state: Any, remaining_ms: int | None) -> dict[str, Any]:
    """A transform and the file load fused into its Task state (``"fused": <load>`` in the payload):
    one DuckDB query from the transform's inputs into the target, each task keeping its own result
    object and idempotency record. What a retry redoes follows from those records:

    * neither task recorded: the fused query; if it fails for any reason but a timeout, the transform
      alone (its Parquet to S3, as unfused), then the load alone, in this same invocation;
    * the transform recorded, the load not: the load alone (it reads the transform's Parquet, or runs
      the transform's query again over the inputs its view names);
    * both recorded: nothing (their stored results).

    An error of the load leaves as ``[task <load>] <message>`` under the usual error name, so that the
    run events record it as the load's attempt; any other error is the transform's.
    """
    load = _fused_load(payload, pipeline, task, load_id)
    t_key = state_key(payload.pipeline, payload.run_id, task.id)
    l_key = state_key(payload.pipeline, payload.run_id, load.id)
    t_done, l_done = state.get(t_key), state.get(l_key)
    if t_done is not None and l_done is not None:
        logger.info("fused tasks already succeeded in this run; returning their results")
        metrics.add_metric(name="TaskReused", unit="Count", value=2)
        return _chain_response((task.id, json.loads(t_done), True), (load.id, json.loads(l_done), True))
    timeout = _chain_timeout(pipeline, task, load)
    # the state's TimeoutSeconds is the sum of the two timeouts: the runs after a failed fused query
    # share what is left of it (and of the Lambda's time), so the runner stops them first and names
    # the task that was running
    started = time.monotonic()

    def left() -> int | None:
        limits = [ms for ms in (remaining_ms, None if timeout is None else int(timeout * 1000))
                  if ms is not None]
        return None if not limits else max(0, min(limits) - int((time.monotonic() - started) * 1000))

    lock = state.lock(f"task:{payload.pipeline}:{payload.run_id}:{task.id}", ttl=(timeout or 900.0) + 60.0)
    if not lock.acquire():
        raise RetryableError(f"task {task.id!r} (fused with {load.id!r}) of run {payload.run_id} is being "
                             "run by another invocation right now")
    try:
        t_raw, l_raw = state.get(t_key), state.get(l_key)
        t_reused, l_reused = t_raw is not None, l_raw is not None
        t_body = json.loads(t_raw) if t_raw is not None else None
        l_body = json.loads(l_raw) if l_raw is not None else None
        fused: tuple[TaskResult, TaskResult] | None = None
        if t_body is None:
            fused = _run_fused(payload, pipeline, task, load, settings=settings, s3=s3, state=state,
                               remaining_ms=remaining_ms, timeout=timeout)
            if fused is not None:
                t_body = _record(payload, task.id, fused[0], settings=settings, s3=s3, state=state)
            else:
                result = _run(payload, pipeline, task, settings=settings, s3=s3, remaining_ms=left(),
                              state=state)
                t_body = _record(payload, task.id, result, settings=settings, s3=s3, state=state)
        # from here on whatever fails is the load's: its attempt in the run record
        own = replace(payload, task_id=load.id)
        try:
            if fused is not None and l_body is None:
                l_body = _record(own, load.id, fused[1], settings=settings, s3=s3, state=state)
            if l_body is None:
                result = _run(own, pipeline, load, settings=settings, s3=s3, remaining_ms=left(), state=state)
                l_body = _record(own, load.id, result, settings=settings, s3=s3, state=state)
        except Exception as exc:
            raise for_fused_task(_translated(exc), load.id) from exc
    finally:
        lock.release()
    rows = (l_body.get("output") or {}).get("rows")
    if not l_reused and isinstance(rows, int):
        metrics.add_metric(name="RowsWritten", unit="Count", value=rows)
        emit_metric("udop_rows_written", "Count", rows, {"pipeline": payload.pipeline})
    return _chain_response((task.id, t_body, t_reused), (load.id, l_body, l_reused))


def _fused_load(payload: TaskPayload, pipeline: Any, task: Any, load_id: str) -> Any:
    """The load the payload fuses into ``task``, checked against the definition's own rule."""
    from udop.spec.data_tasks import fusable

    try:
        load = pipeline.task(load_id)
    except KeyError:
        load = None
    if load is None or not fusable(task, load):
        raise FatalError(f"task {task.id!r}: the state machine fuses it with {load_id!r}, which pipeline "
                         f"{payload.pipeline!r} version {payload.version} does not allow; redeploy the "
                         "pipeline so the state machine matches its definition")
    return load


def _chain_timeout(pipeline: Any, task: Any, load: Any) -> float | None:
    """A fused attempt does both tasks' work: the sum of their timeouts (none if either has none)."""
    mine, theirs = pipeline.timeout_for(task), pipeline.timeout_for(load)
    return None if mine is None or theirs is None else mine + theirs


def _run_fused(payload: TaskPayload, pipeline: Any, task: Any, load: Any, *, settings: RunnerSettings,
               s3: Any, state: Any, remaining_ms: int | None,
               timeout: float | None) -> tuple[TaskResult, TaskResult] | None:
    """(the transform's result, the load's) of the fused query, or None when it failed for a reason
    the tasks run on their own will report (a timeout or a stop is raised as such)."""
    from udop.executor.fusion import chain_runner
    from udop.sandbox import active, redactor
    from udop.tasks.registry import redact_error

    runner = chain_runner()
    if runner is None:
        return None  # no transforms layer to fuse with: the tasks run on their own
    masking = getattr(pipeline.spec, "masking", None)
    with _attempt(payload, pipeline, task, settings=settings, s3=s3, remaining_ms=remaining_ms, state=state,
                  timeout=timeout, timeout_given=True) as at:
        load_context = replace(at.context, task_id=load.id, output_override=None)

        def work() -> tuple[TaskResult, TaskResult]:
            with active(at.context.policy), redactor.scope(masking.patterns if masking else (),
                                                           masking.columns if masking else ()):
                try:
                    return runner[1](at.context, task, dict(at.inputs), load_context, load)
                except Exception as exc:
                    raise redact_error(exc) from None

        try:
            result, loaded = at.guarded(work)
        except TaskTimeout:
            raise
        except Exception as exc:
            if at.context.cancelled:
                raise
            logger.info("fused run failed; running the tasks on their own",
                        extra={"load": load.id, "error_type": type(exc).__name__})
            return None
        # the load read the view the transform recorded: its lineage names the transform's dataset
        second = at.finish(load.id, loaded, {task.id: result})
        first = at.finish(task.id, result, at.inputs)
        rows = result.metrics.get("rows")
        metrics.add_metric(name="FusedChains", unit="Count", value=1)
        logger.info("transform and load ran as one query", extra={"load": load.id, "rows": rows})
        return first, second


def _record(payload: TaskPayload, task_id: str, result: TaskResult, *, settings: RunnerSettings, s3: Any,
            state: Any) -> dict[str, Any]:
    """Keep a finished task's result: its result object (downstream tasks, run events and lineage read
    it) and its idempotency record. Returns the stored body."""
    body = result.to_dict()
    put_json(s3, settings.data_bucket, result_key(payload.pipeline, payload.run_id, task_id), body)
    state.set(state_key(payload.pipeline, payload.run_id, task_id), json.dumps(body, default=str),
              ttl=RESULT_TTL)
    metrics.add_metric(name="TaskSucceeded", unit="Count", value=1)
    return body


def _chain_response(first: tuple[str, Mapping[str, Any], bool],
                    second: tuple[str, Mapping[str, Any], bool]) -> dict[str, Any]:
    """The transform's response with the load's under ``fused`` (both small)."""
    return {**_response(first[0], first[1], reused=first[2]),
            "fused": _response(second[0], second[1], reused=second[2])}


def engine_job_key(pipeline: str, run_id: str, task_id: str) -> str:
    """The S3 key of an engine task's job spec (beside the run's results, not in its output folder,
    which the job replaces)."""
    return f"results/{pipeline}/{run_id}/{task_id}.engine-job.json"


def _engine_phase(event: Mapping[str, Any], payload: TaskPayload, pipeline: Any, task: Any, *,
                  settings: RunnerSettings, s3: Any, state: Any) -> dict[str, Any]:
    """``engine: spark``: before the EMR Serverless job run, write its spec and answer where it is;
    after it, record the task's result from what the job wrote (docs/engines.md)."""
    from importlib.metadata import entry_points

    engine = getattr(task, "engine", "duckdb")
    found = entry_points(group="udop.engine_jobs", name=engine)
    if not found:
        raise FatalError(f"task {payload.task_id!r}: engine {engine}: no udop.engine_jobs entry point "
                         "for it is installed (the udop transforms layer provides spark and athena)")
    calls = next(iter(found)).load()
    validate = task.type == "validate"
    if validate and "prepare_validate" not in calls:
        raise FatalError(f"task {payload.task_id!r}: engine {engine} on AWS does not run validate tasks; "
                         "set engine: duckdb or spark on it")
    context = TaskContext(pipeline=pipeline, task_id=payload.task_id, run_id=payload.run_id,
                          attempt=payload.attempt, logical_date=payload.logical_date,
                          params=payload.params, data_root=settings.tmp_dir or tempfile.gettempdir(),
                          policy=runner_policy(settings))
    remote_root = (payload.data_root or f"s3://{settings.data_bucket}").rstrip("/")
    output_uri = f"{remote_root}/runs/{payload.pipeline}/{payload.run_id}/{payload.task_id}/"
    spec_key = engine_job_key(payload.pipeline, payload.run_id, payload.task_id)
    if event["engine_phase"] == "prepare":
        with tempfile.TemporaryDirectory(prefix="udop-", dir=settings.tmp_dir) as tmp:
            staging = S3Staging(s3, remote_root, Path(tmp))
            inputs = {dep: _remote_input(staging, s3, settings, payload, dep) for dep in task.depends_on}
            context = replace(context, data_root=tmp)
            extra: dict[str, Any] = {}
            if engine == "athena":  # a Glue table per input, in the platform's database
                extra = {"glue": _aws_client("glue"), "database": str(event.get("glue_database") or "")}
            prepare = calls["prepare_validate"] if validate else calls["prepare"]
            spec = prepare(context, task, inputs, s3=s3, output_uri=output_uri, **extra)
            if isinstance(spec.get("input_uris"), dict):  # a snapshot was staged here: lineage names S3
                spec["input_uris"] = {k: staging.to_remote(str(v)) for k, v in spec["input_uris"].items()}
        put_json(s3, settings.data_bucket, spec_key, spec)
        answer = {"task_id": payload.task_id, "spec_uri": f"s3://{settings.data_bucket}/{spec_key}",
                  "name": f"udop-{payload.pipeline}-{payload.task_id}-{payload.run_id}"[:255]}
        if "query" in spec:  # athena: the state runs it
            answer["query"] = spec["query"]
        return answer
    spec = get_json(s3, settings.data_bucket, spec_key)
    if spec is None:
        raise FatalError(f"task {payload.task_id!r}: its job spec s3://{settings.data_bucket}/{spec_key} "
                         "is missing (the prepare call did not run in this run)")
    job_run: Mapping[str, Any] = event["job_run"] if isinstance(event.get("job_run"), Mapping) else {}
    client = {"glue": _aws_client("glue")} if engine == "athena" else {"emr": _aws_client("emr-serverless")}
    if validate:
        result = _finish_validate(calls["finish_validate"], context, task, spec, s3=s3, job_run=job_run,
                                  client=client, settings=settings, payload=payload)
    else:
        result = calls["finish"](task, spec, s3=s3, job_run=job_run, **client)
    body = result.to_dict()
    put_json(s3, settings.data_bucket, result_key(payload.pipeline, payload.run_id, payload.task_id), body)
    state.set(state_key(payload.pipeline, payload.run_id, payload.task_id), json.dumps(body, default=str),
              ttl=RESULT_TTL)
    return _response(payload.task_id, body, reused=False)


def _finish_validate(finish: Any, context: TaskContext, task: Any, spec: Mapping[str, Any], *, s3: Any,
                     job_run: Mapping[str, Any], client: Mapping[str, Any], settings: RunnerSettings,
                     payload: TaskPayload) -> TaskResult:
    """A spark validate's record call: its checks masked as any task's are (``spec.masking``); a failed
    ``error`` rule fails the task with ``DataQualityError``, its checks kept for ``udop runs show``."""
    from udop.redaction import redactor
    from udop.tasks.registry import redact_checks, redact_error

    masking = getattr(context.pipeline.spec, "masking", None)
    with redactor.scope(masking.patterns if masking else (), masking.columns if masking else ()):
        try:
            result: TaskResult = finish(context, task, spec, s3=s3, job_run=job_run, **client)
        except DataQualityError as exc:
            redact_error(exc)
            checks = failed_checks(exc)
            if checks:
                put_json(s3, settings.data_bucket,
                         failed_checks_key(payload.pipeline, payload.run_id, payload.task_id), checks)
            raise
        except Exception as exc:
            raise redact_error(exc) from None
        return replace(result, checks=redact_checks(result.checks))


def _aws_client(service: Literal["glue", "emr-serverless"]) -> Any:
    import boto3

    return boto3.client(service)


def _remote_input(staging: S3Staging, s3: Any, settings: RunnerSettings, payload: TaskPayload,
                  dep: str) -> TaskResult:
    """An upstream result for a job that reads S3 itself: only a snapshot (one small file naming the
    source objects) is staged; a dataset stays where it is."""
    body = get_json(s3, settings.data_bucket, result_key(payload.pipeline, payload.run_id, dep))
    if body is None:
        raise FatalError(f"task {payload.task_id!r}: upstream task {dep!r} has no result in run "
                         f"{payload.run_id}")
    upstream = TaskResult.from_dict(body)
    if upstream.output is not None and upstream.output.format == SNAPSHOT_FORMAT:
        staging.download(upstream.output.uri)
        return replace(upstream, output=replace(upstream.output, uri=staging.to_local(upstream.output.uri)))
    return upstream


def _response(task_id: str, body: Mapping[str, Any], *, reused: bool) -> dict[str, Any]:
    # small on purpose: a state's output must not grow with the data or the number of parents
    return {"task_id": task_id, "output": body.get("output"), "reused": reused}


def _run(payload: TaskPayload, pipeline: Any, task: Any, *, settings: RunnerSettings, s3: Any,
         remaining_ms: int | None, item: ForeachItem | None = None, state: Any = None) -> TaskResult:
    from udop.tasks.foreach import run_item
    from udop.tasks.registry import run_task

    with _attempt(payload, pipeline, task, settings=settings, s3=s3, remaining_ms=remaining_ms, item=item,
                  state=state) as at:
        local_item = None
        if item is not None:
            local_item = _stage_item(at.staging, payload, task, item)

        def work() -> TaskResult:
            if item is not None:
                assert local_item is not None
                return run_item(at.context, task, at.inputs, local_item, item.index)
            return run_task(at.context, task, at.inputs)

        result = at.guarded(work)
        return at.finish(payload.task_id, result, at.inputs, partitions=item is None)


@dataclass
class _Attempt:
    """One invocation's work on local disk: the staged inputs, the task's context and its stop timer."""

    payload: TaskPayload
    pipeline: Any
    staging: S3Staging
    tmp: str
    context: TaskContext
    inputs: dict[str, TaskResult]
    limit: float | None

    def guarded(self, work: Any) -> Any:
        """``work()``, stopped at the attempt's time limit (a ``TaskTimeout`` then)."""
        limit = self.limit
        timer = None
        if limit is not None:
            timer = threading.Timer(limit, self.cancel)
            timer.daemon = True
            timer.start()
        try:
            result = work()
        except Exception as exc:
            if self.context.cancelled:
                raise TaskTimeout(f"task {self.context.task_id!r} was stopped after {limit or 0:g}s") from exc
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if self.context.cancelled:
            raise TaskTimeout(f"task {self.context.task_id!r} was stopped after {limit or 0:g}s (its timeout "
                              "or the Lambda time limit)")
        return result

    def cancel(self) -> None:
        self.context.cancel_event.set()
        for hook in self.hooks:
            try:
                hook()
            except Exception:  # a failing hook must not keep the others from running
                logger.warning("a cancel hook failed", exc_info=True)

    @property
    def hooks(self) -> list[Any]:
        return self._hooks

    def __post_init__(self) -> None:
        self._hooks: list[Any] = []
        self.context.on_cancel = self._hooks.append  # e.g. the transform engine's DuckDB interrupt

    def finish(self, task_id: str, result: TaskResult, inputs: Mapping[str, TaskResult], *,
               partitions: bool = False) -> TaskResult:
        """``result`` as stored: its output uploaded to its S3 key, lineage by S3 URIs."""
        staging, tmp = self.staging, self.tmp
        output = result.output
        if output is not None and output.uri.startswith(tmp):
            if output.format == VIEW_FORMAT:
                _view_inputs(staging, output.uri, staging.to_remote)  # the inputs it names, in S3
            try:
                files, size = staging.upload(staging.to_local(output.uri).rstrip("/"))
            except OSError as exc:
                raise RetryableError(f"uploading the output of {task_id!r} failed: {exc}") from None
            if partitions and _read_by_partitions(self.pipeline, task_id):
                _write_partitions(staging, output.uri, staging.to_remote(output.uri))
            output = replace(output, uri=staging.to_remote(output.uri),
                             # a snapshot's counts are of the source files it names, not of itself; a
                             # view's are of what its load wrote
                             files=output.files if output.format in (SNAPSHOT_FORMAT, VIEW_FORMAT) else files,
                             bytes=output.bytes if output.bytes is not None else size)
        # lineage as the LocalExecutor records it: what the task read, else its inputs' datasets
        read = lineage(result, inputs)
        # column lineage names the inputs by their S3 URIs too, not by the Lambda's staging paths
        columns = {col: [[staging.to_remote(uri), name] for uri, name in sources]
                   for col, sources in result.columns.items()}
        return replace(result, output=output, inputs=tuple(staging.to_remote(i) for i in read),
                       columns=columns)


@contextmanager
def _attempt(payload: TaskPayload, pipeline: Any, task: Any, *, settings: RunnerSettings, s3: Any,
             remaining_ms: int | None, item: ForeachItem | None = None, state: Any = None,
             timeout: float | None = None, timeout_given: bool = False) -> Iterator[_Attempt]:
    remote_root = (payload.data_root or f"s3://{settings.data_bucket}").rstrip("/")
    with tempfile.TemporaryDirectory(prefix="udop-", dir=settings.tmp_dir) as tmp:
        staging = S3Staging(s3, remote_root, Path(tmp))
        narrowed = None if item is None else task.foreach.input
        inputs = {dep: _stage_input(staging, s3, settings, payload, dep, whole=dep != narrowed)
                  for dep in task.depends_on}
        # the runner's state store (Redis) also holds watermarks, their leases and the ledger
        # entries of targets without a transaction of their own: the same store on every Lambda
        services: dict[str, Any] = {"state": state} if state is not None else {}
        # S3 source objects fetched once per invocation, removed with its folder
        services[SOURCE_FILES] = SourceFiles()
        if settings.code_dir:
            services["base_dir"] = settings.code_dir
        context = TaskContext(pipeline=pipeline, task_id=payload.task_id, run_id=payload.run_id,
                              attempt=payload.attempt, logical_date=payload.logical_date,
                              params=payload.params, data_root=tmp, services=services,
                              policy=runner_policy(settings))
        # stop at the task's timeout (the state machine's TimeoutSeconds does not stop the Lambda) or
        # a little before the Lambda deadline, whichever comes first
        limits = [t for t in (timeout if timeout_given else pipeline.timeout_for(task),
                              None if remaining_ms is None else max(0.0, remaining_ms / 1000 - CANCEL_MARGIN))
                  if t is not None]
        yield _Attempt(payload=payload, pipeline=pipeline, staging=staging, tmp=tmp, context=context,
                       inputs=inputs, limit=min(limits) if limits else None)


def _stage_input(staging: S3Staging, s3: Any, settings: RunnerSettings, payload: TaskPayload,
                 dep: str, *, whole: bool = True) -> TaskResult:
    """An upstream task's result with its dataset staged locally (only its location when not
    ``whole``: a foreach item stages its own file or partition)."""
    body = get_json(s3, settings.data_bucket, result_key(payload.pipeline, payload.run_id, dep))
    if body is None:
        raise FatalError(f"task {payload.task_id!r}: upstream task {dep!r} has no result in run "
                         f"{payload.run_id} (s3://{settings.data_bucket}/"
                         f"{result_key(payload.pipeline, payload.run_id, dep)})")
    upstream = TaskResult.from_dict(body)
    if upstream.output is None:
        if not whole:
            raise FatalError(f"task {payload.task_id!r}: foreach input {dep!r} wrote no dataset")
        return upstream
    if whole and staging.download(upstream.output.uri) == 0:
        raise FatalError(f"task {payload.task_id!r}: the output of {dep!r} at {upstream.output.uri} "
                         "holds no files")
    local = staging.to_local(upstream.output.uri)
    if whole and upstream.output.format == VIEW_FORMAT:
        # a fused transform's view: the reader runs its query over the inputs it names, staged too
        _view_inputs(staging, local, lambda uri: _stage_view_input(staging, uri))
    return replace(upstream, output=replace(upstream.output, uri=local))


def _view_inputs(staging: S3Staging, folder: str, move: Any) -> None:
    """Rewrite the input URIs ``_view.json`` in ``folder`` names with ``move`` (local <-> S3)."""
    path = Path(folder) / VIEW_NAME
    try:
        recipe = json.loads(path.read_text())
        for manifest in dict(recipe["inputs"]).values():
            manifest["uri"] = move(str(manifest["uri"]))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise FatalError(f"the view {staging.to_remote(str(path))} is not readable ({exc}); run the "
                         "pipeline again") from None
    path.write_text(json.dumps(recipe, indent=1))


def _stage_view_input(staging: S3Staging, uri: str) -> str:
    """One input of a view (a dataset or a snapshot under the run's prefix) downloaded; its local path."""
    if uri.startswith(staging.remote_root + "/"):
        staging.download(uri)
    return staging.to_local(uri)


def _stage_item(staging: S3Staging, payload: TaskPayload, task: Any, item: ForeachItem) -> str:
    """Download one Map item (a file, or every data file under a partition prefix); its local path."""
    from udop.tasks.foreach import DATA_SUFFIXES

    uri = f"s3://{staging.bucket}/{item.key}"
    if staging.download(uri) == 0 or (
        item.key.endswith("/")
        and not any(p.is_file() and p.suffix in DATA_SUFFIXES and not p.name.startswith((".", "_"))
                    for p in Path(staging.to_local(uri)).rglob("*"))
    ):
        raise FatalError(f"task {payload.task_id!r}: foreach item {item.index} ({uri}) holds no data files")
    return staging.to_local(uri).rstrip("/")


def _read_by_partitions(pipeline: Any, task_id: str) -> bool:
    """Whether some task runs ``foreach: {input: task_id, over: partitions}``."""
    return any(t.foreach is not None and t.foreach.input == task_id and t.foreach.over == "partitions"
               for t in pipeline.spec.tasks)


def _write_partitions(staging: S3Staging, local_uri: str, remote_uri: str) -> None:
    """Write ``_partitions.json`` (the partitions as :func:`udop.tasks.foreach.list_items` finds them
    locally, as S3 prefixes) into the output folder; the compiled Distributed Map reads it."""
    from udop.aws.s3 import split_uri
    from udop.tasks.contract import Manifest
    from udop.tasks.foreach import list_items

    if not Path(local_uri).is_dir():
        return  # a single file: one item, listed by the Map itself
    prefixes = []
    for folder in list_items(Manifest(uri=local_uri), "partitions"):
        remote = staging.to_remote(folder.rstrip("/"))
        prefixes.append(split_uri(remote)[1].rstrip("/") + "/")
    put_json(staging.s3, staging.bucket, partitions_key(split_uri(remote_uri.rstrip("/") + "/")[1]), prefixes)


def _finalize(payload: TaskPayload, pipeline: Any, task: Any, *, settings: RunnerSettings, s3: Any,
              state: Any) -> dict[str, Any]:
    """After a foreach task's Map: combine the recorded item results into the task's result object,
    where downstream tasks, run events and lineage read a task's result."""
    from udop.tasks.contract import dataset_uri
    from udop.tasks.foreach import combine

    if task.foreach is None:
        raise FatalError(f"task {payload.task_id!r} has no `foreach` but was asked to combine Map items; "
                         "redeploy the pipeline so the state machine matches its definition")
    key = state_key(payload.pipeline, payload.run_id, payload.task_id)
    if (done := _stored_result(state, key, payload)) is not None:
        return _response(payload.task_id, json.loads(done), reused=True)
    source = get_json(s3, settings.data_bucket,
                      result_key(payload.pipeline, payload.run_id, task.foreach.input))
    if source is None or not source.get("output"):
        raise FatalError(f"task {payload.task_id!r}: foreach input {task.foreach.input!r} has no result in "
                         f"run {payload.run_id}")
    prefix = item_result_key(payload.pipeline, payload.run_id, payload.task_id, 0).rsplit("/", 1)[0] + "/"
    keys = sorted(o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=settings.data_bucket, Prefix=prefix) for o in page.get("Contents", []))
    bodies: list[dict[str, Any]] = [get_json(s3, settings.data_bucket, k) or {} for k in keys]
    expected = _expected_items(s3, settings, payload, task)
    done = {str((b.get("item") or {}).get("key")) for b in bodies}
    missing = [k for k in expected if k not in done]
    if missing:
        # a Map tolerating failures (or an emulator) can end with items that never succeeded
        raise FatalError(f"task {payload.task_id!r}: {len(missing)} of {len(expected)} foreach items have no "
                         f"result (failed or never ran), e.g. s3://{settings.data_bucket}/{missing[0]}; "
                         "the task's output would be incomplete")
    results = [TaskResult.from_dict(b) for b in bodies if str((b.get("item") or {}).get("key")) in expected]
    remote_root = (payload.data_root or f"s3://{settings.data_bucket}").rstrip("/")
    result = combine(dataset_uri(remote_root, payload.pipeline, payload.run_id, payload.task_id),
                     source["output"]["uri"], results)
    body = result.to_dict()
    put_json(s3, settings.data_bucket, result_key(payload.pipeline, payload.run_id, payload.task_id), body)
    _store_result(state, key, payload, json.dumps(body, default=str))
    metrics.add_metric(name="TaskSucceeded", unit="Count", value=1)
    return _response(payload.task_id, body, reused=False)


def _expected_items(s3: Any, settings: RunnerSettings, payload: TaskPayload, task: Any) -> set[str]:
    """The S3 keys the compiled Map runs as items (what :func:`list_items` gives locally): the data
    files under the input's prefix, or the partitions its ``_partitions.json`` lists."""
    from udop.tasks.foreach import is_skipped

    prefix = _input_prefix(payload, settings, task.foreach.input)
    if task.foreach.over == "partitions":
        listed = get_json(s3, settings.data_bucket, partitions_key(prefix))
        if not isinstance(listed, list):
            raise FatalError(f"task {payload.task_id!r}: its foreach input {task.foreach.input!r} wrote no "
                             f"partition list (s3://{settings.data_bucket}/{partitions_key(prefix)})")
        return {str(k) for k in listed}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=settings.data_bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])
            if not is_skipped(o["Key"].removeprefix(prefix), "files")}


def _list_partitions(payload: TaskPayload, task: Any, *, settings: RunnerSettings, s3: Any,
                     max_items: Any) -> dict[str, Any]:
    """An inline Map's items over partitions: the keys of ``_partitions.json``, or none and
    ``truncated`` when there are more than ``max_items`` (the state machine then fails the task)."""
    if task.foreach is None or task.foreach.over != "partitions":
        raise FatalError(f"task {payload.task_id!r} has no `foreach: {{over: partitions}}` but was asked to "
                         "list partitions; redeploy the pipeline so the state machine matches its definition")
    keys = sorted(_expected_items(s3, settings, payload, task))
    if max_items is not None and len(keys) > int(max_items):
        return {"keys": [], "truncated": True}
    return {"keys": keys, "truncated": False}
