"""Data services: RDS PostgreSQL (metadata) behind RDS Proxy, and ElastiCache Redis (state)."""

from __future__ import annotations

from typing import TypedDict

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticache as elasticache
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from udop_infra.config import DeploymentConfig
from udop_infra.network import Network

DB_NAME = "udop"
DB_USER = "udop"
DB_PORT = 5432
REDIS_PORT = 6379


class Data(Construct):
    """The metadata database (encrypted, backed up, private, creds in Secrets Manager, RDS Proxy in
    front for Lambda's many short connections) and the state cache (TLS, AUTH token, encrypted)."""

    def __init__(self, scope: Construct, id: str, *, config: DeploymentConfig, network: Network) -> None:
        super().__init__(scope, id)
        removal = RemovalPolicy.RETAIN if config.deletion_protection else RemovalPolicy.DESTROY
        vpc = network.vpc

        # --- PostgreSQL -------------------------------------------------------------------------
        self.db_sg = ec2.SecurityGroup(
            self,
            "DatabaseSg",
            vpc=vpc,
            allow_all_outbound=False,
            description="udop metadata database: PostgreSQL from the RDS Proxy",
        )
        self.proxy_sg = ec2.SecurityGroup(
            self,
            "ProxySg",
            vpc=vpc,
            allow_all_outbound=False,
            description="udop RDS Proxy: PostgreSQL from the functions",
        )
        self.db_sg.add_ingress_rule(self.proxy_sg, ec2.Port.tcp(DB_PORT), "PostgreSQL from the RDS Proxy")
        self.proxy_sg.add_egress_rule(self.db_sg, ec2.Port.tcp(DB_PORT), "PostgreSQL to the database")
        self.proxy_sg.add_ingress_rule(
            network.functions_sg, ec2.Port.tcp(DB_PORT), "PostgreSQL from functions"
        )
        network.functions_sg.add_egress_rule(
            self.proxy_sg, ec2.Port.tcp(DB_PORT), "PostgreSQL to the RDS Proxy"
        )

        self.database = rds.DatabaseInstance(
            self,
            "Database",
            engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_17_6),
            instance_type=ec2.InstanceType(config.db_instance_type),
            vpc=vpc,
            vpc_subnets=network.private_subnets,
            security_groups=[self.db_sg],
            database_name=DB_NAME,
            credentials=rds.Credentials.from_generated_secret(
                DB_USER, secret_name=f"{Stack.of(self).stack_name}/metadata-db"
            ),
            port=DB_PORT,
            storage_encrypted=True,
            allocated_storage=20,
            max_allocated_storage=100,
            storage_type=rds.StorageType.GP3,
            multi_az=config.db_multi_az,
            backup_retention=Duration.days(config.db_backup_retention_days),
            deletion_protection=config.deletion_protection,
            removal_policy=RemovalPolicy.SNAPSHOT if config.deletion_protection else RemovalPolicy.DESTROY,
            iam_authentication=True,
            publicly_accessible=False,
            auto_minor_version_upgrade=True,
            cloudwatch_logs_exports=["postgresql"],
            enable_performance_insights=False,
            parameters={"rds.force_ssl": "1"},
        )
        assert self.database.secret is not None
        self.db_secret = self.database.secret
        self.proxy = self.database.add_proxy(
            "Proxy",
            secrets=[self.db_secret],
            vpc=vpc,
            vpc_subnets=network.private_subnets,
            security_groups=[self.proxy_sg],
            require_tls=True,
            iam_auth=False,
            idle_client_timeout=Duration.minutes(5),
        )

        # --- Redis --------------------------------------------------------------------------------
        self.cache_sg = ec2.SecurityGroup(
            self,
            "CacheSg",
            vpc=vpc,
            allow_all_outbound=False,
            description="udop state cache: Redis (TLS) from the functions",
        )
        self.cache_sg.add_ingress_rule(network.functions_sg, ec2.Port.tcp(REDIS_PORT), "Redis from functions")
        network.functions_sg.add_egress_rule(self.cache_sg, ec2.Port.tcp(REDIS_PORT), "Redis to the cache")
        # Redis AUTH tokens: 16-128 printable characters without '@', '"' or '/'
        self.cache_secret = secretsmanager.Secret(
            self,
            "CacheAuthToken",
            secret_name=f"{Stack.of(self).stack_name}/state-cache-auth",
            description="AUTH token of the udop state cache (ElastiCache Redis)",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                exclude_punctuation=True, password_length=64
            ),
            removal_policy=removal,
        )
        subnet_group = elasticache.CfnSubnetGroup(
            self,
            "CacheSubnets",
            description="udop state cache subnets (private)",
            subnet_ids=vpc.select_subnets(**_selection_kwargs(network.private_subnets)).subnet_ids,
        )
        multi_az = config.cache_replicas >= 1
        self.cache = elasticache.CfnReplicationGroup(
            self,
            "Cache",
            replication_group_description="udop state store (locks, idempotency, watermarks)",
            engine="redis",
            engine_version="7.1",
            cache_node_type=config.cache_node_type,
            num_cache_clusters=1 + config.cache_replicas,
            automatic_failover_enabled=multi_az,
            multi_az_enabled=multi_az,
            cache_subnet_group_name=subnet_group.ref,
            security_group_ids=[self.cache_sg.security_group_id],
            port=REDIS_PORT,
            transit_encryption_enabled=True,
            transit_encryption_mode="required",
            at_rest_encryption_enabled=True,
            auth_token=self.cache_secret.secret_value.unsafe_unwrap(),  # a {{resolve:...}} reference
            snapshot_retention_limit=1,
            auto_minor_version_upgrade=True,
        )
        self.cache.apply_removal_policy(removal)

    @property
    def database_url(self) -> str:
        """The metadata store URL without a password; the functions read it from ``db_secret``."""
        return f"postgresql+psycopg://{DB_USER}@{self.proxy.endpoint}:{DB_PORT}/{DB_NAME}?sslmode=require"

    @property
    def state_url(self) -> str:
        """The state store URL (TLS) without the AUTH token; the functions read it from ``cache_secret``."""
        return (
            f"rediss://{self.cache.attr_primary_end_point_address}:{self.cache.attr_primary_end_point_port}/0"
        )


class _Selection(TypedDict):
    subnet_type: ec2.SubnetType | None


def _selection_kwargs(selection: ec2.SubnetSelection) -> _Selection:
    return {"subnet_type": selection.subnet_type}
