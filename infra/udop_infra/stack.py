"""The udop platform stack: composes one construct per concern and nothing else."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from udop_infra.api import Api
from udop_infra.config import DeploymentConfig
from udop_infra.data import Data
from udop_infra.nag import acknowledge_findings
from udop_infra.network import Network
from udop_infra.observability import Observability
from udop_infra.orchestration import Orchestration
from udop_infra.runtime import Runtime
from udop_infra.schedules import ScheduleManagement
from udop_infra.storage import Storage
from udop_infra.streams import StreamProcessing
from udop_infra.triggers import S3TriggerManagement


class UdopStack(Stack):
    def __init__(
        self, scope: Construct, id: str, *, config: DeploymentConfig | None = None, **kwargs: Any
    ) -> None:
        super().__init__(
            scope, id, description="udop: serverless data pipelines (Step Functions + Lambda)", **kwargs
        )
        config = config or DeploymentConfig.from_node(self.node)
        self.config = config
        self.network = Network(self, "Network", config=config)
        self.storage = Storage(self, "Storage", config=config)
        self.data = Data(self, "Data", config=config, network=self.network)
        self.runtime = Runtime(
            self, "Runtime", config=config, network=self.network, storage=self.storage, data=self.data
        )
        self.orchestration = Orchestration(
            self, "Pipelines", config=config, runtime=self.runtime, storage=self.storage
        )
        self.observability = Observability(
            self, "Observability", config=config, runtime=self.runtime, orchestration=self.orchestration
        )
        self.api = Api(
            self,
            "Api",
            config=config,
            network=self.network,
            storage=self.storage,
            data=self.data,
            runtime=self.runtime,
        )
        # the deployer and POST /pipelines create each pipeline's schedule beside its state machine
        self.schedules = ScheduleManagement(
            self, "Schedules", runtime=self.runtime, functions=[self.runtime.deployer, self.api.function])
        CfnOutput(self, "SchedulerRoleArn", value=self.schedules.role.role_arn)
        # ... and the EventBridge rule of an S3 trigger (udop.schedule.s3events)
        self.triggers = S3TriggerManagement(self, "S3Triggers", runtime=self.runtime, storage=self.storage,
                                            functions=[self.runtime.deployer, self.api.function])
        CfnOutput(self, "TriggerFunctionArn", value=self.triggers.starter.function_arn)
        CfnOutput(
            self,
            "DefinitionsBucket",
            value=self.storage.definitions.bucket_name,
            description="upload pipelines/<name>.yaml here to deploy a pipeline",
        )
        CfnOutput(self, "DataBucket", value=self.storage.data.bucket_name)
        CfnOutput(self, "TaskRunnerArn", value=self.runtime.task_runner.function_arn)
        # stream pipelines: event source mappings (udop deploy, or StreamProcessing.add_*) feed this
        self.streams = StreamProcessing(self, "Streams", config=config, network=self.network,
                                        storage=self.storage, data=self.data, runtime=self.runtime)
        CfnOutput(self, "StreamRunnerArn", value=self.streams.function.function_arn)
        # what `udop deploy FILE` needs besides the above (UDOP_STATE_MACHINE_ROLE_ARN,
        # UDOP_STATE_MACHINE_LOG_GROUP_ARN): machines it creates run and log like the deployer's
        CfnOutput(self, "StateMachineRoleArn", value=self.runtime.deployed_state_machine_role.role_arn)
        CfnOutput(self, "StateMachineLogGroupArn", value=self.runtime.state_machine_logs.log_group_arn)
        CfnOutput(self, "DashboardName", value=self.observability.dashboard.dashboard_name)
        CfnOutput(
            self,
            "ApiUrl",
            value=self.api.rest_api.url,
            description="the REST API (stage URL); GET <url>health answers without credentials",
        )
        if self.api.user_pool is not None and self.api.user_pool_client is not None:
            CfnOutput(
                self,
                "ApiUserPoolId",
                value=self.api.user_pool.user_pool_id,
                description="Cognito user pool of the API's users (groups viewer, operator, admin)",
            )
            CfnOutput(self, "ApiUserPoolClientId", value=self.api.user_pool_client.user_pool_client_id)
        # the engines this stack has (udop_infra.engines), for the machines the deployers make
        engines = self.orchestration.engines.share(
            self.runtime.deployed_state_machine_role, [self.runtime.deployer, self.api.function]
        )
        for key, value in engines.items():
            CfnOutput(self, key, value=value)
        acknowledge_findings(self)
