"""S3 uploads start runs on AWS: ``trigger: {files: {path: s3://bucket/prefix/, ...}}``.

At deploy time (``udop deploy``, the deployer function, ``POST /pipelines`` on Step Functions, all
through ``udop.aws.deployer.deploy_definition``) ``sync_s3_trigger`` turns the trigger into an
EventBridge rule ``udop-<pipeline>-files`` on the default bus: S3 "Object Created" events of the
bucket whose key starts with the prefix (and matches the pattern). The bucket's EventBridge
notifications are switched on (its other notification settings are kept). The rule's target is the
starter function (the run-events Lambda, ``UDOP_TRIGGER_FUNCTION_ARN``), which gets the event and
what to start (an input transformer wraps them) and calls ``start_from_s3_event``: one execution of
the pipeline's state machine named after a hash of bucket, key and version, which Step Functions
refuses to start twice: one run per object version, whatever EventBridge redelivers.

A definition that drops the trigger (or a pipeline deleted through the API) loses the rule.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from udop.schedule.expr import schedule_name

__all__ = ["S3TriggerTarget", "check_s3_trigger", "delete_rule", "delete_s3_trigger", "event_pattern",
           "execution_name",
           "rule_name", "s3_location", "s3_trigger_of", "start_from_s3_event", "sync_from_env",
           "sync_s3_trigger", "trigger_input"]

#: the key in the starter's event that marks an S3 trigger (the run-events Lambda dispatches on it)
MARKER = "udop_s3_trigger"
TARGET_ID = "udop-starter"


def rule_name(pipeline: str) -> str:
    """``udop-<pipeline>-files`` (hashed when longer than a rule name may be, 64)."""
    return schedule_name(f"{pipeline}-files")


def s3_location(path: str) -> tuple[str, str] | None:
    """``s3://bucket/prefix/`` -> (bucket, prefix); None for a local folder."""
    if not path.startswith("s3://"):
        return None
    bucket, _, prefix = path.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"trigger path {path!r} names no bucket; write s3://BUCKET/PREFIX/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"  # a folder, as for a local trigger: s3://b/in matches in/x.csv, not inbox/x.csv
    return bucket, prefix


def event_pattern(pipeline: Any) -> dict[str, Any]:
    """The rule's event pattern: Object Created in the bucket, under the prefix, matching the pattern
    (EventBridge ``wildcard``, in which ``*`` also crosses ``/``). ``ValueError`` for a glob
    EventBridge cannot express (``?``, ``[...]``)."""
    files = pipeline.spec.trigger.files
    location = s3_location(files.path)
    assert location is not None
    bucket, prefix = location
    if any(c in files.pattern for c in "?[]"):
        raise ValueError(f"trigger pattern {files.pattern!r}: an S3 trigger can only use '*' in its "
                         "pattern (EventBridge wildcard matching); write e.g. '*.csv'")
    key: list[dict[str, str]] = ([{"prefix": prefix}] if files.pattern in ("*", "**", "**/*")
                                 else [{"wildcard": prefix + files.pattern}])
    return {"source": ["aws.s3"], "detail-type": ["Object Created"],
            "detail": {"bucket": {"name": [bucket]}, "object": {"key": key}}}


def trigger_input(pipeline: Any, state_machine_arn: str, data_bucket: str) -> dict[str, Any]:
    """What the starter needs besides the event: the machine, the run's base input and the parameter
    that gets the object. ``ValueError`` when another required parameter has no default."""
    files = pipeline.spec.trigger.files
    params = pipeline.spec.params
    missing = [n for n, spec in params.items() if spec.is_required and n != files.param]
    if missing:
        raise ValueError(f"pipeline {pipeline.name!r}: an S3 trigger cannot supply required parameter(s) "
                         f"{', '.join(missing)}; give them defaults")
    return {
        "pipeline": pipeline.name,
        "state_machine_arn": state_machine_arn,
        "param": files.param,
        "run": {
            "params": {n: spec.default for n, spec in params.items() if not spec.is_required},
            "data_root": f"s3://{data_bucket}",
            "data_bucket": data_bucket,
            "data_prefix": "",
            "trigger": "s3",
        },
    }


def _target(pipeline: Any, state_machine_arn: str, target: S3TriggerTarget) -> dict[str, Any]:
    wrapped = json.dumps(trigger_input(pipeline, state_machine_arn, target.data_bucket))
    return {
        "Id": TARGET_ID,
        "Arn": target.function_arn,
        # <aws.events.event> is the whole event: the starter reads bucket, key and version from it
        "InputTransformer": {"InputPathsMap": {},
                             "InputTemplate": f'{{"{MARKER}": {wrapped}, "event": <aws.events.event>}}'},
        "RetryPolicy": {"MaximumEventAgeInSeconds": 3600 * 6, "MaximumRetryAttempts": 20},
    }


@dataclass(frozen=True)
class S3TriggerTarget:
    """Where S3 triggers go: the ``events`` and ``s3`` clients, the starter function, the data bucket."""

    events: Any
    s3: Any
    function_arn: str
    data_bucket: str

    @classmethod
    def from_env(cls, events: Any = None, s3: Any = None) -> S3TriggerTarget | None:
        """From ``UDOP_TRIGGER_FUNCTION_ARN`` and ``UDOP_DATA_BUCKET`` (the CDK stack's outputs); None
        when not set: then no rule is touched and the deploy result says so."""
        from udop.settings import AwsResources, load_settings

        resources = load_settings(AwsResources)
        function_arn, bucket = resources.trigger_function_arn, resources.data_bucket
        if not function_arn or not bucket:
            return None
        import boto3

        return cls(events=events or boto3.client("events"), s3=s3 or boto3.client("s3"),
                   function_arn=function_arn, data_bucket=bucket)


def _rule_exists(events: Any, name: str) -> bool:
    try:
        events.describe_rule(Name=name)
    except events.exceptions.ResourceNotFoundException:
        return False
    return True


def _bucket_sends_to_eventbridge(s3: Any, bucket: str) -> None:
    """Switch on the bucket's EventBridge notifications, keeping its other notification settings."""
    config = s3.get_bucket_notification_configuration(Bucket=bucket)
    config.pop("ResponseMetadata", None)
    if "EventBridgeConfiguration" in config:
        return
    config["EventBridgeConfiguration"] = {}
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=config)


def s3_trigger_of(pipeline: Any) -> bool:
    trigger = pipeline.spec.trigger
    return bool(trigger is not None and trigger.files is not None and s3_location(trigger.files.path))


def sync_s3_trigger(target: S3TriggerTarget, pipeline: Any, state_machine_arn: str) -> str:
    """Create, update or delete ``udop-<name>-files``; returns ``created|updated|deleted|none``."""
    name = rule_name(pipeline.name)
    if not s3_trigger_of(pipeline):
        return "deleted" if delete_s3_trigger(target.events, pipeline.name) else "none"
    pattern = event_pattern(pipeline)
    request_target = _target(pipeline, state_machine_arn, target)  # ValueError before any call
    _bucket_sends_to_eventbridge(target.s3, pattern["detail"]["bucket"]["name"][0])
    existed = _rule_exists(target.events, name)
    target.events.put_rule(Name=name, EventPattern=json.dumps(pattern), State="ENABLED",
                           Description=f"udop: S3 uploads start pipeline {pipeline.name}")
    target.events.put_targets(Rule=name, Targets=[request_target])
    return "updated" if existed else "created"


def check_s3_trigger(pipeline: Any, source: str) -> None:
    """Deploy-time check (before anything is deployed): the rule and the run input can be built."""
    from udop.errors import SpecError

    try:
        if s3_trigger_of(pipeline):
            event_pattern(pipeline)
            trigger_input(pipeline, "-", "-")
    except ValueError as exc:
        raise SpecError(str(exc), file=source, path="spec.trigger.files") from None


def sync_from_env(target: S3TriggerTarget | None, pipeline: Any, state_machine_arn: str) -> str | None:
    """``sync_s3_trigger`` with ``target`` or the one the environment names; without one, what to set
    (when the pipeline has an S3 trigger) or None."""
    target = target if target is not None else S3TriggerTarget.from_env()
    if target is None:
        return ("not deployed: set UDOP_TRIGGER_FUNCTION_ARN and UDOP_DATA_BUCKET"
                if s3_trigger_of(pipeline) else None)
    return sync_s3_trigger(target, pipeline, state_machine_arn)


def delete_s3_trigger(events: Any, pipeline: str) -> bool:
    """Delete ``udop-<pipeline>-files`` and its targets; False when there was none."""
    return delete_rule(events, rule_name(pipeline))


def delete_rule(events: Any, name: str) -> bool:
    """Delete an EventBridge rule and its targets (a rule with targets cannot be deleted); False when
    there was none. The S3 and the after-pipeline triggers both keep one rule per pipeline."""
    try:
        ids = [t["Id"] for t in events.list_targets_by_rule(Rule=name).get("Targets", [])]
        if ids:
            events.remove_targets(Rule=name, Ids=ids)
        events.delete_rule(Name=name)
    except events.exceptions.ResourceNotFoundException:
        return False
    return True


def execution_name(bucket: str, key: str, version: str) -> str:
    """The execution's name: the same object version always gets the same name (at most 80 chars)."""
    return "s3-" + hashlib.sha256(f"{bucket}/{key}@{version}".encode()).hexdigest()[:40]


def start_from_s3_event(payload: dict[str, Any], sfn: Any) -> dict[str, Any]:
    """The starter: one execution per object version (``payload`` is what the rule's target sends).

    The version is the object's version id, or (unversioned bucket) the event's sequencer, which S3
    makes unique per write of a key; a redelivered event has the same one, so the same name."""
    import urllib.parse

    spec = payload[MARKER]
    event = payload["event"]
    obj = event["detail"]["object"]
    bucket = event["detail"]["bucket"]["name"]
    key = urllib.parse.unquote_plus(obj["key"])
    version = obj.get("version-id") or obj.get("sequencer") or obj.get("etag") or obj.get("eTag") or ""
    name = execution_name(bucket, key, str(version))
    when = event.get("time") or datetime.now(UTC).isoformat()
    if isinstance(when, int | float):  # seconds since the epoch (moto); EventBridge sends ISO 8601
        when = datetime.fromtimestamp(when, UTC).isoformat()
    run = dict(spec["run"])
    params = dict(run.get("params", {}))
    if spec.get("param"):
        params[spec["param"]] = f"s3://{bucket}/{key}"
    run.update(run_id=name, logical_date=when, params=params,
               trigger_object={"bucket": bucket, "key": key, "version": version})
    execution_arn = spec["state_machine_arn"].replace(":stateMachine:", ":execution:", 1) + f":{name}"
    try:  # started already (a redelivered event)? Step Functions would return that same execution
        sfn.describe_execution(executionArn=execution_arn)
    except sfn.exceptions.ExecutionDoesNotExist:
        pass
    else:
        return {"started": False, "execution_name": name, "reason": "this object version already ran"}
    try:  # two deliveries at once: the name lets only one execution exist
        resp = sfn.start_execution(stateMachineArn=spec["state_machine_arn"], name=name,
                                   input=json.dumps({"run": run}))
    except sfn.exceptions.ExecutionAlreadyExists:
        return {"started": False, "execution_name": name, "reason": "this object version already ran"}
    return {"started": True, "execution_name": name, "execution_arn": resp["executionArn"]}
