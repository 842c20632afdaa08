"""``UdopPlatform``: the udop platform as one typed CDK entry point (``pip install 'udop[cdk]'``).

A team's CDK app creates it like any other stack::

    import aws_cdk as cdk
    from udop_infra.platform import UdopPlatform, UdopPlatformProps

    app = cdk.App()
    UdopPlatform(app, "Udop", props=UdopPlatformProps(pipelines_dir="pipelines", nat_gateways=1,
                                                     alarm_email="data@example.com"))
    app.synth()

Its settings are typed props; a prop left ``None`` falls back to the CDK context key of the same
meaning (``udop:natGateways`` ..., see docs/deployment.md) and then to its default, and every value
is checked as context is (one ``ContextError`` naming the setting). The stack's resources and
logical ids are those of ``UdopStack``; udop's own ``infra/app.py`` is one user of it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from constructs import Construct

from udop_infra.config import REPO_ROOT, SOURCE_TREE, ContextError, DeploymentConfig
from udop_infra.stack import UdopStack

__all__ = ["UdopPlatform", "UdopPlatformProps", "synth_error"]

#: prop -> the context key it stands for
_CONTEXT_KEY = {
    "pipelines_dir": "udop:pipelinesDir",
    "nat_gateways": "udop:natGateways",
    "max_azs": "udop:maxAzs",
    "deletion_protection": "udop:deletionProtection",
    "run_data_expiration_days": "udop:runDataExpirationDays",
    "db_instance_type": "udop:dbInstanceType",
    "db_multi_az": "udop:dbMultiAz",
    "db_backup_retention_days": "udop:dbBackupRetentionDays",
    "cache_node_type": "udop:cacheNodeType",
    "cache_replicas": "udop:cacheReplicas",
    "log_retention_days": "udop:logRetentionDays",
    "task_runner_memory_mb": "udop:taskRunnerMemoryMb",
    "alarm_email": "udop:alarmEmail",
    "api_stage_name": "udop:apiStageName",
    "api_throttle_rate_limit": "udop:apiThrottleRateLimit",
    "api_throttle_burst_limit": "udop:apiThrottleBurstLimit",
    "jwks_url": "udop:jwksUrl",
    "jwt_issuer": "udop:jwtIssuer",
    "jwt_audience": "udop:jwtAudience",
    "assets": "udop:assets",
    "spark_engine": "udop:sparkEngine",
    "spark_max_vcpu": "udop:sparkMaxVcpu",
    "spark_max_memory_gb": "udop:sparkMaxMemoryGb",
    "spark_idle_minutes": "udop:sparkIdleMinutes",
    "athena_engine": "udop:athenaEngine",
    "athena_bytes_scanned_cutoff": "udop:athenaBytesScannedCutoff",
}


@dataclass(frozen=True)
class UdopPlatformProps:
    """The platform's settings; ``None``: the context key's value, else its default."""

    #: folder of pipeline definitions (and their python code) compiled at synth time; relative to
    #: the CDK app's working directory
    pipelines_dir: str | Path | None = None
    #: NAT gateways (0: functions reach AWS through VPC endpoints only)
    nat_gateways: int | None = None
    max_azs: int | None = None
    #: RDS deletion protection and RETAIN for buckets, database, cache
    deletion_protection: bool | None = None
    run_data_expiration_days: int | None = None
    #: database size: the RDS PostgreSQL instance type, e.g. "t4g.small"
    db_instance_type: str | None = None
    db_multi_az: bool | None = None
    db_backup_retention_days: int | None = None
    cache_node_type: str | None = None
    cache_replicas: int | None = None
    log_retention_days: int | None = None
    task_runner_memory_mb: int | None = None
    #: e-mail address subscribed to the alarms' topic
    alarm_email: str | None = None
    api_stage_name: str | None = None
    api_throttle_rate_limit: int | None = None
    api_throttle_burst_limit: int | None = None
    #: API auth by an external OIDC issuer (else a Cognito user pool of the stack)
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    #: "build" (layers built during synth, cached) or "placeholder" (synth-only checks, never deploy)
    assets: str | None = None
    #: engine: spark / athena tasks (docs/engines.md): the EMR Serverless application and the Athena
    #: workgroup are created when a pipeline uses them, or always with these set to True
    spark_engine: bool | None = None
    spark_max_vcpu: int | None = None
    spark_max_memory_gb: int | None = None
    spark_idle_minutes: int | None = None
    athena_engine: bool | None = None
    #: the workgroup's per-query bytes-scanned limit (a query over it is cancelled)
    athena_bytes_scanned_cutoff: int | None = None

    def context(self) -> dict[str, Any]:
        """The props that are set, as the context keys they stand for."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[_CONTEXT_KEY[f.name]] = str(value) if isinstance(value, Path) else value
        return out


class UdopPlatform(UdopStack):
    """The udop platform stack: buckets, database, cache, functions, pipelines' state machines, REST
    API, alarms, and the outputs the ``udop`` CLI reads (``udop.aws.platform``)."""

    def __init__(self, scope: Construct, id: str = "Udop", *, props: UdopPlatformProps | None = None,
                 **kwargs: Any) -> None:
        overrides = (props or UdopPlatformProps()).context()
        # a relative pipelines_dir prop is the team app's own folder, as is the context key's value in an
        # installed udop; in udop's source tree the context key keeps its meaning (the repository's)
        base = Path.cwd() if "udop:pipelinesDir" in overrides or not SOURCE_TREE else REPO_ROOT
        config = DeploymentConfig.from_node(scope.node, overrides, base_dir=base)
        self.props = props
        super().__init__(scope, id, config=config, **kwargs)


def synth_error(exc: BaseException) -> str | None:
    """The one line to print for a synth stopped by bad input: a setting (``ContextError``) or a layer
    that could not be built (raised inside CDK's bundling, so it arrives wrapped by jsii); ``None``
    for anything else (a bug: let its traceback show)."""
    if isinstance(exc, ContextError):
        return str(exc)
    text = str(exc)
    if isinstance(exc, RuntimeError) and text.startswith("Failed to bundle asset") and "/Runtime/" in text:
        layer = text.split("/Runtime/", 1)[1].split("Layer/", 1)[0].lower()
        return f"layer '{layer}': {text.rsplit('RuntimeError: ', 1)[-1]}"
    return None
