"""Settings of the Lambda functions, validated once at cold start (prefix ``UDOP_``).

A missing or malformed variable raises ``ConfigError`` naming the variable, so a misconfigured
function fails at its first import rather than half-way through a run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from udop.settings import AwsResources, CodeSettings, PlatformSecrets, StoreSettings, load_settings

__all__ = ["DeployerSettings", "EventsSettings", "RunnerSettings", "StreamRunnerSettings", "load_settings"]

# Each field is declared once, in the shared class that groups it (udop.settings); a function lists
# in ``requires`` the ones it cannot start without. The ``if TYPE_CHECKING`` blocks tell mypy what
# ``requires`` guarantees once loaded (set, so ``str``); they declare no field.


class RunnerSettings(PlatformSecrets, AwsResources, StoreSettings, CodeSettings):
    #: data_bucket: datasets under runs/<pipeline>/<run_id>/<task>/; definitions_bucket: the deployed
    #: definition versions; state_url: redis://... (ElastiCache) for idempotency keys and locks
    requires: ClassVar[tuple[str, ...]] = ("data_bucket", "definitions_bucket", "state_url")
    if TYPE_CHECKING:
        data_bucket: str
        definitions_bucket: str
        state_url: str

    tmp_dir: str = Field("/tmp", description="local staging area for a task's inputs and output")


class StreamRunnerSettings(RunnerSettings):
    #: the task runner's settings (tmp_dir: the micro-batches' datasets), other requirements:
    #: definitions_bucket: the deployed versions and which pipeline each source feeds; database_url: the
    #: batches' runs and offsets; state_url (optional here): ledgers of file loads, watermarks
    requires: ClassVar[tuple[str, ...]] = ("definitions_bucket", "database_url")
    if TYPE_CHECKING:
        definitions_bucket: str
        database_url: str


class DeployerSettings(PlatformSecrets, AwsResources, StoreSettings):
    #: database_url: pipeline versions are recorded in the metadata store
    requires: ClassVar[tuple[str, ...]] = (
        "definitions_bucket", "task_runner_arn", "state_machine_role_arn", "database_url"
    )
    if TYPE_CHECKING:
        definitions_bucket: str
        task_runner_arn: str
        state_machine_role_arn: str
        database_url: str


class EventsSettings(PlatformSecrets, AwsResources, StoreSettings):
    #: database_url: run and task records; data_bucket (optional) is where task results are read
    requires: ClassVar[tuple[str, ...]] = ("database_url",)
    if TYPE_CHECKING:
        database_url: str
