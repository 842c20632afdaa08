"""Settings of the Lambda functions, validated once at cold start (prefix ``UDOP_``).

A missing or malformed variable raises ``ConfigError`` naming the variable, so a misconfigured
function fails at its first import rather than half-way through a run.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from udop.errors import ConfigError

__all__ = ["DeployerSettings", "EventsSettings", "RunnerSettings", "load_settings"]


class _AwsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UDOP_", frozen=True, extra="ignore")


class RunnerSettings(_AwsSettings):
    data_bucket: str = Field(description="bucket holding datasets under runs/<pipeline>/<run_id>/<task>/")
    definitions_bucket: str = Field(description="bucket holding the deployed definition versions")
    state_url: str = Field(description="redis://... (ElastiCache): idempotency keys and locks")
    state_secret_arn: str | None = Field(None, description="secret holding the Redis AUTH token")
    tmp_dir: str = Field("/tmp", description="local staging area for a task's inputs and output")
    code_dir: str | None = Field(None, description="folder put on sys.path for python tasks' callables")


class DeployerSettings(_AwsSettings):
    definitions_bucket: str
    task_runner_arn: str = Field(description="the task runner Lambda the state machines invoke")
    state_machine_role_arn: str = Field(description="the role the state machines run as")
    database_url: str = Field(description="metadata store URL (pipeline versions are recorded there)")
    database_secret_arn: str | None = Field(None, description="secret holding the database password")
    state_machine_log_group_arn: str | None = Field(None, description="where deployed machines log")


class EventsSettings(_AwsSettings):
    database_url: str = Field(description="metadata store URL (run and task records)")
    database_secret_arn: str | None = Field(None, description="secret holding the database password")
    data_bucket: str | None = Field(None, description="where task results (checks, lineage) are read")


S = TypeVar("S", bound=_AwsSettings)


def load_settings(cls: type[S]) -> S:
    """Read ``cls`` from the environment; one ``ConfigError`` naming every bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "UDOP_" + str(err["loc"][0]).upper() if err["loc"] else "UDOP_*"
            problems.append(f"{name} is missing" if err["type"] == "missing" else f"{name}: {err['msg']}")
        raise ConfigError(f"{cls.__name__}: environment variable " + "; ".join(problems)) from None
