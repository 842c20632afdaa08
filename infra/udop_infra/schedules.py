"""What the deployer function and the API need to keep EventBridge Scheduler schedules in step with
the state machines they deploy (``udop.schedule.aws``): a role the schedules start executions as,
and permission to manage the ``udop-*`` schedules and pass that role."""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from udop_infra.nag import acknowledge
from udop_infra.runtime import STATE_MACHINE_PREFIX, Runtime

#: the group the deployer's and the CDK app's schedules live in (UDOP_SCHEDULE_GROUP)
SCHEDULE_GROUP = "default"


class ScheduleManagement(Construct):
    def __init__(self, scope: Construct, id: str, *, runtime: Runtime,
                 functions: list[lambda_.Function]) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.role = iam.Role(
            self,
            "SchedulerRole",
            assumed_by=iam.ServicePrincipal("scheduler.amazonaws.com"),
            description="EventBridge Scheduler: starts the udop state machines deployed at run time",
        )
        self.role.add_to_policy(iam.PolicyStatement(actions=["states:StartExecution"],
                                                    resources=[runtime.state_machine_arn_pattern]))
        schedules = stack.format_arn(service="scheduler", resource="schedule",
                                     resource_name=f"{SCHEDULE_GROUP}/{STATE_MACHINE_PREFIX}*")
        for fn in functions:
            fn.add_environment("UDOP_SCHEDULER_ROLE_ARN", self.role.role_arn)
            fn.add_environment("UDOP_SCHEDULE_GROUP", SCHEDULE_GROUP)
            fn.add_to_role_policy(iam.PolicyStatement(
                actions=["scheduler:GetSchedule", "scheduler:CreateSchedule", "scheduler:UpdateSchedule",
                         "scheduler:DeleteSchedule"],
                resources=[schedules]))
            fn.add_to_role_policy(iam.PolicyStatement(
                actions=["iam:PassRole"], resources=[self.role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}}))
            assert fn.role is not None
            acknowledge(
                fn.role,
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:scheduler:<AWS::Region>:<AWS::AccountId>"
                f":schedule/{SCHEDULE_GROUP}/{STATE_MACHINE_PREFIX}*]",
                "schedules are created at run time beside the state machines, all named udop-<pipeline>",
            )
        acknowledge(
            self.role,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>"
            f":stateMachine:{STATE_MACHINE_PREFIX}*]",
            "schedules start the state machines created at run time, all named udop-<pipeline>",
        )
