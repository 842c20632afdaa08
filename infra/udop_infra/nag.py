"""cdk-nag AwsSolutions checks and the findings udop accepts, each with its reason."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct

if TYPE_CHECKING:
    from udop_infra.stack import UdopStack

#: CDK's own custom-resource functions (not ours) use this managed policy
LAMBDA_BASIC_EXECUTION = (
    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]"
)


def add_checks(app: cdk.App) -> None:
    """cdk-nag 3 style: a validation plugin (the v2 ``Aspects`` style crashes with cdk-nag 3)."""
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))


def acknowledge(scope: IConstruct | None, rule: str, reason: str) -> None:
    # a function's ``role`` is optional in CDK's types; ours always have one
    if scope is None:
        raise ValueError(f"nothing to acknowledge {rule} on")
    cdk.Validations.of(scope).acknowledge(cdk.Acknowledgment(id=rule, reason=reason))


def acknowledge_findings(stack: UdopStack) -> None:
    """Reasoned acknowledgements, each scoped to the constructs it concerns."""
    data, runtime = stack.data, stack.runtime
    # CDK's own singleton that applies S3 notification configurations (not our code)
    for child in stack.node.children:
        if child.node.id.startswith("BucketNotificationsHandler"):
            acknowledge(
                child,
                LAMBDA_BASIC_EXECUTION,
                "CDK's bucket-notifications custom resource; it only writes its own logs",
            )
    acknowledge(
        data.database,
        "AwsSolutions-RDS3",
        "Multi-AZ doubles the database's cost and is a context switch (udop:dbMultiAz); the metadata "
        "store is rebuilt from backups and execution history, so a single AZ is the default",
    )
    acknowledge(
        data.database,
        "AwsSolutions-RDS11",
        "the port is not a secret: the instance is in private subnets and only the RDS Proxy's "
        "security group may connect",
    )
    acknowledge(
        data.database,
        "AwsSolutions-SMG4",
        "the functions reach the database only through RDS Proxy, which reads this secret; rotation "
        "is an operator decision (add_rotation_single_user) because it needs a rotation function "
        "with network access to the database",
    )
    acknowledge(
        data.cache,
        "AwsSolutions-AEC4",
        "Multi-AZ needs a replica (context udop:cacheReplicas >= 1, which turns it on); the state "
        "store holds locks and idempotency keys that tasks recreate, so one node is the default",
    )
    acknowledge(
        data.cache,
        "AwsSolutions-AEC5",
        "the port is not a secret: the cache is in private subnets, needs TLS and the AUTH token, "
        "and only the functions' security group may connect",
    )
    acknowledge(
        data.cache_secret,
        "AwsSolutions-SMG4",
        "ElastiCache AUTH tokens rotate through ModifyReplicationGroup (AuthTokenUpdateStrategy "
        "ROTATE), not through a Secrets Manager rotation function",
    )
    for name, function in [*runtime.functions.items(), ("stream_runner", stack.streams.function)]:
        role = function.role
        assert role is not None
        acknowledge(
            function,
            "AwsSolutions-L1",
            "python3.12 on purpose: the layers hold wheels and bytecode built for CPython 3.12 "
            "(layers/build.py); moving the runtime means rebuilding them, tested",
        )
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::*]",
            "the ENI actions of a function in a VPC (Describe* has no resource-level scoping; "
            "Lambda picks the subnet at run time), X-Ray PutTraceSegments/PutTelemetryRecords"
            + (
                ", states:ListStateMachines and the CloudWatch Logs delivery APIs"
                if name == "deployer"
                else ""
            )
            + " accept no resource narrower than '*'",
        )
    acknowledge(
        runtime.task_runner.role,
        "AwsSolutions-IAM5[Resource::<StorageData6BB23F4E.Arn>/*]",
        "tasks write datasets under keys made at run time (runs/<pipeline>/<run_id>/<task>/, "
        "results/...): the data bucket's objects are the task runner's working area",
    )
    for rule in (
        "AwsSolutions-IAM5[Resource::<StorageDefinitionsDF965240.Arn>/versions/*]",
        "AwsSolutions-IAM5[Resource::<StorageDefinitionsDF965240.Arn>/streams/*]",
    ):
        acknowledge(
            stack.streams.function.role,
            rule,
            "the stream runner reads the deployed definition versions (versions/<name>/<version>.json) and "
            "which pipeline each source feeds (streams/by-source/<hash>.json), named at deploy time",
        )
    acknowledge(
        stack.streams.function.role,
        "AwsSolutions-IAM5[Resource::<StorageData6BB23F4E.Arn>/runs/*]",
        "the stream runner keeps a batch's input and a failed try's outputs under "
        "runs/<pipeline>/<run_id>/, keys made at run time, to resume the batch from another container",
    )
    acknowledge(
        runtime.task_runner.role,
        "AwsSolutions-IAM5[Resource::<StorageDefinitionsDF965240.Arn>/versions/*]",
        "the task runner reads the deployed definition versions, versions/<name>/<version>.json",
    )
    for rule in (
        "AwsSolutions-IAM5[Resource::<StorageDefinitionsDF965240.Arn>/pipelines/*]",
        "AwsSolutions-IAM5[Resource::<StorageDefinitionsDF965240.Arn>/versions/*]",
    ):
        acknowledge(
            runtime.deployer.role,
            rule,
            "the deployer reads uploaded definitions and writes status reports (pipelines/) and "
            "the definition versions the task runner loads (versions/); names come from uploads",
        )
    acknowledge(
        runtime.deployed_state_machine_role,
        "AwsSolutions-IAM5[Resource::*]",
        "X-Ray tracing of the state machines the deployer creates accepts no resource narrower than '*'",
    )
    state_machines = (
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>"
        ":stateMachine:udop-*]"
    )
    for scope in (runtime.deployer.role, runtime.deployed_state_machine_role):
        acknowledge(
            scope,
            state_machines,
            "state machines are created at run time from uploaded definitions, all named udop-<pipeline>",
        )
        acknowledge(
            scope,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:stateMachine:udop-*:*]",
            "published versions of the udop-<pipeline> state machines",
        )
        acknowledge(
            scope,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:udop-*]",
            "executions of the udop-<pipeline> state machines (ids are made per run)",
        )
    acknowledge(
        runtime.run_events.role,
        "AwsSolutions-IAM5[Resource::<StorageData6BB23F4E.Arn>/results/*]",
        "run events reads the results the task runner wrote, results/<pipeline>/<run_id>/<task>.json",
    )
    acknowledge(
        runtime.run_events.role,
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:udop-*]",
        "run events reads the history of any execution of a udop-<pipeline> state machine",
    )
    acknowledge(
        runtime.deployed_state_machine_role,
        "AwsSolutions-IAM5[Resource::<RuntimeTaskRunnerFunctionF8BF871E.Arn>:*]",
        "invoking the task runner's published versions and aliases as well as $LATEST",
    )
    acknowledge(
        runtime.deployed_state_machine_role,
        "AwsSolutions-IAM5[Resource::<StorageData6BB23F4E.Arn>/runs/*]",
        "Distributed Map states read a task's input files and write map results under runs/",
    )
    states_arn = "arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>"
    for pipeline in stack.orchestration.pipelines.values():
        main = f"udop-{pipeline.source.pipeline.name}"
        for name, machine in [(main, pipeline.state_machine), *pipeline.children.items()]:
            # only present when the definition has foreach tasks (Distributed Map) or was split
            acknowledge(
                machine.role,
                f"AwsSolutions-IAM5[Resource::{states_arn}:execution:{name}/*]",
                "a Distributed Map runs each item as a child execution named at run time",
            )
            acknowledge(
                machine.role,
                f"AwsSolutions-IAM5[Resource::{states_arn}:execution:{name}-*]",
                "executions of this pipeline's own child state machines (ids made per run)",
            )
            acknowledge(
                machine.role,
                "AwsSolutions-IAM5[Resource::<StorageData6BB23F4E.Arn>/runs/*]",
                "a Distributed Map lists a task's output files and writes its results under runs/",
            )
            acknowledge(
                machine.role,
                "AwsSolutions-IAM5[Resource::*]",
                "X-Ray tracing and CloudWatch Logs vended-log delivery (logging ALL) accept no "
                "resource narrower than '*'",
            )
            acknowledge(
                machine.role,
                "AwsSolutions-IAM5[Resource::<RuntimeTaskRunnerFunctionF8BF871E.Arn>:*]",
                "invoking the task runner's published versions and aliases as well as $LATEST",
            )
    acknowledge_api_findings(stack)
    for child in stack.node.children:
        if child.node.id.startswith("Custom::CDKBucketDeployment"):
            for rule in [
                LAMBDA_BASIC_EXECUTION,
                "AwsSolutions-L1",
                *(
                    f"AwsSolutions-IAM5[Action::s3:{a}]"
                    for a in ("GetBucket*", "GetObject*", "List*", "Abort*", "DeleteObject*")
                ),
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::cdk-hnb659fds-assets-"
                "<AWS::AccountId>-<AWS::Region>/*]",
                "AwsSolutions-IAM5[Resource::<StorageDefinitionsDF965240.Arn>/*]",
            ]:
                acknowledge(
                    child,
                    rule,
                    "CDK's bucket-deployment custom resource (runs only during cdk deploy): it copies "
                    "the definition versions from the CDK asset bucket into versions/ with prune off; "
                    "its runtime and grants are CDK's",
                )


def acknowledge_api_findings(stack: UdopStack) -> None:
    """The REST API (udop_infra.api): its function, role and API Gateway resources."""
    api = stack.api
    function, role = api.function, api.function_construct.role
    acknowledge(
        function,
        "AwsSolutions-L1",
        "python3.12 on purpose: the layers hold wheels and bytecode built for CPython 3.12 "
        "(layers/build.py); moving the runtime means rebuilding them, tested",
    )
    acknowledge(
        role,
        "AwsSolutions-IAM5[Resource::*]",
        "the ENI actions of a function in a VPC (Describe* has no resource-level scoping; Lambda "
        "picks the subnet at run time), X-Ray PutTraceSegments/PutTelemetryRecords, "
        "states:ListStateMachines (finding udop-<pipeline> by name) and the CloudWatch Logs delivery "
        "APIs (the deployed machines' logging) accept no resource narrower than '*'",
    )
    for rule in (
        "AwsSolutions-IAM5[Resource::<StorageDefinitionsDF965240.Arn>/pipelines/*]",
        "AwsSolutions-IAM5[Resource::<StorageDefinitionsDF965240.Arn>/versions/*]",
    ):
        acknowledge(
            role,
            rule,
            "POST /pipelines deploys like the deployer: it writes the upload and reads/writes the status "
            "report (pipelines/) and the definition versions the task runner loads (versions/); names "
            "come from requests",
        )
    acknowledge(
        role,
        "AwsSolutions-IAM5[Resource::<StorageData6BB23F4E.Arn>/runs/*/_backfills/*]",
        "POST /pipelines/{name}/backfills on Step Functions writes the dates file the backfill's parent "
        "execution reads (runs/<pipeline>/_backfills/<id>/dates-<n>.json); pipeline and id come from "
        "requests",
    )
    states_arn = "arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>"
    acknowledge(
        role,
        f"AwsSolutions-IAM5[Resource::{states_arn}:stateMachine:udop-*]",
        "the API creates, updates and starts the udop-<pipeline> state machines; pipelines are "
        "deployed at run time, so their names are not known at synth",
    )
    acknowledge(
        role,
        f"AwsSolutions-IAM5[Resource::{states_arn}:stateMachine:udop-*:*]",
        "published versions of the udop-<pipeline> state machines",
    )
    acknowledge(
        role,
        f"AwsSolutions-IAM5[Resource::{states_arn}:execution:udop-*]",
        "executions of the udop-<pipeline> state machines, named per run: stop, redrive, describe, history",
    )
    cloud_watch_role = api.rest_api.node.try_find_child("CloudWatchRole")
    if cloud_watch_role is not None:
        acknowledge(
            cloud_watch_role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AmazonAPIGatewayPushToCloudWatchLogs]",
            "API Gateway's account-wide logging role (access and execution logs need it); AWS's "
            "managed policy is the documented one and covers only CloudWatch Logs",
        )
    acknowledge(
        api.rest_api,
        "AwsSolutions-APIG4",
        "authorization is the application's: every route but /health needs a bearer token (verified "
        "against the user pool's keys) or an API key (X-API-Key, hashed in the metadata database) "
        "and a role; a gateway authorizer could check only the tokens, not the API keys",
    )
    acknowledge(
        api.rest_api,
        "AwsSolutions-COG4",
        "the application verifies the Cognito ID tokens itself (signature, issuer, audience, expiry) "
        "and also accepts API keys, which a Cognito authorizer would refuse",
    )
    acknowledge(
        api.rest_api,
        "AwsSolutions-APIG3",
        "a WAF web ACL is priced per ACL and per request; stage throttling (udop:apiThrottleRateLimit, "
        "udop:apiThrottleBurstLimit) bounds the load, and an operator can attach an ACL to the stage",
    )
