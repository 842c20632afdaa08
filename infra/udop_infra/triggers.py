"""What the deployer function and the API need to keep S3 triggers' EventBridge rules beside the
state machines they deploy (``udop.schedule.s3events``): permission to manage the ``udop-*`` rules
and to switch on the data bucket's EventBridge notifications, and a starter for the rules to target.

The starter is the run-events function (it already reads Step Functions' events): a rule's target is
a Lambda function, which EventBridge invokes under the function's resource policy (granted here for
``udop-*`` rules), so the rules need no role and nothing passes one (no ``iam:PassRole``).
"""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from udop_infra.nag import acknowledge
from udop_infra.runtime import STATE_MACHINE_PREFIX, Runtime
from udop_infra.storage import Storage

RULE_ACTIONS = ["events:DescribeRule", "events:PutRule", "events:PutTargets", "events:ListTargetsByRule",
                "events:RemoveTargets", "events:DeleteRule"]


class S3TriggerManagement(Construct):
    def __init__(self, scope: Construct, id: str, *, runtime: Runtime, storage: Storage,
                 functions: list[lambda_.Function]) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.starter = runtime.run_events
        rules = stack.format_arn(service="events", resource="rule", resource_name=f"{STATE_MACHINE_PREFIX}*")
        self.starter.add_permission(
            "S3TriggerRules", principal=iam.ServicePrincipal("events.amazonaws.com"), source_arn=rules)
        # one execution per object version: started by name, looked up by name first
        self.starter.add_to_role_policy(iam.PolicyStatement(
            actions=["states:StartExecution"], resources=[runtime.state_machine_arn_pattern]))
        acknowledge(
            self.starter.role,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>"
            f":stateMachine:{STATE_MACHINE_PREFIX}*]",
            "S3 triggers start the state machines created at run time, all named udop-<pipeline>",
        )
        for fn in functions:
            fn.add_environment("UDOP_TRIGGER_FUNCTION_ARN", self.starter.function_arn)
            fn.add_to_role_policy(iam.PolicyStatement(actions=RULE_ACTIONS, resources=[rules]))
            fn.add_to_role_policy(iam.PolicyStatement(
                actions=["s3:GetBucketNotification", "s3:PutBucketNotification"],
                resources=[storage.data.bucket_arn]))
            acknowledge(
                fn.role,
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:events:<AWS::Region>:<AWS::AccountId>"
                f":rule/{STATE_MACHINE_PREFIX}*]",
                "S3 trigger rules are created at run time beside the state machines, named "
                "udop-<pipeline>-files",
            )
