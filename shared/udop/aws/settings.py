"""Settings of the Lambda functions, validated once at cold start (prefix ``UDOP_``).

A missing or malformed variable raises ``ConfigError`` naming the variable, so a misconfigured
function fails at its first import rather than half-way through a run.
"""

from __future__ import annotations

from pydantic import Field

from udop.settings import PlatformSecrets, load_settings

__all__ = ["DeployerSettings", "EventsSettings", "RunnerSettings", "load_settings"]


class RunnerSettings(PlatformSecrets):
    data_bucket: str = Field(description="bucket holding datasets under runs/<pipeline>/<run_id>/<task>/")
    definitions_bucket: str = Field(description="bucket holding the deployed definition versions")
    state_url: str = Field(description="redis://... (ElastiCache): idempotency keys and locks")
    tmp_dir: str = Field("/tmp", description="local staging area for a task's inputs and output")
    code_dir: str | None = Field(None, description="folder put on sys.path for python tasks' callables")


class DeployerSettings(PlatformSecrets):
    definitions_bucket: str
    task_runner_arn: str = Field(description="the task runner Lambda the state machines invoke")
    state_machine_role_arn: str = Field(description="the role the state machines run as")
    database_url: str = Field(description="metadata store URL (pipeline versions are recorded there)")
    state_machine_log_group_arn: str | None = Field(None, description="where deployed machines log")


class EventsSettings(PlatformSecrets):
    database_url: str = Field(description="metadata store URL (run and task records)")
    data_bucket: str | None = Field(None, description="where task results (checks, lineage) are read")
