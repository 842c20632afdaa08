"""Orchestration: one Step Functions state machine per definition in ``pipelines/``, compiled at synth
time by the project's compiler, plus EventBridge Scheduler schedules from each pipeline's ``schedule``
and the EventBridge rule of each ``trigger: after:`` (``udop.schedule.afterevents``)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_deployment as s3deploy
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from udop.aws.definitions import canonical_definition, version_key
from udop.compiler import CompileError, CompileOptions, compile_pipeline
from udop.errors import SpecErrors
from udop.schedule import afterevents
from udop.schedule.expr import eventbridge_expression, scheduled_input
from udop.schedule.expr import schedule_name as _schedule_name
from udop.spec.loader import load_pipeline
from udop_infra.config import REPO_ROOT, ContextError, DeploymentConfig
from udop_infra.engines import Engines
from udop_infra.runtime import STATE_MACHINE_PREFIX, Runtime, grant_state_machine_basics, sync_rule_arn
from udop_infra.storage import Storage

DEFINITION_SUFFIXES = (".yaml", ".yml", ".json")
LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
EMR_SERVERLESS_RUN = "arn:aws:states:::emr-serverless:startJobRun.sync"
ATHENA_QUERY = "arn:aws:states:::athena:startQueryExecution.sync"
START_CHILD = "arn:aws:states:::states:startExecution.sync:2"
S3_LIST = ("arn:aws:states:::aws-sdk:s3:listObjectsV2", "arn:aws:states:::s3:listObjectsV2")
S3_GET = "arn:aws:states:::s3:getObject"
S3_PUT = "arn:aws:states:::s3:putObject"


@dataclass(frozen=True)
class PipelineSource:
    path: Path
    pipeline: Any  # udop.spec.models.Pipeline
    version: int


def find_definitions(folder: Path) -> list[Path]:
    """Pipeline definitions in ``folder`` (status files written by the deployer are not definitions)."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.suffix in DEFINITION_SUFFIXES and not p.name.endswith(".status.json")
    )


def load_definitions(folder: Path) -> list[PipelineSource]:
    sources: list[PipelineSource] = []
    names: dict[str, Path] = {}
    for path in find_definitions(folder):
        shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
        try:
            pipeline = load_pipeline(path, filename=None)
        except SpecErrors as exc:
            raise ContextError(str(exc).replace(str(path), str(shown))) from None
        if pipeline.name in names:
            raise ContextError(
                f"{shown}: pipeline {pipeline.name!r} is also defined in {names[pipeline.name]}"
            )
        names[pipeline.name] = shown
        sources.append(PipelineSource(path, pipeline, definition_version(canonical_definition(pipeline))))
    return sources


def definition_version(canonical: dict[str, Any]) -> int:
    """A version number that changes exactly when the definition does (CDK has no counter to bump):
    31 bits of the canonical definition's SHA-256, so it never collides with the small sequential
    numbers the deployer hands out in practice."""
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).digest()
    return (int.from_bytes(digest[:4], "big") & 0x7FFFFFFF) | 0x40000000


def compile_source(source: PipelineSource) -> Any:
    """``udop compile`` for one definition: the same function the CLI and the deployer call."""
    try:
        return compile_pipeline(source.pipeline, options=CompileOptions(version=source.version))
    except CompileError as exc:
        raise ContextError(f"{source.path.name}: {exc}") from None


class PipelineStateMachines(Construct):
    """The state machines of one pipeline (the main one and any child it was split into)."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        source: PipelineSource,
        runtime: Runtime,
        storage: Storage,
        config: DeploymentConfig,
        engines: Engines,
    ) -> None:
        super().__init__(scope, id)
        self.source = source
        self.engines = engines
        self.compiled = compile_source(source)
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=config.log_retention,
            log_group_name=f"/aws/vendedlogs/states/{Stack.of(self).stack_name}-{source.pipeline.name}",
        )
        self.children: dict[str, sfn.StateMachine] = {}
        self.state_machine = self._state_machine(
            self.compiled, f"{STATE_MACHINE_PREFIX}{source.pipeline.name}", "Main", runtime, storage
        )

    def _state_machine(
        self, compiled: Any, name: str, id: str, runtime: Runtime, storage: Storage
    ) -> sfn.StateMachine:
        substitutions: dict[str, str] = {}
        child_arns: list[str] = []
        for child in compiled.children:
            # the compiler names a child "<pipeline>-<part>"; every udop machine carries the prefix
            child_name = f"{STATE_MACHINE_PREFIX}{child.machine_name}"
            # construct id from the (unique) machine name: grandchildren live in the same scope
            machine = self._state_machine(child, child_name, f"Child-{child.machine_name}", runtime, storage)
            key = f"Child_{child.name}Arn"
            if key not in compiled.substitutions:
                raise ContextError(
                    f"{self.source.path.name}: compiled child {child.name!r} has no "
                    f"substitution {key!r} (got {compiled.substitutions})"
                )
            substitutions[key] = machine.state_machine_arn
            child_arns.append(machine.state_machine_arn)
            self.children[child_name] = machine
        for key in compiled.substitutions:
            if key == "TaskRunnerArn":
                substitutions[key] = runtime.task_runner.function_arn
            elif (value := self.engines.substitution(key)) is not None:
                substitutions[key] = value
            elif key not in substitutions:
                raise ContextError(
                    f"{self.source.path.name}: the compiled definition needs a substitution "
                    f"{key!r} this CDK app does not know"
                )
        machine = sfn.StateMachine(
            self,
            id,
            state_machine_name=name,
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_string(compiled.to_json()),
            definition_substitutions=substitutions,
            logs=sfn.LogOptions(
                destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=True
            ),
            tracing_enabled=True,
        )
        if "TaskRunnerArn" in compiled.substitutions:  # a parent of split parts runs no task itself
            grant_state_machine_basics(machine.role, runtime.task_runner)
        _grant_used_resources(machine, compiled.definition, name, child_arns, storage)
        self.engines.grant(machine, compiled.substitutions)
        return machine


def _resources(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("Resource"), str):
            found.add(node["Resource"])
        for value in node.values():
            found |= _resources(value)
    elif isinstance(node, list):
        for value in node:
            found |= _resources(value)
    return found


def _uses_distributed_map(node: Any) -> bool:
    if isinstance(node, dict):
        if (node.get("ItemProcessor") or {}).get("ProcessorConfig", {}).get("Mode") == "DISTRIBUTED":
            return True
        return any(_uses_distributed_map(v) for v in node.values())
    if isinstance(node, list):
        return any(_uses_distributed_map(v) for v in node)
    return False


def _grant_used_resources(
    machine: sfn.StateMachine, definition: dict[str, Any], name: str, child_arns: list[str], storage: Storage
) -> None:
    """Least privilege from the definition itself: only the service integrations it uses."""
    stack = Stack.of(machine)
    for resource in sorted(_resources(definition)):
        base = resource.split("${")[0]
        if base == LAMBDA_INVOKE or resource.startswith("${TaskRunnerArn"):
            continue  # granted by grant_state_machine_basics
        if base in (EMR_SERVERLESS_RUN, ATHENA_QUERY):
            continue  # granted by the engine's construct (udop_infra.engines)
        if base.startswith("arn:aws:states:::states:startExecution"):
            machine.add_to_role_policy(
                iam.PolicyStatement(actions=["states:StartExecution"], resources=child_arns)
            )
            machine.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["states:DescribeExecution", "states:StopExecution"],
                    resources=[
                        stack.format_arn(
                            service="states",
                            resource="execution",
                            resource_name=f"{name}-*",
                            arn_format=ArnFormat.COLON_RESOURCE_NAME,
                        )
                    ],
                )
            )
            # .sync integrations watch the child through a managed EventBridge rule
            machine.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                    resources=[sync_rule_arn(stack)],
                )
            )
        elif base in S3_LIST:
            machine.add_to_role_policy(
                iam.PolicyStatement(actions=["s3:ListBucket"], resources=[storage.data.bucket_arn])
            )
        elif base == S3_GET:
            machine.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["s3:GetObject"], resources=[storage.data.arn_for_objects("runs/*")]
                )
            )
        elif base == S3_PUT:
            # a Distributed Map's ResultWriter uploads its results in parts
            machine.add_to_role_policy(
                iam.PolicyStatement(
                    actions=[
                        "s3:PutObject",
                        "s3:GetObject",
                        "s3:ListMultipartUploadParts",
                        "s3:AbortMultipartUpload",
                    ],
                    resources=[storage.data.arn_for_objects("runs/*")],
                )
            )
        else:
            raise ContextError(
                f"state machine {name}: service integration {resource!r} has no IAM mapping "
                "in infra/udop_infra/orchestration.py"
            )
    if _uses_distributed_map(definition):
        own_arn = stack.format_arn(
            service="states",
            resource="stateMachine",
            resource_name=name,
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        machine.add_to_role_policy(
            iam.PolicyStatement(actions=["states:StartExecution"], resources=[own_arn])
        )
        machine.add_to_role_policy(
            iam.PolicyStatement(
                actions=["states:DescribeExecution", "states:StopExecution"],
                resources=[
                    stack.format_arn(
                        service="states",
                        resource="execution",
                        resource_name=f"{name}/*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            )
        )


# --- schedules ---------------------------------------------------------------------------------------

def schedule_expression(schedule: Any) -> str:
    """``schedule`` -> an EventBridge Scheduler expression (the one conversion, in udop.schedule.expr)."""
    try:
        return eventbridge_expression(schedule)
    except ValueError as exc:
        raise ContextError(str(exc)) from None


def schedule_name(pipeline: str) -> str:
    """``udop-<pipeline>``, shortened with a hash when longer than a schedule name may be (64)."""
    return _schedule_name(pipeline, STATE_MACHINE_PREFIX)


def run_input(pipeline: Any, data_bucket: str) -> dict[str, Any]:
    """The execution input of a scheduled run: the run context the compiled Task states pass on."""
    try:
        return scheduled_input(pipeline, data_bucket)
    except ValueError as exc:
        raise ContextError(str(exc)) from None


class Orchestration(Construct):
    """All pipelines under ``pipelines/``: state machines, the definition versions their task runner
    reads (``versions/<name>/<version>.json`` in the definitions bucket) and schedules."""

    def __init__(
        self, scope: Construct, id: str, *, config: DeploymentConfig, runtime: Runtime, storage: Storage
    ) -> None:
        super().__init__(scope, id)
        self.pipelines: dict[str, PipelineStateMachines] = {}
        self.schedules: dict[str, scheduler.CfnSchedule] = {}
        self.engines = Engines(self, config=config, storage=storage, runner=runtime.task_runner)
        sources = load_definitions(config.pipelines_dir)
        for source in sources:
            name = source.pipeline.name
            construct_id = "".join(part.capitalize() for part in re.split(r"[-_]", name))
            self.pipelines[name] = PipelineStateMachines(
                self, construct_id, source=source, runtime=runtime, storage=storage, config=config,
                engines=self.engines,
            )
        if sources:
            # the task runner loads exactly the version a state machine was compiled from
            s3deploy.BucketDeployment(
                self,
                "DefinitionVersions",
                destination_bucket=storage.definitions,
                sources=[
                    # Source.data, not json_data: json_data drops nulls, and the stored text must be
                    # exactly the canonical definition (the deployer hashes the same form)
                    s3deploy.Source.data(
                        version_key(s.pipeline.name, s.version), json.dumps(canonical_definition(s.pipeline))
                    )
                    for s in sources
                ],
                prune=False,
                retain_on_delete=True,
                memory_limit=256,
            )
        role: iam.Role | None = None
        for source in sources:
            schedule = source.pipeline.spec.schedule
            if schedule is None:
                continue
            if role is None:
                role = iam.Role(
                    self,
                    "SchedulerRole",
                    assumed_by=iam.ServicePrincipal("scheduler.amazonaws.com"),
                    description="EventBridge Scheduler: starts scheduled udop pipelines",
                )
            machine = self.pipelines[source.pipeline.name].state_machine
            machine.grant_start_execution(role)
            self.schedules[source.pipeline.name] = scheduler.CfnSchedule(
                self,
                f"{self.pipelines[source.pipeline.name].node.id}Schedule",
                name=schedule_name(source.pipeline.name),
                description=f"udop: runs pipeline {source.pipeline.name}",
                schedule_expression=schedule_expression(schedule),
                schedule_expression_timezone=schedule.timezone,
                state="ENABLED" if schedule.enabled else "DISABLED",
                flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(mode="OFF"),
                target=scheduler.CfnSchedule.TargetProperty(
                    arn=machine.state_machine_arn,
                    role_arn=role.role_arn,
                    input=json.dumps(run_input(source.pipeline, storage.data.bucket_name)),
                    retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(
                        maximum_event_age_in_seconds=3600, maximum_retry_attempts=3
                    ),
                ),
            )
        self.after_rules: dict[str, events.CfnRule] = {}
        for source in sources:
            upstream = afterevents.after_trigger_of(source.pipeline)
            if upstream is not None:
                rule = self._after_rule(source.pipeline, upstream, runtime, storage)
                self.after_rules[source.pipeline.name] = rule

    def _after_rule(self, pipeline: Any, upstream: str, runtime: Runtime, storage: Storage) -> events.CfnRule:
        """``udop-<name>-after``: the upstream's SUCCEEDED executions start this pipeline through the
        starter (the run-events function), exactly as ``udop deploy`` creates it. The upstream may be
        in this app or deployed at run time (then its ARN is the name it will have)."""
        if upstream in self.pipelines:
            upstream_arn = self.pipelines[upstream].state_machine.state_machine_arn
        else:
            upstream_arn = Stack.of(self).format_arn(
                service="states",
                resource="stateMachine",
                resource_name=f"{STATE_MACHINE_PREFIX}{upstream}",
                arn_format=ArnFormat.COLON_RESOURCE_NAME,
            )
        machine = self.pipelines[pipeline.name]
        try:
            wrapped = afterevents.trigger_input(
                pipeline, machine.state_machine.state_machine_arn, storage.data.bucket_name, upstream_arn
            )
        except ValueError as exc:
            raise ContextError(str(exc)) from None
        target = afterevents.target_request(runtime.run_events.function_arn, wrapped)
        return events.CfnRule(
            self,
            f"{machine.node.id}AfterTrigger",
            name=afterevents.rule_name(pipeline.name),
            description=f"udop: a succeeded run of {upstream} starts pipeline {pipeline.name}",
            state="ENABLED",
            event_pattern=afterevents.event_pattern(upstream_arn),
            targets=[
                events.CfnRule.TargetProperty(
                    id=target["Id"],
                    arn=target["Arn"],
                    input_transformer=events.CfnRule.InputTransformerProperty(
                        input_template=target["InputTransformer"]["InputTemplate"]
                    ),
                    retry_policy=events.CfnRule.RetryPolicyProperty(
                        maximum_event_age_in_seconds=target["RetryPolicy"]["MaximumEventAgeInSeconds"],
                        maximum_retry_attempts=target["RetryPolicy"]["MaximumRetryAttempts"],
                    ),
                )
            ],
        )
