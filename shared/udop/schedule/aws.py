"""Keep a pipeline's EventBridge Scheduler schedule in step with its definition on AWS.

``udop deploy``, the deployer function (an S3 upload) and ``POST /pipelines`` on Step Functions all
deploy through ``udop.aws.deployer.deploy_definition``, which calls ``sync_schedule`` after the
state machine is in place: the schedule ``udop-<name>`` (the name the CDK app gives it, so either
may update the other's) is created, updated, or deleted when the definition no longer has one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from udop.schedule.expr import eventbridge_expression, schedule_name, scheduled_input
from udop.settings import AwsResources, load_settings

__all__ = ["ScheduleTarget", "delete_schedule", "forget_pipeline", "schedule_request", "sync_schedule"]


@dataclass(frozen=True)
class ScheduleTarget:
    """Where schedules go: the ``scheduler`` client, the role they start executions as, the data bucket
    runs get, and the schedule group."""

    client: Any
    role_arn: str
    data_bucket: str
    group: str = "default"

    @classmethod
    def from_env(cls, client: Any = None) -> ScheduleTarget | None:
        """From ``UDOP_SCHEDULER_ROLE_ARN`` and ``UDOP_DATA_BUCKET`` (the CDK stack's outputs); None
        when the role is not set: then no schedule is touched and the deploy result says so."""
        resources = load_settings(AwsResources)
        role, bucket = resources.scheduler_role_arn, resources.data_bucket
        if not role or not bucket:
            return None
        if client is None:
            import boto3

            client = boto3.client("scheduler")
        return cls(client=client, role_arn=role, data_bucket=bucket,
                   group=resources.schedule_group)


def schedule_request(pipeline: Any, state_machine_arn: str, target: ScheduleTarget) -> dict[str, Any]:
    """The CreateSchedule/UpdateSchedule request for ``pipeline`` (what the CDK app's CfnSchedule says)."""
    schedule = pipeline.spec.schedule
    window: dict[str, Any] = {"Mode": "OFF"}
    if schedule.jitter:
        window = {"Mode": "FLEXIBLE", "MaximumWindowInMinutes": max(1, math.ceil(schedule.jitter / 60))}
    return {
        "Name": schedule_name(pipeline.name),
        "GroupName": target.group,
        "Description": f"udop: runs pipeline {pipeline.name}",
        "ScheduleExpression": eventbridge_expression(schedule),
        "ScheduleExpressionTimezone": schedule.timezone,
        "State": "ENABLED" if schedule.enabled else "DISABLED",
        "FlexibleTimeWindow": window,
        "Target": {
            "Arn": state_machine_arn,
            "RoleArn": target.role_arn,
            "Input": json.dumps(scheduled_input(pipeline, target.data_bucket)),
            "RetryPolicy": {"MaximumEventAgeInSeconds": 3600, "MaximumRetryAttempts": 3},
        },
    }


def _exists(target: ScheduleTarget, name: str) -> bool:
    try:
        target.client.get_schedule(Name=name, GroupName=target.group)
    except target.client.exceptions.ResourceNotFoundException:
        return False
    return True


def sync_schedule(target: ScheduleTarget, pipeline: Any, state_machine_arn: str) -> str:
    """Create, update or delete ``udop-<name>``; returns ``created|updated|deleted|none``.

    ``ValueError`` when the schedule cannot supply a required parameter (checked before any call)."""
    name = schedule_name(pipeline.name)
    if pipeline.spec.schedule is None:
        return "deleted" if delete_schedule(target, pipeline.name) else "none"
    request = schedule_request(pipeline, state_machine_arn, target)
    if _exists(target, name):
        target.client.update_schedule(**request)
        return "updated"
    try:
        target.client.create_schedule(**request)
    except target.client.exceptions.ConflictException:  # created by another deploy meanwhile
        target.client.update_schedule(**request)
        return "updated"
    return "created"


def delete_schedule(target: ScheduleTarget, pipeline: str) -> bool:
    """Delete ``udop-<pipeline>``; False when there was none."""
    try:
        target.client.delete_schedule(Name=schedule_name(pipeline), GroupName=target.group)
    except target.client.exceptions.ResourceNotFoundException:
        return False
    return True


def forget_pipeline(executor_name: str, pipeline: str) -> None:
    """A pipeline deleted through the API on Step Functions stops being scheduled (and triggered)."""
    if executor_name != "stepfunctions":
        return
    target = ScheduleTarget.from_env()
    if target is not None:
        delete_schedule(target, pipeline)
    from udop.schedule.s3events import S3TriggerTarget, delete_s3_trigger

    triggers = S3TriggerTarget.from_env()
    if triggers is not None:
        delete_s3_trigger(triggers.events, pipeline)
        from udop.schedule.afterevents import delete_after_trigger

        delete_after_trigger(triggers.events, pipeline)
