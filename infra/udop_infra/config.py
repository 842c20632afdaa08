"""Deployment settings read from CDK context (``cdk.json`` or ``-c key=value``), checked once.

Every setting has a safe default; a malformed value stops the synth with one line naming the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import aws_logs as logs
from constructs import Node

REPO_ROOT = Path(__file__).resolve().parents[2]
#: udop's own source tree (infra/app.py beside this package), not an installed wheel
SOURCE_TREE = (REPO_ROOT / "infra" / "app.py").is_file()

#: context key -> (default, help); the names appear in docs/deployment.md
CONTEXT_KEYS: dict[str, tuple[Any, str]] = {
    "udop:natGateways": (0, "NAT gateways (0: functions reach AWS through VPC endpoints only)"),
    "udop:maxAzs": (2, "availability zones for the VPC"),
    "udop:deletionProtection": (True, "RDS deletion protection and RETAIN for buckets, database, cache"),
    "udop:runDataExpirationDays": (30, "days after which run data under runs/ expires (0: never)"),
    "udop:dbInstanceType": ("t4g.micro", "RDS PostgreSQL instance type"),
    "udop:dbMultiAz": (False, "RDS Multi-AZ standby"),
    "udop:dbBackupRetentionDays": (7, "RDS automated backup retention"),
    "udop:cacheNodeType": ("cache.t4g.micro", "ElastiCache node type"),
    "udop:cacheReplicas": (0, "ElastiCache replicas (>= 1 turns on Multi-AZ automatic failover)"),
    "udop:logRetentionDays": (30, "CloudWatch Logs retention for functions and state machines"),
    "udop:taskRunnerMemoryMb": (2048, "task runner memory (CPU scales with it)"),
    "udop:alarmEmail": ("", "e-mail address subscribed to the alarm topic (empty: none)"),
    "udop:pipelinesDir": ("pipelines", "folder of pipeline definitions compiled at synth time"),
    "udop:apiStageName": ("prod", "API Gateway stage of the REST API (the URL's first path segment)"),
    "udop:apiThrottleRateLimit": (50, "REST API stage throttling: steady requests per second"),
    "udop:apiThrottleBurstLimit": (100, "REST API stage throttling: burst of requests above the rate"),
    "udop:jwksUrl": (
        "",
        "JWKS URL of an external OIDC issuer for the API's bearer tokens (empty: a Cognito user "
        "pool is created and its keys are used)",
    ),
    "udop:jwtIssuer": ("", "required 'iss' of bearer tokens when udop:jwksUrl is set"),
    "udop:jwtAudience": ("", "required 'aud' of bearer tokens when udop:jwksUrl is set"),
    # engine: spark / engine: athena (udop_infra.engines): created when a pipeline uses them or asked for
    "udop:sparkEngine": (False, "create the EMR Serverless application even if no pipeline uses it yet"),
    "udop:sparkMaxVcpu": (16, "EMR Serverless application's maximum capacity, vCPUs"),
    "udop:sparkMaxMemoryGb": (64, "EMR Serverless application's maximum capacity, GB of memory"),
    "udop:sparkIdleMinutes": (15, "EMR Serverless application stops after this many idle minutes"),
    "udop:athenaEngine": (False, "create the Athena workgroup even if no pipeline uses it yet"),
    "udop:athenaBytesScannedCutoff": (100 * 1024**3, "Athena workgroup's per-query bytes-scanned limit"),
    "udop:assets": (
        "build",
        "'build': the layers built during synth (CDK local bundling, cached under ~/.cache/udop); "
        "'placeholder': tiny stand-ins, for synth-only checks",
    ),
}


#: CloudWatch Logs accepts only these retention periods (days)
RETENTION_DAYS = {
    1: "ONE_DAY",
    3: "THREE_DAYS",
    5: "FIVE_DAYS",
    7: "ONE_WEEK",
    14: "TWO_WEEKS",
    30: "ONE_MONTH",
    60: "TWO_MONTHS",
    90: "THREE_MONTHS",
    120: "FOUR_MONTHS",
    150: "FIVE_MONTHS",
    180: "SIX_MONTHS",
    365: "ONE_YEAR",
    400: "THIRTEEN_MONTHS",
    545: "EIGHTEEN_MONTHS",
    731: "TWO_YEARS",
    1827: "FIVE_YEARS",
    3653: "TEN_YEARS",
}


class ContextError(ValueError):
    """A context value that cannot be used; the message names the key."""


@dataclass(frozen=True)
class DeploymentConfig:
    nat_gateways: int
    max_azs: int
    deletion_protection: bool
    run_data_expiration_days: int
    db_instance_type: str
    db_multi_az: bool
    db_backup_retention_days: int
    cache_node_type: str
    cache_replicas: int
    log_retention_days: int
    task_runner_memory_mb: int
    alarm_email: str
    pipelines_dir: Path
    assets: str
    # the REST API (udop_infra.api); defaults so that a config built by hand needs no API settings
    api_stage_name: str = "prod"
    api_throttle_rate_limit: int = 50
    api_throttle_burst_limit: int = 100
    jwks_url: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    spark_engine: bool = False
    spark_max_vcpu: int = 16
    spark_max_memory_gb: int = 64
    spark_idle_minutes: int = 15
    athena_engine: bool = False
    athena_bytes_scanned_cutoff: int = 100 * 1024**3

    @property
    def external_issuer(self) -> bool:
        """Bearer tokens come from an OIDC issuer given in context, not a Cognito pool of ours."""
        return bool(self.jwks_url)

    @property
    def log_retention(self) -> logs.RetentionDays:
        return getattr(logs.RetentionDays, RETENTION_DAYS[self.log_retention_days])  # type: ignore[no-any-return]

    @classmethod
    def from_node(cls, node: Node, overrides: dict[str, Any] | None = None, *,
                  base_dir: Path = REPO_ROOT) -> DeploymentConfig:
        """From context; ``overrides`` (context key -> value, e.g. ``UdopPlatformProps``) win and are
        checked the same way. A relative ``udop:pipelinesDir`` is taken from ``base_dir``."""

        def get(key: str) -> Any:
            value = (overrides or {}).get(key)
            if value is None:
                value = node.try_get_context(key)
            return CONTEXT_KEYS[key][0] if value is None else value

        pipelines_dir = Path(str(get("udop:pipelinesDir")))
        assets = str(get("udop:assets"))
        if assets not in {"build", "placeholder"}:
            raise ContextError(f"context udop:assets: {assets!r} is not 'build' or 'placeholder'")
        retention = _int(get, "udop:logRetentionDays", minimum=1)
        if retention not in RETENTION_DAYS:
            raise ContextError(
                f"context udop:logRetentionDays: {retention} is not one of "
                f"{', '.join(map(str, RETENTION_DAYS))}"
            )
        stage = str(get("udop:apiStageName"))
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", stage):
            raise ContextError(
                f"context udop:apiStageName: {stage!r} must be 1-128 letters, digits, '-' or '_'"
            )
        jwks_url, issuer, audience = (
            str(get(key)).strip() for key in ("udop:jwksUrl", "udop:jwtIssuer", "udop:jwtAudience")
        )
        if jwks_url and not jwks_url.startswith("https://"):
            raise ContextError(f"context udop:jwksUrl: {jwks_url!r} must be an https:// URL")
        if (issuer or audience) and not jwks_url:
            raise ContextError(
                "context udop:jwtIssuer/udop:jwtAudience: set udop:jwksUrl too (without it the "
                "stack's own Cognito user pool issues the tokens and sets both)"
            )
        return cls(
            nat_gateways=_int(get, "udop:natGateways", minimum=0),
            max_azs=_int(get, "udop:maxAzs", minimum=1),
            deletion_protection=_bool(get, "udop:deletionProtection"),
            run_data_expiration_days=_int(get, "udop:runDataExpirationDays", minimum=0),
            db_instance_type=str(get("udop:dbInstanceType")),
            db_multi_az=_bool(get, "udop:dbMultiAz"),
            db_backup_retention_days=_int(get, "udop:dbBackupRetentionDays", minimum=1),
            cache_node_type=str(get("udop:cacheNodeType")),
            cache_replicas=_int(get, "udop:cacheReplicas", minimum=0),
            log_retention_days=retention,
            task_runner_memory_mb=_int(get, "udop:taskRunnerMemoryMb", minimum=128),
            alarm_email=str(get("udop:alarmEmail")),
            pipelines_dir=pipelines_dir if pipelines_dir.is_absolute() else base_dir / pipelines_dir,
            assets=assets,
            api_stage_name=stage,
            api_throttle_rate_limit=_int(get, "udop:apiThrottleRateLimit", minimum=1),
            api_throttle_burst_limit=_int(get, "udop:apiThrottleBurstLimit", minimum=1),
            jwks_url=jwks_url,
            jwt_issuer=issuer,
            jwt_audience=audience,
            spark_engine=_bool(get, "udop:sparkEngine"),
            spark_max_vcpu=_int(get, "udop:sparkMaxVcpu", minimum=1),
            spark_max_memory_gb=_int(get, "udop:sparkMaxMemoryGb", minimum=1),
            spark_idle_minutes=_int(get, "udop:sparkIdleMinutes", minimum=1),
            athena_engine=_bool(get, "udop:athenaEngine"),
            # Athena's smallest per-query cutoff is 10 MB
            athena_bytes_scanned_cutoff=_int(get, "udop:athenaBytesScannedCutoff", minimum=10_000_000),
        )


def _int(get: Any, key: str, *, minimum: int) -> int:
    value = get(key)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ContextError(f"context {key}: {value!r} is not a whole number") from None
    if isinstance(value, bool) or number < minimum:
        raise ContextError(f"context {key}: {value!r} must be a whole number >= {minimum}")
    return number


def _bool(get: Any, key: str) -> bool:
    value = get(key)
    if isinstance(value, bool):
        return value
    if str(value).lower() in {"true", "1", "yes"}:
        return True
    if str(value).lower() in {"false", "0", "no"}:
        return False
    raise ContextError(f"context {key}: {value!r} is not true or false")
