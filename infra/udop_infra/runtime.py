"""Runtime: the Lambda layers and the functions (task runner, deployer, run events), their
permissions, the S3 notification that deploys uploaded definitions and the execution-status rule."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import jsii
from aws_cdk import ArnFormat, Duration, Size, Stack, Stage
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from constructs import Construct

from udop_infra import layers as layer_build
from udop_infra.config import ContextError, DeploymentConfig
from udop_infra.data import Data
from udop_infra.layers import FUNCTION_LAYERS, LAYERS
from udop_infra.network import Network
from udop_infra.storage import Storage

#: state machines udop manages are all named ``udop-<pipeline>`` (deployed by CDK or by the deployer)
STATE_MACHINE_PREFIX = "udop-"
RUNTIME = lambda_.Runtime.PYTHON_3_12
LAYER_NAMES = tuple(LAYERS)

#: what creating or updating a state machine with a loggingConfiguration needs from its caller
#: (CloudWatch Logs vended-log delivery); these accept no resource narrower than "*"
LOG_DELIVERY_ACTIONS = (
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
)


@dataclass(frozen=True)
class FunctionSpec:
    """What differs between the functions; everything else is a default of ``PipelineFunction``."""

    name: str
    description: str
    memory_mb: int = 512
    timeout: Duration = field(default_factory=lambda: Duration.seconds(60))
    ephemeral_mb: int = 512


class PipelineFunction(Construct):
    """A udop Lambda function with the defaults set once: python3.12 on x86_64 (the layers are built
    for it), handler ``app.handler`` from ``functions/<name>/``, X-Ray tracing, a log group with
    retention, private subnets and the functions' security group, Powertools settings. Settings
    themselves are validated by the function at cold start (``udop.aws.settings``)."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        spec: FunctionSpec,
        code: lambda_.Code,
        layers: list[lambda_.ILayerVersion],
        environment: dict[str, str],
        network: Network,
        config: DeploymentConfig,
    ) -> None:
        super().__init__(scope, id)
        self.log_group = logs.LogGroup(self, "Logs", retention=config.log_retention)
        # our own role instead of AWSLambdaBasicExecutionRole (logs on every log group) and
        # AWSLambdaVPCAccessExecutionRole: logs only to this function's group
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"udop {spec.name} function",
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[self.log_group.log_group_arn],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                # the ENIs of a function in a VPC: EC2 offers no resource-level scoping for Describe*,
                # and Lambda creates the interfaces in subnets chosen at run time
                actions=[
                    "ec2:CreateNetworkInterface",
                    "ec2:DescribeNetworkInterfaces",
                    "ec2:DescribeSubnets",
                    "ec2:DeleteNetworkInterface",
                    "ec2:AssignPrivateIpAddresses",
                    "ec2:UnassignPrivateIpAddresses",
                ],
                resources=["*"],
            )
        )
        self.function = lambda_.Function(
            self,
            "Function",
            description=spec.description,
            runtime=RUNTIME,
            architecture=lambda_.Architecture.X86_64,
            handler="app.handler",
            code=code,
            layers=layers,
            memory_size=spec.memory_mb,
            timeout=spec.timeout,
            ephemeral_storage_size=Size.mebibytes(spec.ephemeral_mb),
            tracing=lambda_.Tracing.ACTIVE,
            log_group=self.log_group,
            role=self.role,
            vpc=network.vpc,
            vpc_subnets=network.private_subnets,
            security_groups=[network.functions_sg],
            environment={
                "POWERTOOLS_SERVICE_NAME": f"udop-{spec.name.replace('_', '-')}",
                "POWERTOOLS_METRICS_NAMESPACE": "udop",
                "POWERTOOLS_LOG_LEVEL": "INFO",
                **environment,
            },
        )


class Runtime(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeploymentConfig,
        network: Network,
        storage: Storage,
        data: Data,
    ) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.layers = {
            name: lambda_.LayerVersion(
                self,
                f"{name.capitalize()}Layer",
                code=_layer_code(name, config, stack),
                compatible_runtimes=[RUNTIME],
                compatible_architectures=[lambda_.Architecture.X86_64],
                description=f"udop {name} layer (python3.12 x86_64)",
            )
            for name in LAYER_NAMES
        }
        self.state_machine_arn_pattern = stack.format_arn(
            service="states",
            resource="stateMachine",
            resource_name=f"{STATE_MACHINE_PREFIX}*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        self.execution_arn_pattern = stack.format_arn(
            service="states",
            resource="execution",
            resource_name=f"{STATE_MACHINE_PREFIX}*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        common_env = {
            "UDOP_DATA_BUCKET": storage.data.bucket_name,
            "UDOP_DATA_ROOT": f"s3://{storage.data.bucket_name}",
            "UDOP_DEFINITIONS_BUCKET": storage.definitions.bucket_name,
        }
        db_env = {
            "UDOP_DATABASE_URL": data.database_url,
            "UDOP_DATABASE_SECRET_ARN": data.db_secret.secret_arn,
        }
        state_env = {"UDOP_STATE_URL": data.state_url, "UDOP_STATE_SECRET_ARN": data.cache_secret.secret_arn}

        def make(
            spec: FunctionSpec, environment: dict[str, str], code: lambda_.Code | None = None
        ) -> lambda_.Function:
            construct = PipelineFunction(
                self,
                "".join(part.capitalize() for part in spec.name.split("_")),
                spec=spec,
                code=code or function_code(spec.name, config),
                layers=[self.layers[name] for name in FUNCTION_LAYERS[spec.name]],
                environment=environment,
                network=network,
                config=config,
            )
            return construct.function

        # --- task runner: one task per invocation --------------------------------------------------
        # with the Python modules beside the definitions, which python tasks' callables come from
        runner_code, code_dir = code_with_pipeline_modules("task_runner", config, assembly_dir(self))
        self.pipeline_code_dir = code_dir
        self.task_runner = make(
            FunctionSpec(
                "task_runner",
                "udop: runs one pipeline task for a Step Functions Task state",
                memory_mb=config.task_runner_memory_mb,
                timeout=Duration.minutes(15),
                ephemeral_mb=4096,
            ),
            {**common_env, **state_env, **({"UDOP_CODE_DIR": code_dir} if code_dir else {})},
            code=runner_code,
        )
        # explicit actions instead of grant_read_write(): no s3:*Object* wildcards
        self.task_runner.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                resources=[storage.data.arn_for_objects("*")],
            )
        )
        self.task_runner.add_to_role_policy(
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[storage.data.bucket_arn])
        )
        self.task_runner.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"], resources=[storage.definitions.arn_for_objects("versions/*")]
            )
        )
        data.cache_secret.grant_read(self.task_runner)

        # --- the role and log group of state machines the deployer creates at run time -------------
        self.state_machine_logs = logs.LogGroup(
            self,
            "DeployedStateMachineLogs",
            retention=config.log_retention,
            log_group_name=f"/aws/vendedlogs/states/{stack.stack_name}-deployed",
        )
        self.deployed_state_machine_role = iam.Role(
            self,
            "DeployedStateMachineRole",
            assumed_by=iam.ServicePrincipal("states.amazonaws.com"),
            description="runs the udop state machines the deployer creates from uploaded definitions",
        )
        grant_state_machine_basics(self.deployed_state_machine_role, self.task_runner)
        self.deployed_state_machine_role.add_to_policy(
            iam.PolicyStatement(actions=["states:StartExecution"], resources=[self.state_machine_arn_pattern])
        )
        self.deployed_state_machine_role.add_to_policy(
            iam.PolicyStatement(
                actions=["states:DescribeExecution", "states:StopExecution"],
                resources=[self.execution_arn_pattern],
            )
        )
        # X-Ray tracing, which the deployer turns on for every machine it creates (as CDK's
        # tracing_enabled=True does for its own): these accept no resource narrower than "*"
        self.deployed_state_machine_role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "xray:PutTraceSegments",
                    "xray:PutTelemetryRecords",
                    "xray:GetSamplingRules",
                    "xray:GetSamplingTargets",
                ],
                resources=["*"],
            )
        )
        # split pipelines: a parent follows its children (startExecution.sync) through this managed rule
        self.deployed_state_machine_role.add_to_policy(
            iam.PolicyStatement(
                actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                resources=[sync_rule_arn(stack)],
            )
        )
        # foreach tasks as Distributed Map: list the input's files, write the map results
        self.deployed_state_machine_role.add_to_policy(
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[storage.data.bucket_arn])
        )
        self.deployed_state_machine_role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:ListMultipartUploadParts",
                    "s3:AbortMultipartUpload",
                ],
                resources=[storage.data.arn_for_objects("runs/*")],
            )
        )

        # --- deployer: pipelines/<name>.yaml|.json uploads -> state machine udop-<name> ----------------
        self.deployer = make(
            FunctionSpec(
                "deployer",
                "udop: validates, compiles and deploys uploaded pipeline definitions",
                memory_mb=1024,
                timeout=Duration.minutes(2),
            ),
            {
                **common_env,
                **db_env,
                "UDOP_TASK_RUNNER_ARN": self.task_runner.function_arn,
                "UDOP_STATE_MACHINE_ROLE_ARN": self.deployed_state_machine_role.role_arn,
                "UDOP_STATE_MACHINE_LOG_GROUP_ARN": self.state_machine_logs.log_group_arn,
            },
        )
        # reads uploads, writes status reports (pipelines/) and the versions the task runner loads
        self.deployer.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:PutObject"],
                resources=[
                    storage.definitions.arn_for_objects("pipelines/*"),
                    storage.definitions.arn_for_objects("versions/*"),
                ],
            )
        )
        self.deployer.add_to_role_policy(
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[storage.definitions.bucket_arn])
        )
        data.db_secret.grant_read(self.deployer)
        self.deployer.add_to_role_policy(
            iam.PolicyStatement(
                actions=[
                    "states:CreateStateMachine",
                    "states:UpdateStateMachine",
                    "states:DescribeStateMachine",
                    "states:PublishStateMachineVersion",
                    "states:ListStateMachineVersions",
                    "states:TagResource",
                ],
                resources=[self.state_machine_arn_pattern, f"{self.state_machine_arn_pattern}:*"],
            )
        )
        self.deployer.add_to_role_policy(
            iam.PolicyStatement(
                actions=["iam:PassRole"],
                resources=[self.deployed_state_machine_role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "states.amazonaws.com"}},
            )
        )
        self.deployer.add_to_role_policy(
            iam.PolicyStatement(
                # these APIs accept no resource narrower than "*": finding a state machine by name, and
                # CloudWatch Logs vended-log delivery for the state machines' logging configuration
                actions=["states:ListStateMachines", *LOG_DELIVERY_ACTIONS],
                resources=["*"],
            )
        )
        for suffix in (".yaml", ".yml", ".json"):
            storage.definitions.add_event_notification(
                s3.EventType.OBJECT_CREATED,
                s3n.LambdaDestination(self.deployer),
                s3.NotificationKeyFilter(prefix="pipelines/", suffix=suffix),
            )

        # --- run events: execution status changes -> run and task records ------------------------------
        self.run_events = make(
            FunctionSpec(
                "run_events",
                "udop: records Step Functions execution status changes as runs",
                memory_mb=512,
                timeout=Duration.minutes(1),
            ),
            {**common_env, **db_env},
        )
        data.db_secret.grant_read(self.run_events)
        # task results (quality checks, lineage) the runner wrote: results/<pipeline>/<run>/<task>.json
        self.run_events.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"], resources=[storage.data.arn_for_objects("results/*")]
            )
        )
        self.run_events.add_to_role_policy(
            iam.PolicyStatement(
                actions=["states:DescribeExecution", "states:GetExecutionHistory"],
                resources=[self.execution_arn_pattern],
            )
        )
        self.execution_status_rule = events.Rule(
            self,
            "ExecutionStatusRule",
            description="udop: Step Functions execution status changes of udop-* state machines",
            event_pattern=events.EventPattern(
                source=["aws.states"],
                detail_type=["Step Functions Execution Status Change"],
                detail={
                    "stateMachineArn": [
                        {
                            "prefix": stack.format_arn(
                                service="states",
                                resource="stateMachine",
                                resource_name=STATE_MACHINE_PREFIX,
                                arn_format=ArnFormat.COLON_RESOURCE_NAME,
                            )
                        }
                    ]
                },
            ),
            targets=[
                targets.LambdaFunction(self.run_events, retry_attempts=4, max_event_age=Duration.hours(2))
            ],
        )
        self.functions = {
            "task_runner": self.task_runner,
            "deployer": self.deployer,
            "run_events": self.run_events,
        }


def sync_rule_arn(stack: Stack) -> str:
    """The EventBridge rule Step Functions manages for ``startExecution.sync`` integrations."""
    return stack.format_arn(
        service="events", resource="rule", resource_name="StepFunctionsGetEventsForStepFunctionsExecutionRule"
    )


def grant_state_machine_basics(role: iam.IRole, task_runner: lambda_.IFunction) -> None:
    """What every udop state machine needs: invoke the task runner (and its versions)."""
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["lambda:InvokeFunction"],
            resources=[task_runner.function_arn, f"{task_runner.function_arn}:*"],
        )
    )


# --- assets -----------------------------------------------------------------------------------------

FUNCTION_CODE_EXCLUDE = ["__pycache__", "*.pyc"]
#: the folder of the task and stream runners' deployment packages holding the Python code found beside
#: the definitions (udop:pipelinesDir); the runners put it on sys.path (UDOP_CODE_DIR)
PIPELINE_CODE_DIR = "pipeline_code"
#: where Lambda unpacks a function's deployment package
LAMBDA_TASK_ROOT = "/var/task"

_PLACEHOLDERS: dict[str, Path] = {}


def _placeholder(kind: str, files: dict[str, str]) -> Path:
    """A tiny stand-in folder (same content -> same asset hash), for synth-only checks."""
    if kind not in _PLACEHOLDERS:
        folder = Path(tempfile.mkdtemp(prefix=f"udop-placeholder-{kind}-"))
        for rel, text in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text)
        _PLACEHOLDERS[kind] = folder
    return _PLACEHOLDERS[kind]


@jsii.implements(cdk.ILocalBundling)
class _LayerBundling:
    """Builds a layer on this machine when CDK bundles its asset (no Docker: the image is never run)."""

    def __init__(self, layer: str) -> None:
        self.layer = layer

    def try_bundle(self, output_dir: str, *args: Any, **kwargs: Any) -> bool:
        # a LayerBuildError reaches the app wrapped by jsii ("Failed to bundle asset ..."): the apps
        # print its one line (udop_infra.platform.synth_error)
        layer_build.stage_layer(self.layer, Path(output_dir))
        return True


#: the image CDK would run if local bundling declined; it never does (try_bundle returns True or raises)
_NO_DOCKER_IMAGE = "public.ecr.aws/sam/build-python3.12"


def _layer_code(name: str, config: DeploymentConfig, stack: Stack) -> lambda_.Code:
    """The layer built during synth by CDK local bundling, its asset hash computed from its inputs
    (requirements, uv.lock pins, udop's version and, for core, udop's files): a synth whose layers
    are cached, or one that skips bundling, gets the same hash without building anything."""
    if config.assets == "placeholder":
        folder = _placeholder(f"layer-{name}", {"python/udop_placeholder.py": "# placeholder layer\n"})
        return lambda_.Code.from_asset(str(folder))
    if stack.bundling_required:
        try:
            layer_build.find_python312()
        except layer_build.LayerBuildError as exc:
            raise ContextError(f"layer '{name}': {exc}") from None
    requirements = layer_build.layer_requirements(name)
    source = _placeholder(
        f"layer-source-{name}-{hashlib.sha256(requirements.encode()).hexdigest()[:12]}",
        {"requirements.txt": requirements},
    )
    return lambda_.Code.from_asset(
        str(source),
        asset_hash_type=cdk.AssetHashType.CUSTOM,
        asset_hash=layer_build.layer_asset_hash(name),
        bundling=cdk.BundlingOptions(
            image=cdk.DockerImage.from_registry(_NO_DOCKER_IMAGE), local=_LayerBundling(name)
        ),
    )


def pipeline_code_files(folder: Path) -> list[Path]:
    """The Python modules and packages beside the definitions in ``folder``, as paths relative to it:
    every ``.py`` file in it and its subfolders, except in ``__pycache__`` and hidden folders."""
    if not folder.is_dir():
        return []
    return sorted(
        path.relative_to(folder)
        for path in folder.rglob("*.py")
        if path.is_file()
        and not any(
            part == "__pycache__" or part.startswith(".") for part in path.relative_to(folder).parts[:-1]
        )
    )


def _function_folder(name: str, config: DeploymentConfig) -> Path:
    folder = layer_build.functions_dir() / name
    if not (folder / "app.py").is_file():
        if config.assets != "placeholder":
            raise ContextError(f"functions/{name}/app.py is missing: the {name} function cannot be deployed")
        folder = _placeholder(
            f"function-{name}",
            {"app.py": "def handler(event, context):\n    raise RuntimeError('placeholder code')\n"},
        )
    return folder


def function_code(name: str, config: DeploymentConfig) -> lambda_.Code:
    """``functions/<name>/`` as a function's code (a placeholder in the fast test tier)."""
    return lambda_.Code.from_asset(str(_function_folder(name, config)), exclude=FUNCTION_CODE_EXCLUDE)


def assembly_dir(scope: Construct) -> Path:
    """The cloud assembly's folder (where staged assets go); a temporary one outside a stage."""
    stage = Stage.of(scope)
    return Path(stage.outdir) if stage is not None else Path(tempfile.mkdtemp(prefix="udop-assets-"))


def code_with_pipeline_modules(
    name: str, config: DeploymentConfig, outdir: Path
) -> tuple[lambda_.Code, str | None]:
    """A runner's code (the task runner, the stream runner) and its ``UDOP_CODE_DIR`` (None when there
    is no pipeline code).

    With Python files beside the definitions, ``functions/<name>/`` and those files (under
    ``pipeline_code/``, folders kept) are staged together in the cloud assembly's folder and that
    becomes the asset: a plain folder copy, so no Docker and no bundling step (which a synth may
    skip: ``aws:cdk:bundling-stacks``) is involved, and the asset hash follows the files' content.
    Only ``.py`` files are shipped; anything else a module reads must come from S3 or a connector.
    """
    folder = _function_folder(name, config)
    files = pipeline_code_files(config.pipelines_dir)
    if not files:
        return lambda_.Code.from_asset(str(folder), exclude=FUNCTION_CODE_EXCLUDE), None
    staged = outdir / ".udop-staging" / name
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(folder, staged, ignore=shutil.ignore_patterns(*FUNCTION_CODE_EXCLUDE))
    if (staged / PIPELINE_CODE_DIR).exists():
        raise ContextError(
            f"functions/{name}/{PIPELINE_CODE_DIR} exists: that name is where the pipelines' "
            "Python code is shipped; rename it"
        )
    for rel in files:
        (staged / PIPELINE_CODE_DIR / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(config.pipelines_dir / rel, staged / PIPELINE_CODE_DIR / rel)
    return lambda_.Code.from_asset(str(staged)), f"{LAMBDA_TASK_ROOT}/{PIPELINE_CODE_DIR}"
