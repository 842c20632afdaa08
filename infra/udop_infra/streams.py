"""Stream pipelines on AWS: the stream-runner function (each delivery of an event source mapping is one
micro-batch, run in-process over the shared layers, recorded in the metadata store) and the mappings
that feed it: SQS queues, Kinesis streams, MSK and self-managed Kafka topics (``add_*``), besides the
ones ``udop deploy`` creates at run time for queues and streams named ``udop-*``."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from udop_infra.config import DeploymentConfig
from udop_infra.data import Data
from udop_infra.layers import FUNCTION_LAYERS
from udop_infra.nag import acknowledge
from udop_infra.network import Network
from udop_infra.runtime import (
    FunctionSpec,
    PipelineFunction,
    Runtime,
    assembly_dir,
    code_with_pipeline_modules,
)
from udop_infra.storage import Storage

#: queues and streams ``udop deploy`` may map to the stream runner at run time are named like this
RUNTIME_SOURCE_PREFIX = "udop-"


class StreamProcessing(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeploymentConfig,
        network: Network,
        storage: Storage,
        data: Data,
        runtime: Runtime,
    ) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        # with the Python modules beside the definitions, as the task runner: a stream pipeline's python
        # tasks import their callables from them (UDOP_CODE_DIR, the server-mode allowlist's default)
        code, code_dir = code_with_pipeline_modules("stream_runner", config, assembly_dir(self))
        self.pipeline_code_dir = code_dir
        construct = PipelineFunction(
            self,
            "StreamRunner",
            spec=FunctionSpec(
                "stream_runner",
                "udop: runs each stream delivery (SQS, Kinesis, Kafka) as a micro-batch of its pipeline",
                memory_mb=config.task_runner_memory_mb,
                timeout=Duration.minutes(15),
                ephemeral_mb=4096,
            ),
            code=code,
            layers=[runtime.layers[name] for name in FUNCTION_LAYERS["stream_runner"]],
            environment={
                "UDOP_DEFINITIONS_BUCKET": storage.definitions.bucket_name,
                "UDOP_DATA_BUCKET": storage.data.bucket_name,
                "UDOP_DATABASE_URL": data.database_url,
                "UDOP_DATABASE_SECRET_ARN": data.db_secret.secret_arn,
                "UDOP_STATE_URL": data.state_url,
                "UDOP_STATE_SECRET_ARN": data.cache_secret.secret_arn,
                **({"UDOP_CODE_DIR": code_dir} if code_dir else {}),
            },
            network=network,
            config=config,
        )
        self.function = construct.function
        data.db_secret.grant_read(self.function)
        data.cache_secret.grant_read(self.function)
        # the deployed versions and which pipeline each source feeds (udop.aws.streams)
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"],
                resources=[
                    storage.definitions.arn_for_objects("versions/*"),
                    storage.definitions.arn_for_objects("streams/*"),
                ],
            )
        )
        # a batch of a pipeline whose run can fail after a load committed keeps its input (and a failed
        # try's outputs) under runs/<pipeline>/<run>/ in the data bucket, to be resumed from any container
        # (udop.aws.streams.keeps_input); explicit actions, no s3:*Object* wildcards
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                resources=[storage.data.arn_for_objects("runs/*")],
            )
        )
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[storage.data.bucket_arn],
                conditions={"StringLike": {"s3:prefix": ["runs/*"]}},
            )
        )
        # what an event source mapping created by `udop deploy` polls with the function's role
        queues = stack.format_arn(service="sqs", resource=f"{RUNTIME_SOURCE_PREFIX}*")
        streams = stack.format_arn(
            service="kinesis", resource="stream", resource_name=f"{RUNTIME_SOURCE_PREFIX}*"
        )
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
                resources=[queues],
            )
        )
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                actions=[
                    "kinesis:DescribeStream",
                    "kinesis:DescribeStreamSummary",
                    "kinesis:GetRecords",
                    "kinesis:GetShardIterator",
                    "kinesis:ListShards",
                    "kinesis:ListStreams",
                    "kinesis:SubscribeToShard",
                ],
                resources=[streams],
            )
        )
        acknowledge(
            self.function.role,
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sqs:<AWS::Region>:<AWS::AccountId>:"
            f"{RUNTIME_SOURCE_PREFIX}*]",
            "udop deploy maps queues named udop-* to the stream runner at run time; the mapping polls with "
            "the function's role",
        )
        acknowledge(
            self.function.role,
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:kinesis:<AWS::Region>:<AWS::AccountId>:stream/"
            f"{RUNTIME_SOURCE_PREFIX}*]",
            "udop deploy maps streams named udop-* to the stream runner at run time; the mapping polls with "
            "the function's role",
        )

    # --- mappings defined in the CDK app -------------------------------------------------------------
    # a mapping made here still needs its pipeline deployed (udop deploy), which records the pipeline
    # the source feeds; udop deploy then updates this mapping's batch settings

    def add_sqs(self, queue: sqs.IQueue, *, batch_size: int = 100, window: Duration | None = None) -> None:
        self.function.add_event_source(
            sources.SqsEventSource(
                queue,
                batch_size=batch_size,
                max_batching_window=window or Duration.seconds(5),
                report_batch_item_failures=True,
            )
        )

    def add_kinesis(
        self,
        stream: kinesis.IStream,
        *,
        batch_size: int = 1000,
        window: Duration | None = None,
        start: lambda_.StartingPosition = lambda_.StartingPosition.TRIM_HORIZON,
    ) -> None:
        self.function.add_event_source(
            sources.KinesisEventSource(
                stream,
                starting_position=start,
                batch_size=batch_size,
                max_batching_window=window or Duration.seconds(5),
                report_batch_item_failures=True,
                bisect_batch_on_error=False,
            )
        )

    def add_msk(
        self,
        cluster_arn: str,
        topic: str,
        *,
        batch_size: int = 1000,
        start: lambda_.StartingPosition = lambda_.StartingPosition.TRIM_HORIZON,
        secret: secretsmanager.ISecret | None = None,
    ) -> None:
        self.function.add_event_source(
            sources.ManagedKafkaEventSource(
                cluster_arn=cluster_arn,
                topic=topic,
                starting_position=start,
                batch_size=batch_size,
                secret=secret,
            )
        )

    def add_kafka(
        self,
        bootstrap_servers: Sequence[str],
        topic: str,
        *,
        secret: secretsmanager.ISecret,
        batch_size: int = 1000,
        start: lambda_.StartingPosition = lambda_.StartingPosition.TRIM_HORIZON,
    ) -> None:
        """A self-managed Kafka cluster (SASL credentials in ``secret``), reached from the platform's VPC."""
        self.function.add_event_source(
            sources.SelfManagedKafkaEventSource(
                bootstrap_servers=list(bootstrap_servers),
                topic=topic,
                secret=secret,
                starting_position=start,
                batch_size=batch_size,
            )
        )
