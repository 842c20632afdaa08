"""Engines beyond Lambda for ``engine: spark`` and ``engine: athena`` transform tasks (docs/engines.md).

Created only when a pipeline uses them or a prop asks for them: an EMR Serverless Spark application
(auto-start, auto-stop when idle, a maximum capacity) with the role its jobs run as, and udop's Spark
entry script as an asset in the CDK assets bucket; an Athena workgroup that enforces its result
location (under the data bucket) and a per-query bytes-scanned limit, and the Glue database where the
task runner registers a table per input dataset.
"""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_athena as athena
from aws_cdk import aws_emrserverless as emr
from aws_cdk import aws_glue as glue
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from udop_infra.config import REPO_ROOT, DeploymentConfig
from udop_infra.nag import acknowledge
from udop_infra.storage import Storage

__all__ = ["AthenaEngine", "Engines", "SparkEngine"]

#: substitution -> the setting (udop.settings.AwsResources) the deployer reads it from
ENGINE_SETTINGS = {
    "EmrApplicationId": "UDOP_EMR_APPLICATION_ID",
    "EmrJobRoleArn": "UDOP_EMR_JOB_ROLE_ARN",
    "SparkEntryPoint": "UDOP_SPARK_ENTRY_POINT",
    "AthenaWorkGroup": "UDOP_ATHENA_WORKGROUP",
    "GlueDatabase": "UDOP_GLUE_DATABASE",
}
ENTRY_SCRIPT = REPO_ROOT / "layers" / "transforms" / "udop_transforms" / "spark_entry.py"
#: EMR Serverless release whose Spark runs the SQL sqlglot writes (Spark 3.5; PySpark 4.3 locally)
EMR_RELEASE = "emr-7.5.0"


class SparkEngine(Construct):
    """The EMR Serverless application ``engine: spark`` tasks run on, its job role and entry script."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeploymentConfig,
        storage: Storage,
        runner: lambda_.IFunction,
    ) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.application = emr.CfnApplication(
            self,
            "Application",
            release_label=EMR_RELEASE,
            type="SPARK",
            name=f"{stack.stack_name}-udop-spark",
            auto_start_configuration=emr.CfnApplication.AutoStartConfigurationProperty(enabled=True),
            auto_stop_configuration=emr.CfnApplication.AutoStopConfigurationProperty(
                enabled=True, idle_timeout_minutes=config.spark_idle_minutes
            ),
            maximum_capacity=emr.CfnApplication.MaximumAllowedResourcesProperty(
                cpu=f"{config.spark_max_vcpu} vCPU", memory=f"{config.spark_max_memory_gb} GB"
            ),
        )
        self.entry = s3_assets.Asset(self, "EntryScript", path=str(ENTRY_SCRIPT))
        self.job_role = iam.Role(
            self,
            "JobRole",
            assumed_by=iam.ServicePrincipal("emr-serverless.amazonaws.com"),
            description="udop engine: spark jobs: read the run's inputs and sources, write its outputs",
        )
        entry_arn = self.entry.bucket.arn_for_objects(self.entry.s3_object_key)
        self.job_role.add_to_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=[entry_arn]))
        _data_access(self.job_role, storage, write_prefixes=["runs/*"], delete=True)
        acknowledge(
            self.job_role,
            f"AwsSolutions-IAM5[Resource::<{_data_token(storage)}.Arn>/*]",
            "Spark jobs read a run's inputs and the sources read in place anywhere in the data "
            "bucket (their keys are the pipeline's, not known when deploying)",
        )
        acknowledge(
            self.job_role,
            f"AwsSolutions-IAM5[Resource::<{_data_token(storage)}.Arn>/runs/*]",
            "Spark jobs write (and on a retry replace) a task's output under runs/<pipeline>/<run>/",
        )

        # the finish call reads the job run's billed resources (its cost)
        runner_app_arn = stack.format_arn(
            service="emr-serverless",
            resource="/applications",
            resource_name=self.application.attr_application_id,
        )
        runner.add_to_role_policy(
            iam.PolicyStatement(
                actions=["emr-serverless:GetJobRun"], resources=[f"{runner_app_arn}/jobruns/*"]
            )
        )
        acknowledge(
            runner.role,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:emr-serverless:<AWS::Region>:<AWS::AccountId>:"
            f"/applications/<{stack.get_logical_id(self.application)}.ApplicationId>/jobruns/*]",
            "the task runner reads the billed resources of udop's own job runs (ids made per run)",
        )

    @property
    def substitutions(self) -> dict[str, str]:
        return {
            "EmrApplicationId": self.application.attr_application_id,
            "EmrJobRoleArn": self.job_role.role_arn,
            "SparkEntryPoint": self.entry.s3_object_url,
        }

    def grant_run(self, role: iam.IRole) -> None:
        """What ``startJobRun.sync`` needs: start, watch and cancel job runs, pass the job role, and the
        managed EventBridge rule through which Step Functions learns that a run ended."""
        stack = Stack.of(self)
        app_arn = stack.format_arn(
            service="emr-serverless",
            resource="/applications",
            resource_name=self.application.attr_application_id,
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=[
                    "emr-serverless:StartJobRun",
                    "emr-serverless:GetJobRun",
                    "emr-serverless:CancelJobRun",
                    "emr-serverless:GetDashboardForJobRun",
                ],
                resources=[app_arn, f"{app_arn}/jobruns/*"],
            )
        )
        app_id = stack.get_logical_id(self.application)
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:emr-serverless:"
            f"<AWS::Region>:<AWS::AccountId>:/applications/<{app_id}.ApplicationId>/jobruns/*]",
            "job run ids are made per run: watch and cancel the job runs of udop's own application",
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["iam:PassRole"],
                resources=[self.job_role.role_arn],
                conditions={"StringLike": {"iam:PassedToService": "emr-serverless.amazonaws.com"}},
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                resources=[
                    stack.format_arn(
                        service="events",
                        resource="rule",
                        resource_name="StepFunctionsGetEventsForEMRServerlessJobRule",
                    )
                ],
            )
        )


class AthenaEngine(Construct):
    """The Athena workgroup ``engine: athena`` tasks run in, and the Glue database of their inputs."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeploymentConfig,
        storage: Storage,
        runner: lambda_.IFunction,
    ) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.database_name = f"udop_{stack.stack_name.lower().replace('-', '_')}"
        self.database = glue.CfnDatabase(
            self,
            "Database",
            catalog_id=stack.account,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=self.database_name, description="udop: one table per input dataset of an athena task"
            ),
        )
        self.storage = storage
        self.workgroup = athena.CfnWorkGroup(
            self,
            "WorkGroup",
            name=f"{stack.stack_name}-udop",
            state="ENABLED",
            description="udop engine: athena tasks",
            work_group_configuration=athena.CfnWorkGroup.WorkGroupConfigurationProperty(
                enforce_work_group_configuration=True,
                publish_cloud_watch_metrics_enabled=True,
                bytes_scanned_cutoff_per_query=config.athena_bytes_scanned_cutoff,
                result_configuration=athena.CfnWorkGroup.ResultConfigurationProperty(
                    output_location=f"s3://{storage.data.bucket_name}/athena-results/",
                    encryption_configuration=athena.CfnWorkGroup.EncryptionConfigurationProperty(
                        encryption_option="SSE_S3"
                    ),
                ),
            ),
        )

        # the prepare call registers a table per input dataset of a run, the finish call drops them
        runner.add_to_role_policy(
            iam.PolicyStatement(
                actions=[
                    "glue:GetDatabase",
                    "glue:GetTable",
                    "glue:CreateTable",
                    "glue:UpdateTable",
                    "glue:DeleteTable",
                ],
                resources=[
                    stack.format_arn(service="glue", resource="catalog"),
                    stack.format_arn(service="glue", resource="database", resource_name=self.database_name),
                    stack.format_arn(
                        service="glue", resource="table", resource_name=f"{self.database_name}/*"
                    ),
                ],
            )
        )
        acknowledge(
            runner.role,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:glue:<AWS::Region>:<AWS::AccountId>:"
            f"table/{self.database_name}/*]",
            "the task runner registers and drops one table per input dataset of a run in udop's own Glue "
            "database",
        )

    @property
    def substitutions(self) -> dict[str, str]:
        return {"AthenaWorkGroup": self.workgroup.ref, "GlueDatabase": self.database_name}

    def grant_run(self, role: iam.IRole) -> None:
        """What ``startQueryExecution.sync`` needs: the query runs with the state machine's
        credentials, so it reads the inputs, writes the run's output and the workgroup's results."""
        stack = Stack.of(self)
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=[
                    "athena:StartQueryExecution",
                    "athena:GetQueryExecution",
                    "athena:StopQueryExecution",
                    "athena:GetWorkGroup",
                ],
                resources=[
                    stack.format_arn(service="athena", resource="workgroup", resource_name=self.workgroup.ref)
                ],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["glue:GetDatabase", "glue:GetTable", "glue:GetPartitions"],
                resources=[
                    stack.format_arn(service="glue", resource="catalog"),
                    stack.format_arn(service="glue", resource="database", resource_name=self.database_name),
                    stack.format_arn(
                        service="glue", resource="table", resource_name=f"{self.database_name}/*"
                    ),
                ],
            )
        )
        _data_access(role, self.storage, write_prefixes=["runs/*", "athena-results/*"], delete=False)
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:glue:<AWS::Region>:"
            f"<AWS::AccountId>:table/{self.database_name}/*]",
            "one table per input dataset of a run is registered in udop's own Glue database",
        )
        token = _data_token(self.storage)
        acknowledge(
            role,
            f"AwsSolutions-IAM5[Resource::<{token}.Arn>/*]",
            "Athena reads with the state machine's credentials: a run's inputs and the sources "
            "read in place anywhere in the data bucket",
        )
        acknowledge(
            role,
            f"AwsSolutions-IAM5[Resource::<{token}.Arn>/runs/*]",
            "UNLOAD writes a task's output under runs/<pipeline>/<run>/",
        )
        acknowledge(
            role,
            f"AwsSolutions-IAM5[Resource::<{token}.Arn>/athena-results/*]",
            "the workgroup's enforced result location (query metadata and manifests)",
        )


def _data_token(storage: Storage) -> str:
    """The logical id cdk-nag shows for the data bucket in a finding (``<LogicalId.Arn>``)."""
    resource = storage.data.node.default_child
    assert resource is not None
    return Stack.of(storage).get_logical_id(resource)  # type: ignore[arg-type]


def _data_access(role: iam.IRole, storage: Storage, *, write_prefixes: list[str], delete: bool) -> None:
    """Read anywhere in the data bucket, write only below ``write_prefixes``: explicit actions, no
    ``s3:*Object*`` wildcards."""
    bucket = storage.data
    role.add_to_principal_policy(
        iam.PolicyStatement(actions=["s3:ListBucket", "s3:GetBucketLocation"], resources=[bucket.bucket_arn])
    )
    role.add_to_principal_policy(
        iam.PolicyStatement(actions=["s3:GetObject"], resources=[bucket.arn_for_objects("*")])
    )
    writes = ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=[*writes, *(["s3:DeleteObject"] if delete else [])],
            resources=[bucket.arn_for_objects(p) for p in write_prefixes],
        )
    )


class Engines:
    """Creates each engine once, on first use by a pipeline (or up front when its prop is set)."""

    def __init__(
        self, scope: Construct, *, config: DeploymentConfig, storage: Storage, runner: lambda_.IFunction
    ) -> None:
        self.scope, self.config, self.storage, self.runner = scope, config, storage, runner
        self._spark: SparkEngine | None = None
        self._athena: AthenaEngine | None = None
        if config.spark_engine:
            self.spark()
        if config.athena_engine:
            self.athena()

    def spark(self) -> SparkEngine:
        if self._spark is None:
            self._spark = SparkEngine(
                self.scope, "Spark", config=self.config, storage=self.storage, runner=self.runner
            )
        return self._spark

    def athena(self) -> AthenaEngine:
        if self._athena is None:
            self._athena = AthenaEngine(
                self.scope, "Athena", config=self.config, storage=self.storage, runner=self.runner
            )
        return self._athena

    def substitution(self, key: str) -> str | None:
        """The value of a compiled definition's engine substitution, creating the engine it names."""
        for make in (self.spark, self.athena):
            if key in _KEYS[make.__name__]:
                return make().substitutions[key]
        return None

    def grant(self, machine: sfn.StateMachine, substitutions: list[str]) -> None:
        if any(k in _KEYS["spark"] for k in substitutions):
            self.spark().grant_run(machine.role)
        if any(k in _KEYS["athena"] for k in substitutions):
            self.athena().grant_run(machine.role)

    def share(self, role: iam.IRole, functions: list[lambda_.Function]) -> dict[str, str]:
        """Let machines made outside CDK (the deployer, ``POST /pipelines``, ``udop deploy FILE``) use
        the engines that exist: their state machine ``role`` may run jobs/queries, and ``functions``
        get the substitutions as ``UDOP_*`` settings; answers the substitutions (stack outputs)."""
        found: dict[str, str] = {}
        for engine in (self._spark, self._athena):
            if engine is None:
                continue
            engine.grant_run(role)
            found.update(engine.substitutions)
        for fn in functions:
            for key, value in found.items():
                fn.add_environment(ENGINE_SETTINGS[key], value)
        return found


_KEYS = {
    "spark": ("EmrApplicationId", "EmrJobRoleArn", "SparkEntryPoint"),
    "athena": ("AthenaWorkGroup", "GlueDatabase"),
}
