"""Network: a VPC whose private subnets reach AWS APIs through VPC endpoints, not a NAT gateway."""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from udop_infra.config import DeploymentConfig

#: interface endpoints the functions need: Step Functions (deployer, redrive), Secrets Manager
#: (database and cache credentials), CloudWatch Logs and Monitoring
INTERFACE_ENDPOINTS = {
    "StepFunctions": ec2.InterfaceVpcEndpointAwsService.STEP_FUNCTIONS,
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "Monitoring": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING,
    # EventBridge Scheduler: the deployer and the API create the pipelines' schedules
    "Scheduler": ec2.InterfaceVpcEndpointAwsService("scheduler"),
}


class Network(Construct):
    """VPC, flow logs, S3 gateway endpoint, interface endpoints and the functions' security group."""

    def __init__(self, scope: Construct, id: str, *, config: DeploymentConfig) -> None:
        super().__init__(scope, id)
        with_nat = config.nat_gateways > 0
        private_type = ec2.SubnetType.PRIVATE_WITH_EGRESS if with_nat else ec2.SubnetType.PRIVATE_ISOLATED
        subnets = [ec2.SubnetConfiguration(name="private", subnet_type=private_type, cidr_mask=22)]
        if with_nat:
            subnets.insert(
                0, ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24)
            )
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr("10.42.0.0/16"),
            max_azs=config.max_azs,
            nat_gateways=config.nat_gateways,
            subnet_configuration=subnets,
            restrict_default_security_group=True,
        )
        self.private_subnets = ec2.SubnetSelection(subnet_type=private_type)
        flow_log_group = logs.LogGroup(self, "FlowLogs", retention=config.log_retention)
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_log_group),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )
        self.vpc.add_gateway_endpoint(
            "S3", service=ec2.GatewayVpcEndpointAwsService.S3, subnets=[self.private_subnets]
        )

        self.functions_sg = ec2.SecurityGroup(
            self,
            "FunctionsSg",
            vpc=self.vpc,
            allow_all_outbound=False,
            description="udop Lambda functions: out to the database proxy, the cache, endpoints and S3",
        )
        endpoints_sg = ec2.SecurityGroup(
            self,
            "EndpointsSg",
            vpc=self.vpc,
            allow_all_outbound=False,
            description="udop interface VPC endpoints: HTTPS from the functions",
        )
        endpoints_sg.add_ingress_rule(self.functions_sg, ec2.Port.tcp(443), "HTTPS from udop functions")
        self.functions_sg.add_egress_rule(endpoints_sg, ec2.Port.tcp(443), "HTTPS to interface endpoints")
        # S3 is reached through the gateway endpoint (a route, not an address we could name here
        # without a lookup); without NAT the private subnets have no route to the internet, so HTTPS
        # "anywhere" means S3 and the endpoints, and with NAT also the HTTP connectors' APIs
        self.functions_sg.add_egress_rule(
            ec2.Peer.any_ipv4(),
            ec2.Port.tcp(443),
            "HTTPS to S3 (gateway endpoint) and, with NAT, the internet",
        )
        self.endpoints = {
            name: self.vpc.add_interface_endpoint(
                name,
                service=service,
                subnets=self.private_subnets,
                security_groups=[endpoints_sg],
                private_dns_enabled=True,
                open=False,
            )
            for name, service in INTERFACE_ENDPOINTS.items()
        }
