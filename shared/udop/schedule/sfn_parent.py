"""Backfills on Step Functions as one parent execution (``udop backfill --executor stepfunctions``,
``POST /pipelines/{name}/backfills`` on a Step Functions server).

The parent is an execution of the state machine ``udop-<pipeline>-Backfill`` (created or updated
when a backfill starts; its definition is the same for every pipeline: what to start comes in its
input). A Distributed Map reads the logical dates from a JSON file in the data bucket
(``runs/<pipeline>/_backfills/<id>/dates-<n>.json``) and, at most ``max_parallel`` at a time
(``MaxConcurrencyPath``), runs one execution of the pipeline's state machine per date with
``states:startExecution.sync:2``, named after the date's run id. Each date runs in a child workflow
of the Map Run, so the parent's history stays a few dozen events whatever the number of dates; the
only per-date cost in the parent is one word in the Map's output (``succeeded``/``failed``, about 12
bytes: 10,000 dates, the backfill limit, are 120 KB of the 256 KiB a state may carry).

A failed date does not stop the others (its Task's Catch makes it ``failed``); the parent fails at the
end (``udop.BackfillFailed``) if any date did. The backfill stays one unit in the metadata store (its
row, its dates and their run ids, written before the parent starts):

* list/show: ``udop backfills``, ``GET /backfills`` (the runs are recorded by the run-events function
  from the child executions' status events, as any run; the parent's own status events set the
  backfill's state: ``record_parent_event``);
* cancel: the row is marked cancelled, the parent execution stopped, and the dates' running
  executions stopped too (``stop_parent_backfill``; explicit, not left to the service);
* resume: a new parent execution ``<id>--resume-<n>`` over the dates that did not succeed: a failed
  or cancelled run goes on as ``<run_id>--redrive-<k>`` (the same run: the task runner returns the
  results of the tasks that already succeeded, so it goes on from its failed task), a date without a
  run gets one. (``RedriveExecution`` of the parent itself would only re-run its final Fail state.)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from udop.errors import InputError
from udop.schedule.backfill import BackfillRunner
from udop.schedule.store import BackfillRecord, ScheduleStore

__all__ = [
    "EXECUTOR",
    "PARENT_SUFFIX",
    "ParentBackfillRunner",
    "is_parent_machine",
    "parent_definition",
    "parent_machine_name",
    "record_parent_event",
    "stop_parent_backfill",
]

log = logging.getLogger(__name__)

#: the state machine of a pipeline's backfills is ``udop-<pipeline>-Backfill``: a pipeline name has no
#: capital letters, so no pipeline's machine ``udop-<name>`` is ever a parent (the run-events function
#: tells them apart by this suffix), and the ``udop-*`` permissions of the platform cover it
PARENT_SUFFIX = "-Backfill"
RESUME_SEPARATOR = "--resume-"
#: ``backfills.executor`` of a backfill run as a parent execution
EXECUTOR = "stepfunctions-parent"
START_SYNC = "arn:aws:states:::states:startExecution.sync:2"

_STATE_OF_STATUS = {
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "TIMED_OUT": "failed",
    "ABORTED": "cancelled",
    "RUNNING": "running",
    "PENDING_REDRIVE": "failed",
}


def parent_machine_name(pipeline: str) -> str:
    return f"udop-{pipeline}{PARENT_SUFFIX}"


def is_parent_machine(arn_or_name: str) -> bool:
    """A backfill parent's machine (or a Map Run's, ``...:stateMachine:udop-p-Backfill/Dates:id``)."""
    name = arn_or_name.split(":stateMachine:", 1)[-1].split("/", 1)[0]
    return name.startswith("udop-") and name.endswith(PARENT_SUFFIX)


def backfill_of_execution(name: str) -> str:
    return name.split(RESUME_SEPARATOR, 1)[0]


def parent_definition() -> dict[str, Any]:
    """The parent's ASL: the same for every pipeline (its input says what to start)."""
    run_date = {
        "Type": "Task",
        "Resource": START_SYNC,
        "Parameters": {
            "StateMachineArn.$": "$.state_machine_arn",
            "Name.$": "$.date.name",
            "Input": {
                "run.$": "States.JsonMerge($.run, $.date.run, false)",
                "AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID.$": "$$.Execution.Id",
            },
        },
        "ResultPath": None,
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": None, "Next": "Date failed"}],
        "Next": "Date succeeded",
    }
    return {
        "Comment": "udop backfill: one execution of the pipeline's state machine per logical date",
        "StartAt": "Dates",
        "States": {
            "Dates": {
                "Type": "Map",
                "ItemReader": {
                    "Resource": "arn:aws:states:::s3:getObject",
                    "ReaderConfig": {"InputType": "JSON"},
                    "Parameters": {"Bucket.$": "$.dates.bucket", "Key.$": "$.dates.key"},
                },
                "MaxConcurrencyPath": "$.max_parallel",
                "ItemSelector": {
                    "date.$": "$$.Map.Item.Value",
                    "run.$": "$.run",
                    "state_machine_arn.$": "$.state_machine_arn",
                },
                "ItemProcessor": {
                    "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                    "StartAt": "Run date",
                    "States": {
                        "Run date": run_date,
                        "Date succeeded": {"Type": "Pass", "Result": "succeeded", "End": True},
                        "Date failed": {"Type": "Pass", "Result": "failed", "End": True},
                    },
                },
                "ResultPath": "$.outcomes",
                "Next": "Check",
            },
            "Check": {
                "Type": "Pass",
                "Parameters": {"failed.$": "States.ArrayContains($.outcomes, 'failed')"},
                "ResultPath": "$.check",
                "Next": "Any date failed?",
            },
            "Any date failed?": {
                "Type": "Choice",
                "Choices": [
                    {"Variable": "$.check.failed", "BooleanEquals": True, "Next": "Some dates failed"}
                ],
                "Default": "All dates succeeded",
            },
            "Some dates failed": {
                "Type": "Fail",
                "Error": "udop.BackfillFailed",
                "Cause": "at least one logical date did not succeed; resume the backfill",
            },
            "All dates succeeded": {"Type": "Succeed"},
        },
    }


def ensure_parent_machine(sfn: Any, pipeline: str, role_arn: str) -> str:
    """Create ``udop-<pipeline>--backfill`` or bring its definition up to date; returns its ARN."""
    from udop.aws.deployer import find_state_machine

    name = parent_machine_name(pipeline)
    definition = json.dumps(parent_definition())
    arn = find_state_machine(sfn, name)
    if arn is None:
        try:
            return str(
                sfn.create_state_machine(name=name, definition=definition, roleArn=role_arn, type="STANDARD")[
                    "stateMachineArn"
                ]
            )
        except sfn.exceptions.StateMachineAlreadyExists:  # created by another backfill meanwhile
            arn = find_state_machine(sfn, name)
            assert arn is not None
    if sfn.describe_state_machine(stateMachineArn=arn)["definition"] != definition:
        sfn.update_state_machine(stateMachineArn=arn, definition=definition, roleArn=role_arn)
    return str(arn)


def dates_key(pipeline: str, backfill_id: str, attempt: int) -> str:
    return f"runs/{pipeline}/_backfills/{backfill_id}/dates-{attempt}.json"


def _executions_by_run(sfn: Any, sm_arn: str) -> dict[str, list[dict[str, Any]]]:
    from udop.aws.events import run_id_of_execution

    out: dict[str, list[dict[str, Any]]] = {}
    for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=sm_arn):
        for e in page["executions"]:
            out.setdefault(run_id_of_execution(e["name"]), []).append(e)
    return out


def parent_executions(sfn: Any, pipeline: str, backfill_id: str) -> list[dict[str, Any]]:
    """The backfill's parent executions, oldest first (none when its machine does not exist)."""
    from udop.aws.deployer import find_state_machine

    arn = find_state_machine(sfn, parent_machine_name(pipeline))
    if arn is None:
        return []
    found = [
        e
        for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=arn)
        for e in page["executions"]
        if backfill_of_execution(e["name"]) == backfill_id
    ]
    return sorted(found, key=lambda e: e["startDate"])


class ParentBackfillRunner(BackfillRunner):
    """``BackfillRunner`` whose dates run under one parent execution on Step Functions."""

    def __init__(
        self,
        store: Any,
        pipeline: Any,
        *,
        sfn: Any,
        s3: Any,
        role_arn: str,
        data_bucket: str,
        poll: float = 5.0,
        policy: Any = None,
    ) -> None:
        super().__init__(store, pipeline, policy=policy)
        self.check_modules = False  # the task runner checks them, as for any run on Step Functions
        self.sfn, self.s3 = sfn, s3
        self.role_arn, self.data_bucket = role_arn, data_bucket
        self.poll = poll

    def create(
        self,
        *,
        start: datetime,
        end: datetime,
        step: str,
        max_parallel: int,
        params: Mapping[str, Any] | None = None,
        executor: str = EXECUTOR,
    ) -> BackfillRecord:
        from udop.aws.runs import run_context

        # refused before anything is recorded: the pipeline must be deployed as this definition
        run_context(self.pipeline, params or {}, store=self.store, sfn=self.sfn, data_bucket=self.data_bucket)
        return super().create(
            start=start, end=end, step=step, max_parallel=max_parallel, params=params, executor=EXECUTOR
        )

    def start(self, backfill_id: str, *, resume: bool = False) -> str:
        """Start the parent execution over every date that has not succeeded; returns its ARN."""
        from udop.aws.events import REDRIVE_SEPARATOR
        from udop.aws.s3 import put_json
        from udop.executor.local import new_run_id

        record = self._record(backfill_id)
        if resume:
            if record.state == "succeeded":
                raise InputError(f"backfill {backfill_id!r} already succeeded; nothing to resume")
            parents = parent_executions(self.sfn, record.pipeline, backfill_id)
            if any(e["status"] == "RUNNING" for e in parents):
                raise InputError(f"backfill {backfill_id!r} is still running")
        elif record.state != "running":
            raise InputError(f"backfill {backfill_id!r} has ended ({record.state}); resume it instead")
        sm_arn, base = self._context(record)
        existing = _executions_by_run(self.sfn, sm_arn)
        items = []
        for logical, attached in record.dates.items():
            if attached is not None and record.run_states.get(attached) == "succeeded":
                continue
            run_id = name = attached or new_run_id()
            if attached is None:
                self.ticks.attach_run(record.id, logical, run_id)
            elif run_id in existing:  # started before: the same run goes on from its failed task
                redrives = [e for e in existing[run_id] if REDRIVE_SEPARATOR in e["name"]]
                name = f"{run_id}{REDRIVE_SEPARATOR}{len(redrives) + 1}"
            items.append({"name": name, "run": {"run_id": run_id, "logical_date": logical.isoformat()}})
        if not items:
            raise InputError(f"backfill {backfill_id!r}: every date has succeeded")
        previous = parent_executions(self.sfn, record.pipeline, backfill_id)
        key = dates_key(record.pipeline, backfill_id, len(previous) + 1)
        put_json(self.s3, self.data_bucket, key, items)
        parent = ensure_parent_machine(self.sfn, record.pipeline, self.role_arn)
        name = backfill_id if not previous else f"{backfill_id}{RESUME_SEPARATOR}{len(previous)}"
        if resume:
            self.ticks.set_backfill_state(backfill_id, "running")
        body = {
            "backfill_id": backfill_id,
            "state_machine_arn": sm_arn,
            "max_parallel": record.max_parallel,
            "dates": {"bucket": self.data_bucket, "key": key},
            "run": base,
        }
        resp = self.sfn.start_execution(stateMachineArn=parent, name=name, input=json.dumps(body))
        return str(resp["executionArn"])

    def _record(self, backfill_id: str) -> BackfillRecord:
        record = self.ticks.get_backfill(backfill_id)
        if record is None:
            raise InputError(f"no backfill {backfill_id!r} (see `udop backfills list`)")
        if record.pipeline != self.pipeline.name:
            raise InputError(
                f"backfill {backfill_id!r} is of pipeline {record.pipeline!r}, not {self.pipeline.name!r}"
            )
        return record

    def _context(self, record: BackfillRecord) -> tuple[str, dict[str, Any]]:
        from udop.aws.runs import run_context

        sm_arn, base = run_context(
            self.pipeline,
            record.params,
            store=self.store,
            sfn=self.sfn,
            data_bucket=self.data_bucket,
            trigger="backfill",
        )
        return sm_arn, base

    def run(self, backfill_id: str, *, resume: bool = False) -> BackfillRecord:
        """Start the parent and follow it to its end (Ctrl-C leaves it running: it needs no client)."""
        arn = self.start(backfill_id, resume=resume)
        return self.follow(backfill_id, arn)

    def follow(self, backfill_id: str, execution_arn: str) -> BackfillRecord:
        """Poll the parent until it ends; mirror the dates' runs and the backfill's state."""
        while (desc := self.sfn.describe_execution(executionArn=execution_arn))["status"] == "RUNNING":
            time.sleep(self.poll)
        return sync_parent(self.store, self.sfn, backfill_id, desc)


def sync_parent(store: Any, sfn: Any, backfill_id: str, desc: Mapping[str, Any]) -> BackfillRecord:
    """The dates' runs brought up to date from their executions, and the backfill's state from the
    parent execution ``desc``."""
    from udop.aws.deployer import find_state_machine, state_machine_name
    from udop.aws.events import sync_run

    ticks = ScheduleStore(store)
    record = ticks.get_backfill(backfill_id)
    if record is None:
        raise InputError(f"no backfill {backfill_id!r}")
    sm_arn = find_state_machine(sfn, state_machine_name(record.pipeline))
    if sm_arn is not None:
        for run_id in record.dates.values():
            if run_id is not None:
                sync_run(store, sfn, state_machine_arn=sm_arn, run_id=run_id)
    _set_state(ticks, backfill_id, str(desc["status"]), desc.get("error"), desc.get("cause"))
    final = ticks.get_backfill(backfill_id)
    assert final is not None
    return final


def _set_state(ticks: ScheduleStore, backfill_id: str, status: str, error: Any, cause: Any) -> None:
    state = _STATE_OF_STATUS.get(status, "running")
    if state == "running":
        return
    detail = (
        None
        if state == "succeeded"
        else f"parent execution {status.lower()}" + (f": {error}: {cause}" if error else "")
    )
    ticks.set_backfill_state(backfill_id, state, error=detail)


def record_parent_event(event: Mapping[str, Any], store: Any, sfn: Any = None) -> BackfillRecord | None:
    """The run-events function's part: a parent execution's status change sets its backfill's state.
    With ``sfn``, the event of a parent a resume has followed since (``<id>--resume-<n+1>`` exists; a
    late or redelivered event) is ignored."""
    detail = event.get("detail") or {}
    arn = str(detail.get("executionArn", ""))
    name = str(detail.get("name") or arn.rsplit(":", 1)[-1])
    ticks = ScheduleStore(store)
    backfill_id = backfill_of_execution(name)
    if ticks.get_backfill(backfill_id) is None:
        log.info("no backfill %s in the metadata store; its parent's event is ignored", backfill_id)
        return None
    if sfn is not None and arn:
        attempt = int(name.split(RESUME_SEPARATOR, 1)[1]) if RESUME_SEPARATOR in name else 0
        later = arn[: len(arn) - len(name)] + f"{backfill_id}{RESUME_SEPARATOR}{attempt + 1}"
        try:
            sfn.describe_execution(executionArn=later)
        except sfn.exceptions.ExecutionDoesNotExist:
            pass
        else:
            log.info("backfill %s: %s was resumed since; its event is ignored", backfill_id, name)
            return ticks.get_backfill(backfill_id)
    _set_state(ticks, backfill_id, str(detail.get("status")), detail.get("error"), detail.get("cause"))
    return ticks.get_backfill(backfill_id)


def stop_parent_backfill(
    store: Any, sfn: Any, backfill_id: str, *, reason: str = "cancelled"
) -> BackfillRecord:
    """Cancel a parent backfill as one unit: the row is marked cancelled, the running parent
    execution stopped, and every running execution of its dates' runs stopped."""
    from udop.aws.deployer import find_state_machine, state_machine_name
    from udop.schedule.backfill import cancel_backfill

    record = cancel_backfill(store, backfill_id)
    for parent in parent_executions(sfn, record.pipeline, backfill_id):
        if parent["status"] == "RUNNING":
            _stop(sfn, parent["executionArn"], reason)
    sm_arn = find_state_machine(sfn, state_machine_name(record.pipeline))
    if sm_arn is not None:
        runs = {r for r in record.dates.values() if r is not None}
        for run_id, executions in _executions_by_run(sfn, sm_arn).items():
            if run_id in runs:
                for e in executions:
                    if e["status"] == "RUNNING":
                        _stop(sfn, e["executionArn"], reason)
    final = ScheduleStore(store).get_backfill(backfill_id)
    assert final is not None
    return final


def _stop(sfn: Any, arn: str, reason: str) -> None:
    try:
        sfn.stop_execution(executionArn=arn, error="udop.Cancelled", cause=reason)
    except Exception as exc:  # ended meanwhile: what it became is in its status
        log.warning("stopping %s: %s", arn, exc)
