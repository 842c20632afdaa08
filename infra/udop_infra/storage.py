"""Storage: the definitions bucket (pipelines/*.yaml, versioned) and the data bucket (runs/...)."""

from __future__ import annotations

from typing import TypedDict

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

from udop_infra.config import DeploymentConfig


class _BucketDefaults(TypedDict):
    """What every udop bucket sets (the keyword arguments of ``s3.Bucket``)."""

    encryption: s3.BucketEncryption
    enforce_ssl: bool
    minimum_tls_version: float
    block_public_access: s3.BlockPublicAccess
    object_ownership: s3.ObjectOwnership
    removal_policy: RemovalPolicy
    auto_delete_objects: bool


class Storage(Construct):
    """Both buckets encrypted, TLS-only, public access blocked and access-logged."""

    def __init__(self, scope: Construct, id: str, *, config: DeploymentConfig) -> None:
        super().__init__(scope, id)
        removal = RemovalPolicy.RETAIN if config.deletion_protection else RemovalPolicy.DESTROY
        common: _BucketDefaults = {
            "encryption": s3.BucketEncryption.S3_MANAGED,
            "enforce_ssl": True,
            "minimum_tls_version": 1.2,
            "block_public_access": s3.BlockPublicAccess.BLOCK_ALL,
            "object_ownership": s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            "removal_policy": removal,
            "auto_delete_objects": False,
        }
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            **common,
            lifecycle_rules=[s3.LifecycleRule(id="expire-access-logs", expiration=Duration.days(90))],
        )
        self.definitions = s3.Bucket(
            self,
            "Definitions",
            **common,
            versioned=True,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="definitions/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-old-definition-versions", noncurrent_version_expiration=Duration.days(365)
                )
            ],
        )
        data_rules = [
            s3.LifecycleRule(
                id="abort-incomplete-uploads", abort_incomplete_multipart_upload_after=Duration.days(2)
            )
        ]
        if config.run_data_expiration_days:
            data_rules.append(
                s3.LifecycleRule(
                    id="expire-run-data",
                    prefix="runs/",
                    expiration=Duration.days(config.run_data_expiration_days),
                )
            )
        self.data = s3.Bucket(
            self,
            "Data",
            **common,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="data/",
            lifecycle_rules=data_rules,
        )
