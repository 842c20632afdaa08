"""The REST API: the API function (``functions/api``, FastAPI behind Mangum), its permissions, the
Cognito user pool whose tokens it accepts (unless context names another OIDC issuer) and an API
Gateway REST API in front of it (Lambda proxy integration, stage throttling, JSON access logs, a
request validator, X-Ray)."""

from __future__ import annotations

import json

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cognito as cognito
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from udop_infra.config import DeploymentConfig
from udop_infra.data import Data
from udop_infra.layers import FUNCTION_LAYERS
from udop_infra.network import Network
from udop_infra.runtime import (
    LOG_DELIVERY_ACTIONS,
    FunctionSpec,
    PipelineFunction,
    Runtime,
    function_code,
)
from udop_infra.storage import Storage

#: the roles the API knows (udop.api.auth.Role), read from the ``cognito:groups`` claim
API_ROLES = ("viewer", "operator", "admin")
#: API Gateway ends a request after 29 s whatever the function does: stop the function first
API_TIMEOUT = Duration.seconds(29)

#: one JSON object per request (API Gateway substitutes the ``$context`` variables)
ACCESS_LOG_FIELDS = {
    "requestId": apigw.AccessLogField.context_request_id(),
    "ip": apigw.AccessLogField.context_identity_source_ip(),
    "requestTime": apigw.AccessLogField.context_request_time(),
    "httpMethod": apigw.AccessLogField.context_http_method(),
    "path": apigw.AccessLogField.context_path(),
    "resourcePath": apigw.AccessLogField.context_resource_path(),
    "protocol": apigw.AccessLogField.context_protocol(),
    "status": apigw.AccessLogField.context_status(),
    "responseLength": apigw.AccessLogField.context_response_length(),
    "responseLatency": apigw.AccessLogField.context_response_latency(),
    "integrationStatus": apigw.AccessLogField.context_integration_status(),
    "integrationLatency": apigw.AccessLogField.context_integration_latency(),
    "xrayTraceId": apigw.AccessLogField.context_xray_trace_id(),
}


class Api(Construct):
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

        # --- who may call: a Cognito user pool (default) or an OIDC issuer named in context ------------
        self.user_pool: cognito.UserPool | None = None
        self.user_pool_client: cognito.UserPoolClient | None = None
        if config.external_issuer:
            jwt_env = {"UDOP_JWKS_URL": config.jwks_url}
            if config.jwt_issuer:
                jwt_env["UDOP_JWT_ISSUER"] = config.jwt_issuer
            if config.jwt_audience:
                jwt_env["UDOP_JWT_AUDIENCE"] = config.jwt_audience
        else:
            jwt_env = self._cognito(config, network)

        # --- the function ------------------------------------------------------------------------
        self.function_construct = PipelineFunction(
            self,
            "Function",
            spec=FunctionSpec(
                "api",
                "udop: the REST API (runs, pipelines, admin) behind API Gateway",
                memory_mb=1024,
                timeout=API_TIMEOUT,
            ),
            code=function_code("api", config),
            layers=[runtime.layers[name] for name in FUNCTION_LAYERS["api"]],
            environment={
                # runs go to Step Functions: a Lambda is frozen after each answer, so it cannot run them
                "UDOP_EXECUTOR": "stepfunctions",
                "UDOP_DATA_BUCKET": storage.data.bucket_name,
                "UDOP_DATA_ROOT": f"s3://{storage.data.bucket_name}",
                "UDOP_DEFINITIONS_BUCKET": storage.definitions.bucket_name,
                "UDOP_DATABASE_URL": data.database_url,
                "UDOP_DATABASE_SECRET_ARN": data.db_secret.secret_arn,
                "UDOP_TASK_RUNNER_ARN": runtime.task_runner.function_arn,
                "UDOP_STATE_MACHINE_ROLE_ARN": runtime.deployed_state_machine_role.role_arn,
                # POST /pipelines creates machines like the deployer: same logging and tracing
                "UDOP_STATE_MACHINE_LOG_GROUP_ARN": runtime.state_machine_logs.log_group_arn,
                # API Gateway passes paths without the stage; FastAPI's docs links need it
                "UDOP_API_ROOT_PATH": f"/{config.api_stage_name}",
                **jwt_env,
            },
            network=network,
            config=config,
        )
        self.function = self.function_construct.function
        self._grant(storage, data, runtime)

        # --- API Gateway -----------------------------------------------------------------------------
        self.access_logs = logs.LogGroup(self, "AccessLogs", retention=config.log_retention)
        self.rest_api = apigw.RestApi(
            self,
            "RestApi",
            rest_api_name=f"{stack.stack_name}-api",
            description="udop REST API (runs, pipelines, admin)",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            # API Gateway writes access and execution logs through the account's CloudWatch role
            cloud_watch_role=True,
            cloud_watch_role_removal_policy=RemovalPolicy.RETAIN,
            deploy_options=apigw.StageOptions(
                stage_name=config.api_stage_name,
                throttling_rate_limit=config.api_throttle_rate_limit,
                throttling_burst_limit=config.api_throttle_burst_limit,
                tracing_enabled=True,
                metrics_enabled=True,
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,  # request bodies hold definitions and parameters
                access_log_destination=apigw.LogGroupLogDestination(self.access_logs),
                access_log_format=apigw.AccessLogFormat.custom(json.dumps(ACCESS_LOG_FIELDS)),
            ),
        )
        # the stack has its own output (ApiUrl) beside the other udop outputs: drop RestApi's unnamed one
        self.rest_api.node.try_remove_child("Endpoint")
        self.request_validator = self.rest_api.add_request_validator(
            "RequestValidator",
            request_validator_name="udop-params-and-body",
            validate_request_parameters=True,
            validate_request_body=True,
        )
        integration = apigw.LambdaIntegration(self.function, proxy=True)
        # every path and method goes to the app, which routes, authenticates and answers 404/405 itself
        self.rest_api.root.add_method("ANY", integration, request_validator=self.request_validator)
        proxy = self.rest_api.root.add_resource("{proxy+}")
        proxy.add_method(
            "ANY",
            integration,
            request_validator=self.request_validator,
            request_parameters={"method.request.path.proxy": True},
        )

    def _cognito(self, config: DeploymentConfig, network: Network) -> dict[str, str]:
        """The user pool, an app client (no secret: CLIs and browsers), one group per role; the API
        verifies the pool's ID tokens (``aud`` = the app client) and reads the role from their groups."""
        stack = Stack.of(self)
        self.user_pool = cognito.UserPool(
            self,
            "Users",
            user_pool_name=f"{stack.stack_name}-api-users",
            self_sign_up_enabled=False,  # an administrator creates users and puts them in a group
            sign_in_aliases=cognito.SignInAliases(email=True, username=True),
            password_policy=cognito.PasswordPolicy(
                min_length=12,
                require_lowercase=True,
                require_uppercase=True,
                require_digits=True,
                require_symbols=True,
                temp_password_validity=Duration.days(3),
            ),
            mfa=cognito.Mfa.REQUIRED,
            mfa_second_factor=cognito.MfaSecondFactor(sms=False, otp=True),
            account_recovery=cognito.AccountRecovery.EMAIL_ONLY,
            feature_plan=cognito.FeaturePlan.PLUS,
            standard_threat_protection_mode=cognito.StandardThreatProtectionMode.FULL_FUNCTION,
            deletion_protection=config.deletion_protection,
            removal_policy=RemovalPolicy.RETAIN if config.deletion_protection else RemovalPolicy.DESTROY,
        )
        self.user_pool_client = self.user_pool.add_client(
            "Client",
            user_pool_client_name="udop-api",
            generate_secret=False,
            # SRP for SDKs and browsers; password auth (TLS, to Cognito) for `aws cognito-idp initiate-auth`
            auth_flows=cognito.AuthFlow(user_srp=True, user_password=True),
            prevent_user_existence_errors=True,
            id_token_validity=Duration.hours(1),
            access_token_validity=Duration.hours(1),
            refresh_token_validity=Duration.days(30),
        )
        for role in API_ROLES:
            cognito.CfnUserPoolGroup(
                self,
                f"{role.capitalize()}Group",
                user_pool_id=self.user_pool.user_pool_id,
                group_name=role,
                description=f"udop API role '{role}'",
            )
        if config.nat_gateways == 0:
            # without NAT the function reaches the pool's key set (JWKS) through PrivateLink
            endpoint_sg = ec2.SecurityGroup(
                self,
                "CognitoEndpointSg",
                vpc=network.vpc,
                allow_all_outbound=False,
                description="udop Cognito interface endpoint: HTTPS from the functions",
            )
            endpoint_sg.add_ingress_rule(network.functions_sg, ec2.Port.tcp(443), "HTTPS from udop functions")
            network.vpc.add_interface_endpoint(
                "CognitoIdp",
                service=ec2.InterfaceVpcEndpointAwsService.COGNITO_IDP,
                subnets=network.private_subnets,
                security_groups=[endpoint_sg],
                private_dns_enabled=True,
                open=False,
            )
        issuer = f"https://cognito-idp.{stack.region}.{stack.url_suffix}/{self.user_pool.user_pool_id}"
        return {
            "UDOP_JWKS_URL": f"{issuer}/.well-known/jwks.json",
            "UDOP_JWT_ISSUER": issuer,
            "UDOP_JWT_AUDIENCE": self.user_pool_client.user_pool_client_id,
        }

    def _grant(self, storage: Storage, data: Data, runtime: Runtime) -> None:
        """Least privilege for what the API does: deploy definitions (POST /pipelines), start, stop,
        redrive and follow executions, read the metadata database's password."""
        fn = self.function
        # definitions: uploads and status reports under pipelines/, versions the task runner loads
        fn.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:PutObject"],
                resources=[
                    storage.definitions.arn_for_objects("pipelines/*"),
                    storage.definitions.arn_for_objects("versions/*"),
                ],
            )
        )
        # without ListBucket a missing status report reads as AccessDenied instead of NoSuchKey
        fn.add_to_role_policy(
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[storage.definitions.bucket_arn])
        )
        # a backfill on Step Functions: the parent execution's Map reads its logical dates from here
        fn.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:PutObject"], resources=[storage.data.arn_for_objects("runs/*/_backfills/*")]
            )
        )
        data.db_secret.grant_read(fn)
        machines = runtime.state_machine_arn_pattern
        fn.add_to_role_policy(
            iam.PolicyStatement(
                actions=[
                    "states:CreateStateMachine",
                    "states:UpdateStateMachine",
                    "states:DescribeStateMachine",
                    "states:PublishStateMachineVersion",
                    "states:ListStateMachineVersions",
                    "states:StartExecution",
                    "states:ListExecutions",
                ],
                resources=[machines, f"{machines}:*"],
            )
        )
        fn.add_to_role_policy(
            iam.PolicyStatement(
                actions=[
                    "states:DescribeExecution",
                    "states:StopExecution",
                    "states:RedriveExecution",
                    "states:GetExecutionHistory",
                ],
                resources=[runtime.execution_arn_pattern],
            )
        )
        fn.add_to_role_policy(
            iam.PolicyStatement(
                actions=["iam:PassRole"],
                resources=[runtime.deployed_state_machine_role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "states.amazonaws.com"}},
            )
        )
        fn.add_to_role_policy(
            iam.PolicyStatement(
                # finding a state machine by its name, and the vended-log delivery of the machines'
                # logging configuration: these accept no narrower resource
                actions=["states:ListStateMachines", *LOG_DELIVERY_ACTIONS],
                resources=["*"],
            )
        )
