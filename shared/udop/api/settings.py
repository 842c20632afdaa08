"""Settings of the REST API: the core settings plus authentication and where runs go.

Read from ``UDOP_*`` environment variables once, at start: a Lambda with a malformed variable fails at
cold start naming it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from udop.settings import AwsResources, CodeSettings, PlatformSecrets, Settings, load_settings

__all__ = ["ApiSettings", "load_api_settings"]

#: HS256 with a shorter secret can be brute-forced offline from one token (RFC 7518 section 3.2)
MIN_SECRET_BYTES = 32


class ApiSettings(Settings, AwsResources, PlatformSecrets, CodeSettings):
    # the platform's buckets and ARNs (AwsResources) are needed when executor is stepfunctions;
    # database_secret_arn (PlatformSecrets): on AWS, the metadata database's password, read at cold start
    jwt_secret: SecretStr | None = Field(
        None, description="HS256 shared secret (at least 32 bytes) for locally issued tokens"
    )
    jwks_url: str | None = Field(
        None,
        description="JWKS URL of an OIDC issuer (Cognito: https://cognito-idp.<region>.amazonaws.com/"
        "<pool>/.well-known/jwks.json); RS256/ES256 tokens are verified against it",
    )
    jwks_refresh_cooldown: float = Field(
        30.0, ge=0, description="seconds between forced JWKS refetches for an unknown key id (0: no limit)"
    )
    jwt_issuer: str | None = Field(None, description="required 'iss' claim, when set")
    jwt_audience: str | None = Field(None, description="required 'aud' claim, when set")
    jwt_max_lifetime: int = Field(
        86400,
        ge=0,
        description="longest token lifetime accepted, in seconds ('exp' - 'iat'); tokens without 'iat' are "
        "refused while it is set; 0 turns the check off",
    )
    jwt_leeway: int = Field(
        30, ge=0, le=300, description="clock skew allowed when checking 'exp', 'nbf' and 'iat', in seconds"
    )
    auth_cache_seconds: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="how long a verified API key is remembered, i.e. the longest an API key revoked on "
        "another server instance (or with the CLI) keeps working here; a key revoked through this server "
        "stops at once. A JWT is remembered until its 'exp' (JWKS-signed ones also at most this long). "
        "0 verifies every request",
    )
    jwt_role_claim: str = Field("role", description="claim holding the role; 'cognito:groups' is also read")
    executor: Literal["local", "stepfunctions", "celery"] = Field(
        "local", description="where triggered runs go: a background LocalExecutor, Step Functions, or Celery "
        "workers (this server follows each run; its attempts run on `udop worker` processes)"
    )
    local_workers: int = Field(4, ge=1, le=64, description="worker threads of each local run")
    max_concurrent_runs: int = Field(4, ge=1, le=256, description="local runs executing at once")
    api_threads: int = Field(
        40,
        ge=1,
        le=256,
        description="threads serving blocking handlers (store calls); 40 is anyio's default. Compare "
        "with benchmarks/api_runs.py before changing it: on a loaded 2-core machine 2, 8 and 40 were "
        "within the run-to-run noise",
    )
    max_body_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        description="largest request body accepted; refused from Content-Length, or as soon as a "
        "streamed body passes it, before anything reads it (a definition may have at most 10 MiB)",
    )
    definition_parse_seconds: float = Field(
        10.0, gt=0, le=300, description="time budget for parsing one uploaded definition (off the event loop)"
    )
    definition_parsers: int = Field(
        2, ge=1, le=64, description="uploaded definitions parsed at once; more wait their turn"
    )
    auth_failure_limit: int = Field(
        30,
        ge=0,
        description="failed authentications a client (by address) may have within auth_failure_window "
        "before it gets 429 with Retry-After; 0 turns the limit off",
    )
    auth_failure_window: float = Field(60.0, gt=0, description="seconds the failures above are counted over")
    audit_retention_days: int = Field(
        365, ge=0, description="audit rows older than this many days are deleted; 0 keeps them forever"
    )
    api_root_path: str = Field("", description="path prefix behind a proxy, e.g. '/prod' on API Gateway")

    @field_validator("jwt_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes long")
        return value


def load_api_settings() -> ApiSettings:
    """Read the settings from the environment; a bad variable is a ``ConfigError`` naming it."""
    return load_settings(ApiSettings)
