"""``trigger: {after: {pipeline: UPSTREAM}}`` on AWS: a run of the upstream state machine that succeeds
starts the pipeline.

At deploy time (``udop deploy``, the deployer function, ``POST /pipelines`` on Step Functions, all
through ``udop.aws.deployer.deploy_definition``; and the CDK app for the pipelines in its folder)
``sync_after_trigger`` keeps an EventBridge rule ``udop-<pipeline>-after`` on the default bus: the
"Step Functions Execution Status Change" events of the upstream state machine ``udop-<upstream>``
with status ``SUCCEEDED``. Its target is the starter (the run-events Lambda,
``UDOP_TRIGGER_FUNCTION_ARN``, as for S3 triggers), which gets the event wrapped with what to start
(an input transformer) and calls ``start_from_after_event``: one execution of the downstream state
machine named after a hash of (downstream, upstream, upstream run id). Step Functions refuses a
second execution of one name, and the starter looks the name up first: one downstream run per
upstream run, however often EventBridge delivers the event (and a redriven upstream run that
finally succeeds still counts once).

A definition that drops the trigger (or a pipeline deleted through the API) loses the rule.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from udop.schedule.expr import schedule_name
from udop.schedule.s3events import delete_rule

__all__ = [
    "AFTER_MARKER",
    "after_trigger_of",
    "check_after_trigger",
    "delete_after_trigger",
    "event_pattern",
    "execution_name",
    "rule_name",
    "start_from_after_event",
    "sync_after_trigger",
    "target_request",
    "trigger_input",
    "upstream_state_machine_arn",
]

#: the key in the starter's event that marks an after-trigger (the run-events Lambda dispatches on it)
AFTER_MARKER = "udop_after_trigger"
TARGET_ID = "udop-starter"
STATUS_CHANGE = "Step Functions Execution Status Change"


def rule_name(pipeline: str) -> str:
    """``udop-<pipeline>-after`` (hashed when longer than a rule name may be, 64)."""
    return schedule_name(f"{pipeline}-after")


def after_trigger_of(pipeline: Any) -> str | None:
    """The upstream pipeline's name when ``pipeline`` has ``trigger: after:``."""
    trigger = pipeline.spec.trigger
    return trigger.after.pipeline if trigger is not None and trigger.after is not None else None


def upstream_state_machine_arn(state_machine_arn: str, upstream: str) -> str:
    """The upstream's state machine in the same account and region: ``...:stateMachine:udop-<upstream>``
    (it need not exist yet: the rule fires once it does)."""
    # the deployer's name for a pipeline's machine (udop.aws.deployer.state_machine_name), spelt out
    # here: the deployer imports this module
    return state_machine_arn.rsplit(":", 1)[0] + f":udop-{upstream}"


def event_pattern(upstream_arn: str) -> dict[str, Any]:
    """The rule's event pattern: the upstream state machine's executions that succeeded."""
    return {
        "source": ["aws.states"],
        "detail-type": [STATUS_CHANGE],
        "detail": {"status": ["SUCCEEDED"], "stateMachineArn": [upstream_arn]},
    }


def trigger_input(
    pipeline: Any, state_machine_arn: str, data_bucket: str, upstream_arn: str | None = None
) -> dict[str, Any]:
    """What the starter needs besides the event: the machines, the run's base input and the parameter
    that gets the upstream run id. ``ValueError`` when another required parameter has no default."""
    after = pipeline.spec.trigger.after
    params = pipeline.spec.params
    missing = [n for n, spec in params.items() if spec.is_required and n != after.param]
    if missing:
        raise ValueError(
            f"pipeline {pipeline.name!r}: an after-trigger cannot supply required parameter(s) "
            f"{', '.join(missing)}; give them defaults"
        )
    return {
        "pipeline": pipeline.name,
        "upstream": after.pipeline,
        "upstream_state_machine_arn": upstream_arn
        or upstream_state_machine_arn(state_machine_arn, after.pipeline),
        "state_machine_arn": state_machine_arn,
        "param": after.param,
        "run": {
            "params": {n: spec.default for n, spec in params.items() if not spec.is_required},
            "data_root": f"s3://{data_bucket}",
            "data_bucket": data_bucket,
            "data_prefix": "",
            "trigger": "trigger",
        },
    }


def target_request(function_arn: str, wrapped: dict[str, Any]) -> dict[str, Any]:
    """The rule's one target: the starter, given the wrapped spec and the whole event."""
    return {
        "Id": TARGET_ID,
        "Arn": function_arn,
        "InputTransformer": {
            "InputPathsMap": {},
            "InputTemplate": f'{{"{AFTER_MARKER}": {json.dumps(wrapped)}, "event": <aws.events.event>}}',
        },
        "RetryPolicy": {"MaximumEventAgeInSeconds": 3600 * 6, "MaximumRetryAttempts": 20},
    }


def _rule_exists(events: Any, name: str) -> bool:
    try:
        events.describe_rule(Name=name)
    except events.exceptions.ResourceNotFoundException:
        return False
    return True


def sync_after_trigger(target: Any, pipeline: Any, state_machine_arn: str) -> str:
    """Create, update or delete ``udop-<name>-after`` (``target``: a ``S3TriggerTarget``, the same
    starter and client); returns ``created|updated|deleted|none``."""
    upstream = after_trigger_of(pipeline)
    if upstream is None:
        return "deleted" if delete_after_trigger(target.events, pipeline.name) else "none"
    name = rule_name(pipeline.name)
    wrapped = trigger_input(pipeline, state_machine_arn, target.data_bucket)  # ValueError before any call
    existed = _rule_exists(target.events, name)
    target.events.put_rule(
        Name=name,
        EventPattern=json.dumps(event_pattern(wrapped["upstream_state_machine_arn"])),
        State="ENABLED",
        Description=f"udop: a succeeded run of {upstream} starts pipeline {pipeline.name}",
    )
    target.events.put_targets(Rule=name, Targets=[target_request(target.function_arn, wrapped)])
    return "updated" if existed else "created"


def check_after_trigger(pipeline: Any, source: str) -> None:
    """Deploy-time check (before anything is deployed): the run input can be built."""
    from udop.errors import SpecError

    if after_trigger_of(pipeline) is None:
        return
    try:
        trigger_input(pipeline, "arn:aws:states:r:0:stateMachine:udop-x", "-")
    except ValueError as exc:
        raise SpecError(str(exc), file=source, path="spec.trigger.after") from None


def delete_after_trigger(events: Any, pipeline: str) -> bool:
    """Delete ``udop-<pipeline>-after`` and its targets; False when there was none."""
    return delete_rule(events, rule_name(pipeline))


def execution_name(pipeline: str, upstream: str, upstream_run_id: str) -> str:
    """The downstream execution's name: one upstream run always gives the same one (<= 80 chars)."""
    return "after-" + hashlib.sha256(f"{pipeline}<-{upstream}/{upstream_run_id}".encode()).hexdigest()[:40]


def _json(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _logical_date(upstream_run: dict[str, Any], detail: dict[str, Any], event: dict[str, Any]) -> str:
    """The upstream run's logical date (a backfill downstream follows it date by date); else when the
    upstream execution started; else the event's time."""
    if upstream_run.get("logical_date"):
        return str(upstream_run["logical_date"])
    start = detail.get("startDate")
    if isinstance(start, int | float):  # milliseconds since the epoch in Step Functions' events
        return datetime.fromtimestamp(start / 1000, UTC).isoformat()
    when = event.get("time")
    if isinstance(when, int | float):
        return datetime.fromtimestamp(when, UTC).isoformat()
    return str(when or datetime.now(UTC).isoformat())


def start_from_after_event(payload: dict[str, Any], sfn: Any) -> dict[str, Any]:
    """The starter: one downstream execution per succeeded upstream run (``payload`` is what the
    rule's target sends)."""
    from udop.aws.events import run_id_of_execution

    spec = payload[AFTER_MARKER]
    event = payload["event"]
    detail = event.get("detail") or {}
    if (
        detail.get("status") != "SUCCEEDED"
        or detail.get("stateMachineArn") != spec["upstream_state_machine_arn"]
    ):
        return {"started": False, "reason": "not a succeeded execution of the upstream state machine"}
    upstream_arn = str(detail["executionArn"])
    upstream_input = _json(detail.get("input"))
    if not upstream_input:  # an input too large for the event is left out of it
        upstream_input = _json(sfn.describe_execution(executionArn=upstream_arn).get("input"))
    upstream_run = upstream_input.get("run") or {}
    upstream_run_id = str(
        upstream_run.get("run_id")
        or run_id_of_execution(detail.get("name") or upstream_arn.rsplit(":", 1)[-1])
    )
    name = execution_name(spec["pipeline"], spec["upstream"], upstream_run_id)
    run = dict(spec["run"])
    params = dict(run.get("params", {}))
    if spec.get("param"):
        params[spec["param"]] = upstream_run_id
    run.update(
        run_id=name,
        logical_date=_logical_date(upstream_run, detail, event),
        params=params,
        trigger_run={"pipeline": spec["upstream"], "run_id": upstream_run_id, "execution_arn": upstream_arn},
    )
    execution_arn = spec["state_machine_arn"].replace(":stateMachine:", ":execution:", 1) + f":{name}"
    already = {"started": False, "execution_name": name, "reason": "this upstream run already started one"}
    try:  # started already (a redelivered event, or the upstream run's redrive succeeding again)?
        sfn.describe_execution(executionArn=execution_arn)
    except sfn.exceptions.ExecutionDoesNotExist:
        pass
    else:
        return already
    try:  # two deliveries at once: the name lets only one execution exist
        resp = sfn.start_execution(
            stateMachineArn=spec["state_machine_arn"], name=name, input=json.dumps({"run": run})
        )
    except sfn.exceptions.ExecutionAlreadyExists:
        return already
    return {"started": True, "execution_name": name, "execution_arn": resp["executionArn"]}
