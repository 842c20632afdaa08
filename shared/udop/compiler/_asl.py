"""Emit Amazon States Language for a schedule: Task, Parallel, Map and child-machine states.

The state that flows between states is the execution input (the run context) at the top level and
``{}`` inside Parallel branches; tasks read what they need from ``$$.Execution.Input`` and drop their
results, so no state grows with the data or with the number of parents. A failed task does not stop
unrelated branches: its branch ends carrying ``{"failure": {...}}``, the Parallel collects the
failures of its branches, and a Choice after it sends the first one on, up to the top-level Fail.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from udop.compiler._schedule import Node, Parallel, Series, Step
from udop.errors import NOT_RETRIED, STATES_ALIASES, FatalError, TaskTimeout, error_name

LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
START_CHILD = "arn:aws:states:::states:startExecution.sync:2"
S3_LIST = "arn:aws:states:::aws-sdk:s3:listObjectsV2"
EMR_SERVERLESS_RUN = "arn:aws:states:::emr-serverless:startJobRun.sync"
ATHENA_QUERY = "arn:aws:states:::athena:startQueryExecution.sync"
#: DefinitionSubstitutions an engine's states need, from the platform (docs/engines.md)
ENGINE_SUBSTITUTIONS: dict[str, tuple[str, ...]] = {
    "spark": ("EmrApplicationId", "EmrJobRoleArn", "SparkEntryPoint"),
    "athena": ("AthenaWorkGroup", "GlueDatabase"),
}
#: the task types each engine runs on AWS (a spark validate counts its rules in the job)
ENGINE_TASK_TYPES: dict[str, tuple[str, ...]] = {"spark": ("transform", "validate"), "athena": ("transform",)}
#: names never retried: the first Retry rule stops them (``MaxAttempts: 0``) before the catch-all
#: rule retries everything else, foreign exceptions included, as the LocalExecutor does; the task
#: runner raises the same names (both from ``udop.errors.classify``)
NOT_RETRIED_RULE = {"ErrorEquals": list(NOT_RETRIED), "MaxAttempts": 0}
LAMBDA_TRANSIENT_ERRORS = ["Lambda.ServiceException", "Lambda.AWSLambdaException",
                           "Lambda.SdkClientException", "Lambda.TooManyRequestsException"]
LAMBDA_TRANSIENT_RETRY = {"ErrorEquals": LAMBDA_TRANSIENT_ERRORS, "IntervalSeconds": 1, "BackoffRate": 2.0,
                          "MaxAttempts": 3, "JitterStrategy": "FULL"}
FAIL_STATE = "Run failed"


def _fail_states() -> dict[str, Any]:
    """The end of a failed run: ``Fail`` with the task's error and cause.

    A Fail state may not raise a ``States.*`` name, which a caught ``States.Timeout`` (the task's
    TimeoutSeconds), ``States.TaskFailed`` (a child machine) or ``States.Runtime`` would be; those
    become udop names and keep the original in the cause.
    """
    cause = "States.Format('{} in task {}: {}', $.failure.Error, $.failure.task, $.failure.Cause)"
    return {
        FAIL_STATE: {"Type": "Choice", "Choices": [
            {"Variable": "$.failure.Error", "StringEquals": "States.Timeout", "Next": "Task timed out"},
            {"Variable": "$.failure.Error", "StringMatches": "States.*", "Next": "Task stopped"}],
            "Default": "Task failed"},
        "Task failed": {"Type": "Fail", "Comment": "Error and Cause are the failed task's",
                        "ErrorPath": "$.failure.Error", "CausePath": "$.failure.Cause"},
        "Task timed out": {"Type": "Fail", "Error": error_name(TaskTimeout), "CausePath": cause},
        "Task stopped": {"Type": "Fail", "Error": error_name(FatalError), "CausePath": cause},
    }


@dataclass(frozen=True, slots=True)
class ChildCall:
    """Part of the schedule moved into a child state machine (``name``)."""

    name: str
    body: Node


AnyNode = Node | ChildCall
#: how a state sequence continues: its entry state's name and a function that sets where it goes next
Exit = Callable[[str | None], None]
Emitted = tuple[str, Exit]


def substitution_key(child: str) -> str:
    return f"Child_{child}Arn"


@dataclass(frozen=True)
class TaskSettings:
    """What the emitter needs to know about one task."""

    task_id: str
    max_attempts: int
    base_delay: float
    backoff_rate: float
    max_delay: float
    jitter: bool
    timeout_seconds: int
    foreach: Any = None  # udop.spec.models.ForEach | None
    retry_on: tuple[str, ...] | None = None  # the policy's error names; None: every retryable one
    #: the file load run inside this transform's Task state, as one query (docs/compiler.md, "Fused")
    fused: str | None = None
    engine: str = "duckdb"  # spark / athena: the SQL runs on EMR Serverless / Athena (docs/engines.md)


class Emitter:
    """Builds one state machine's definition; a fresh one per machine (state names are per machine)."""

    def __init__(self, *, pipeline: str, version: int, tasks: dict[str, TaskSettings], root: bool,
                 map_mode: str, inline_max_items: int, runner_key: str, catch: bool = True) -> None:
        self.catch = catch
        self.pipeline = pipeline
        self.version = version
        self.tasks = tasks
        self.root = root
        self.map_mode = map_mode
        self.inline_max_items = inline_max_items
        self.runner = "${" + runner_key + "}"
        self.parallels = 0
        self.uses_fail = False

    # -- paths every Task reads -------------------------------------------------------------------
    @property
    def execution_path(self) -> str:
        """The run's (root) execution id: children get it in their input."""
        return "$$.Execution.Id" if self.root else "$$.Execution.Input.root_execution"

    def machine(self, node: AnyNode, comment: str) -> dict[str, Any]:
        start, states = self.scope(node, top=True)
        if self.uses_fail:
            states.update(_fail_states())
        return {"Comment": comment, "StartAt": start, "States": states}

    # -- scopes -------------------------------------------------------------------------------------
    def scope(self, node: AnyNode, *, top: bool) -> tuple[str, dict[str, Any]]:
        items = list(node.items) if isinstance(node, Series) else [node]
        states: dict[str, Any] = {}
        entries: list[str] = []
        exits: list[Exit] = []
        for item in items:
            entry, exit_ = self.emit(item, states, top)
            entries.append(entry)
            exits.append(exit_)
        for i, exit_ in enumerate(exits):
            exit_(entries[i + 1] if i + 1 < len(entries) else None)
        return entries[0], states

    def _on_failure(self, state: dict[str, Any], top: bool) -> None:
        """Where a recorded failure goes: the Fail state at the top, the branch's end inside one."""
        if top:
            self.uses_fail = True
            state["Next"] = FAIL_STATE
        else:
            state["End"] = True

    def _guard(self, state: dict[str, Any], name: str, task: str, states: dict[str, Any], top: bool) -> None:
        """Catch every error of ``state`` into a record of the failure (when catching is on)."""
        if self.catch:
            state["Catch"] = self._catch(f"{name} failed")
            self._record(f"{name} failed", task, states, top)

    def _catch(self, target: str) -> list[dict[str, Any]]:
        return [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.failure", "Next": target}]

    def _record(self, name: str, task: str, states: dict[str, Any], top: bool) -> None:
        """The Pass state that records which task failed, with the error and cause it gave."""
        if top:
            cause = {"Cause.$": "$.failure.Cause"}
        else:
            # inside a Parallel every failed branch carries its record out; a fixed-size cause keeps
            # that bounded however many branches fail together (the full cause is in the task's
            # TaskFailed event and in its attempt record)
            cause = {"Cause.$": f"States.Format('{{}} in task {task}; its message is in the task record', "
                                "$.failure.Error)"}
        state = {"Type": "Pass", "Parameters": {"task": task, "Error.$": "$.failure.Error", **cause},
                 "ResultPath": "$.failure"}
        self._on_failure(state, top)
        states[name] = state

    @staticmethod
    def _chain(state: dict[str, Any]) -> Exit:
        def connect(nxt: str | None) -> None:
            if nxt is None:
                state["End"] = True
            else:
                state["Next"] = nxt
        return connect

    def emit(self, node: AnyNode, states: dict[str, Any], top: bool) -> Emitted:
        if isinstance(node, Step):
            settings = self.tasks[node.task_id]
            if settings.foreach is not None:
                return self._map(settings, states, top)
            return self._task(settings, states, top)
        if isinstance(node, ChildCall):
            return self._child(node, states, top)
        if isinstance(node, Parallel):
            return self._parallel(node, states, top)
        # a Series inside a Series never happens (the scheduler flattens); a Series as a whole
        # scope is handled by scope(); here it can only come from a ChildCall body at the top
        raise AssertionError(f"unexpected nested {type(node).__name__}")

    # -- states ------------------------------------------------------------------------------------
    def payload(self, task_id: str, *, run: str = "$$.Execution.Input.run",
                execution: str | None = None) -> dict[str, Any]:
        return {"run.$": run, "pipeline": self.pipeline, "version": self.version, "task_id": task_id,
                "execution.$": execution or self.execution_path, "attempt.$": "$$.State.RetryCount"}

    def _retry(self, s: TaskSettings) -> list[dict[str, Any]]:
        """The task's retry policy as ``Retry`` rules matching what ``udop.errors.classify`` and the
        policy's ``retry_on`` decide locally (``States.ALL`` must be alone and last)."""
        if s.max_attempts <= 1:
            return [dict(LAMBDA_TRANSIENT_RETRY)]
        # Step Functions' shortest interval is 1 s (a listed difference: docs/executors.md)
        interval = max(1, math.ceil(s.base_delay))
        backoff: dict[str, Any] = {"IntervalSeconds": interval, "BackoffRate": float(s.backoff_rate),
                                   "MaxAttempts": s.max_attempts - 1,
                                   "MaxDelaySeconds": max(interval, math.ceil(s.max_delay))}
        if s.jitter:
            backoff["JitterStrategy"] = "FULL"
        if s.retry_on is not None:
            names = [*s.retry_on, *(STATES_ALIASES[n] for n in s.retry_on if n in STATES_ALIASES)]
            return [{"ErrorEquals": names, **backoff}, dict(LAMBDA_TRANSIENT_RETRY)]
        return [dict(NOT_RETRIED_RULE), dict(LAMBDA_TRANSIENT_RETRY),
                {"ErrorEquals": ["States.ALL"], **backoff}]

    def _invoke(self, s: TaskSettings, payload: dict[str, Any]) -> dict[str, Any]:
        return {"Type": "Task", "Resource": LAMBDA_INVOKE,
                "Parameters": {"FunctionName": self.runner, "Payload": payload},
                "TimeoutSeconds": s.timeout_seconds, "Retry": self._retry(s)}

    def _task(self, s: TaskSettings, states: dict[str, Any], top: bool) -> Emitted:
        if s.engine in ENGINE_SUBSTITUTIONS:
            return self._engine_task(s, states, top)
        name = s.task_id
        payload = self.payload(s.task_id)
        if s.fused is not None:
            # one invocation runs the transform and its file load as one query; each keeps its own
            # result and record (the runner writes both, the run events split the attempts)
            payload["fused"] = s.fused
        state = self._invoke(s, payload)
        if s.fused is not None:
            state = {"Comment": f"{s.task_id} fused with its load {s.fused}", **state}
        # the runner's answer (a manifest) is dropped: downstream tasks read it from S3 themselves
        state["ResultPath"] = None
        states[name] = state
        self._guard(state, s.task_id, s.task_id, states, top)
        return name, self._chain(state)

    def _engine_task(self, s: TaskSettings, states: dict[str, Any], top: bool) -> Emitted:
        """A task whose SQL runs on Spark (EMR Serverless) or Athena: three states.

        ``<task>`` asks the runner to *prepare* (record the attempt, write the job's spec with this run's
        input and output locations, answer the job's parameters into ``$.engine.job``); ``<task> job``
        runs it with the ``.sync`` integration (Step Functions waits for the job run or query); ``<task>
        record`` asks the runner to *finish* (row counts from the output's Parquet footers, lineage,
        cost: EMR vCPU-hours or Athena bytes scanned). The job state carries the task's Retry and
        TimeoutSeconds; a failure anywhere is caught into the task's failure record as for any task.
        """
        name = s.task_id
        extra = {"glue_database": "${GlueDatabase}"} if s.engine == "athena" else {}
        prepare = self._invoke(s, {**self.payload(s.task_id), "engine_phase": "prepare", **extra})
        prepare.update(ResultSelector={"job.$": "$.Payload"}, ResultPath="$.engine", Next=f"{name} job")
        states[name] = prepare
        self._guard(prepare, name, s.task_id, states, top)
        job: dict[str, Any]
        if s.engine == "spark":
            job = {"Type": "Task", "Resource": EMR_SERVERLESS_RUN, "Parameters": {
                "ApplicationId": "${EmrApplicationId}", "ExecutionRoleArn": "${EmrJobRoleArn}",
                "Name.$": "$.engine.job.name", "ClientToken.$": "States.UUID()",
                "JobDriver": {"SparkSubmit": {
                    "EntryPoint": "${SparkEntryPoint}",
                    "EntryPointArguments.$": "States.Array($.engine.job.spec_uri)"}}}}
            # the job run's answer is kept whole (a few hundred bytes; its shape differs between the
            # start and the .sync answer): the record call reads its id and asks EMR for the billing
        else:
            job = {"Type": "Task", "Resource": ATHENA_QUERY, "Parameters": {
                "QueryString.$": "$.engine.job.query", "WorkGroup": "${AthenaWorkGroup}",
                "ClientRequestToken.$": "States.UUID()",
                "QueryExecutionContext": {"Database": "${GlueDatabase}"}},
                "ResultSelector": {"query_execution_id.$": "$.QueryExecution.QueryExecutionId",
                                   "bytes_scanned.$": "$.QueryExecution.Statistics.DataScannedInBytes"}}
        job.update(TimeoutSeconds=s.timeout_seconds, Retry=self._retry(s), ResultPath="$.engine.run",
                   Next=f"{name} record")
        states[f"{name} job"] = job
        self._guard(job, f"{name} job", s.task_id, states, top)
        finish = self._invoke(s, {**self.payload(s.task_id), "engine_phase": "finish",
                                  "job.$": "$.engine.job", "job_run.$": "$.engine.run"})
        finish["TimeoutSeconds"] = min(s.timeout_seconds, 900)
        finish["ResultPath"] = None
        states[f"{name} record"] = finish
        self._guard(finish, f"{name} record", s.task_id, states, top)
        return name, self._chain(finish)

    def _parallel(self, node: Parallel, states: dict[str, Any], top: bool) -> Emitted:
        self.parallels += 1
        name = f"Parallel {self.parallels}"
        branches = []
        for branch in node.branches:
            start, sub = self.scope(branch, top=False)
            branches.append({"StartAt": start, "States": sub})
        if not self.catch:
            # a branch's failure fails the Parallel and the execution right there
            plain: dict[str, Any] = {"Type": "Parallel", "Branches": branches, "InputPath": None,
                                     "ResultPath": None}
            states[name] = plain
            return name, self._chain(plain)
        check, failed = f"{name} ok?", f"{name} failed"
        states[name] = {"Type": "Parallel", "Branches": branches,
                        # branches start from {} and end with {} or {"failure": ...}: the result is
                        # one small entry per failed branch, whatever the fan-in
                        "InputPath": None,
                        "ResultSelector": {"failures.$": "$[*].failure"},
                        "ResultPath": "$.branches", "Next": check}
        choice: dict[str, Any] = {"Type": "Choice", "Choices": [
            {"Variable": "$.branches.failures[0]", "IsPresent": True, "Next": failed}]}
        states[check] = choice
        record = {"Type": "Pass", "InputPath": "$.branches.failures[0]", "ResultPath": "$.failure"}
        self._on_failure(record, top)
        states[failed] = record

        def connect(nxt: str | None) -> None:
            if nxt is None:
                done = f"{name} done"
                states[done] = {"Type": "Succeed"}
                choice["Default"] = done
            else:
                choice["Default"] = nxt
        return name, connect

    def _child(self, node: ChildCall, states: dict[str, Any], top: bool) -> Emitted:
        name = f"Run {node.name}"
        state = {"Type": "Task", "Resource": START_CHILD,
                 "Parameters": {"StateMachineArn": "${" + substitution_key(node.name) + "}",
                                "Name.$": "States.UUID()",
                                "Input": {"run.$": "$$.Execution.Input.run",
                                          "root_execution.$": self.execution_path,
                                          "AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID.$": "$$.Execution.Id"}},
                 "ResultSelector": {"status.$": "$.Status"}, "ResultPath": None}
        states[name] = state
        self._guard(state, name, node.name, states, top)
        return name, self._chain(state)

    # -- foreach -------------------------------------------------------------------------------------
    def _key(self, task_id: str, suffix: str = "") -> str:
        """Intrinsic for an S3 key under a task's output prefix ``runs/<pipeline>/<run>/<task>/``."""
        return (f"States.Format('{{}}runs/{self.pipeline}/{{}}/{task_id}/{suffix}', "
                "$$.Execution.Input.run.data_prefix, $$.Execution.Input.run.run_id)")

    def _map(self, s: TaskSettings, states: dict[str, Any], top: bool) -> Emitted:
        fe = s.foreach
        name = s.task_id
        inline = self.map_mode == "inline"
        item_value = "$$.Map.Item.Value"
        inner_payload = self.payload(s.task_id, run="$.run", execution="$.execution")
        inner_payload["item.$"] = "$.item"
        inner = self._invoke(s, inner_payload)
        # each item answers with a few bytes, so the Map's result stays small for any item count
        inner["ResultSelector"] = {"status.$": "$.StatusCode"}
        inner["End"] = True
        item_name = f"{name} item"
        processor: dict[str, Any] = {"StartAt": item_name, "States": {item_name: inner}}
        state: dict[str, Any] = {"Type": "Map", "MaxConcurrency": fe.max_concurrency}
        entry = name
        if inline:
            listing = f"{name} list"
            check = f"{name} listed?"
            too_many = f"{name} too many items"
            if fe.over == "partitions":
                # the partitions the upstream's runner wrote to `_partitions.json` (as the LocalExecutor
                # finds them), handed over by the runner: at most inline_max_items keys, else truncated
                list_call = self._invoke(s, {**self.payload(s.task_id), "list": True,
                                             "max_items": self.inline_max_items})
                list_call.update(ResultSelector={"keys.$": "$.Payload.keys",
                                                 "truncated.$": "$.Payload.truncated"},
                                 ResultPath="$.items", Next=check)
                states[listing] = list_call
            else:
                params = {"Bucket.$": "$$.Execution.Input.run.data_bucket",
                          "Prefix.$": self._key(fe.input), "MaxKeys": self.inline_max_items}
                states[listing] = {"Type": "Task", "Resource": S3_LIST, "Parameters": params,
                                   "ResultSelector": {"keys.$": "$.Contents[*].Key",
                                                      "truncated.$": "$.IsTruncated"},
                                   "ResultPath": "$.items", "Next": check}
            over = {"Variable": "$.items.truncated", "BooleanEquals": True}
            if self.catch:
                states[listing]["Catch"] = self._catch(f"{name} failed")
            states[check] = {"Type": "Choice", "Choices": [{**over, "Next": too_many}], "Default": name}
            cause = (f"task {s.task_id!r}: its input {fe.input!r} has more than {self.inline_max_items} "
                     f"{fe.over}, the most an inline Map lists; compile with map_mode='distributed'")
            if self.catch:
                states[too_many] = {"Type": "Pass", "Result": {"Error": "udop.FatalError", "Cause": cause},
                                    "ResultPath": "$.failure", "Next": f"{name} failed"}
            else:
                states[too_many] = {"Type": "Fail", "Error": "udop.FatalError", "Cause": cause}
            processor["ProcessorConfig"] = {"Mode": "INLINE"}
            state["ItemsPath"] = "$.items.keys"
            # replaces the item list with its length, so the listing does not travel on
            state["ResultSelector"] = {"count.$": "States.ArrayLength($)"}
            state["ResultPath"] = "$.items"
            entry = listing
        else:
            processor["ProcessorConfig"] = {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
            if fe.over == "partitions":
                # the upstream task writes `_partitions.json` (a JSON array of partition prefixes)
                state["ItemReader"] = {"Resource": "arn:aws:states:::s3:getObject",
                                       "ReaderConfig": {"InputType": "JSON"},
                                       "Parameters": {"Bucket.$": "$$.Execution.Input.run.data_bucket",
                                                      "Key.$": self._key(fe.input, "_partitions.json")}}
            else:
                state["ItemReader"] = {"Resource": "arn:aws:states:::s3:listObjectsV2",
                                       "Parameters": {"Bucket.$": "$$.Execution.Input.run.data_bucket",
                                                      "Prefix.$": self._key(fe.input)}}
                item_value = "$$.Map.Item.Value.Key"
            state["ResultWriter"] = {"Resource": "arn:aws:states:::s3:putObject",
                                     "Parameters": {"Bucket.$": "$$.Execution.Input.run.data_bucket",
                                                    "Prefix.$": self._key(s.task_id, "_map")}}
            state["ResultPath"] = None
        state["ItemSelector"] = {"run.$": "$$.Execution.Input.run", "execution.$": self.execution_path,
                                 "item": {"key.$": item_value, "index.$": "$$.Map.Item.Index"}}
        state["ItemProcessor"] = processor
        states[name] = state
        self._guard(state, name, s.task_id, states, top)
        # the items' results are combined into the task's one result object (downstream tasks, run
        # events and lineage read it) by one more runner call; nothing about the items is in the state
        combine_name = f"{name} combine"
        combine = self._invoke(s, {**self.payload(s.task_id), "finalize": True})
        combine["ResultPath"] = None
        state["Next"] = combine_name
        states[combine_name] = combine
        self._guard(combine, s.task_id, s.task_id, states, top)
        return entry, self._chain(combine)
