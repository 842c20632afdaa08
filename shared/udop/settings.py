"""Settings read from the environment (prefix ``UDOP_``), validated once at start.

The one base of every process's settings (CLI, API, task runner, deployer, run events, workers):
each settings class derives from ``UdopSettings`` and is read with ``load_settings``, which names
every bad variable in one message. No other module reads ``os.environ`` for its configuration
(``tests/unit/core/test_settings_single_source.py`` holds that).

A Lambda with a missing or malformed variable fails at cold start naming the variable, not at the
first request. Locally everything has a default under ``.udop/`` in the working directory.
"""

from __future__ import annotations

import os
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from udop.errors import ConfigError

__all__ = ["AwsResources", "CelerySettings", "CodeSettings", "LayerBuildSettings", "PlatformSecrets",
           "ProcessSettings", "Settings", "StoreSettings",
           "UdopSettings", "get_settings", "load_settings", "required_variables"]


class UdopSettings(BaseModel):
    """The base of every settings class: ``UDOP_`` variables, frozen, other variables ignored.

    A field is declared once, in the one class that groups it (optional when some process can do
    without it); a process that cannot names it in ``requires``, and a missing one is reported as
    ``UDOP_X is missing`` in the same message as every other bad variable.

    Constructing a class reads its variables from the environment (names matched regardless of
    case); values passed as arguments take precedence. Values are plain text validated by the
    field's type (``1``/``true``/``yes``/``on`` for a flag). There is no ``.env`` file.
    (pydantic-settings did this before: ~70 ms of every ``udop`` command's start for its sources
    of files, clouds and command lines that udop does not use.)"""

    # defaults go through the validators too, so a required field left at None is reported; classes
    # are built when first read (most processes read a few of them)
    model_config = ConfigDict(frozen=True, extra="ignore", validate_default=True, populate_by_name=True,
                              defer_build=True)

    #: the prefix of a field's variable (a field with a ``validation_alias`` is read from the alias)
    env_prefix: ClassVar[str] = "UDOP_"
    #: fields declared optional in a shared class that this process cannot run without
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**_environment_values(type(self)), **values})

    @field_validator("*")
    @classmethod
    def _present_when_required(cls, value: object, info: ValidationInfo) -> object:
        if value is None and info.field_name in cls.requires:
            raise PydanticCustomError("missing", "Field required")
        return value


S = TypeVar("S", bound=UdopSettings)


def _environment_values(cls: type[UdopSettings]) -> dict[str, str]:
    """The fields of ``cls`` set in the environment, by field name (an alias's first variable set wins)."""
    environ = {key.upper(): value for key, value in os.environ.items()}
    found: dict[str, str] = {}
    for name in cls.model_fields:
        for variable in _field_names(cls, name):
            value = environ.get(variable)
            if value is not None:
                found[name] = value
                break
    return found


def _variable(cls: type[UdopSettings], loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "UDOP_*"
    name = str(loc[0])
    if name not in cls.model_fields:  # reported under an alias
        name = next((n for n in cls.model_fields if loc[0] in _field_names(cls, n)), name)
    if name not in cls.model_fields:
        return (cls.env_prefix + name).upper()
    return " or ".join(_field_names(cls, name))


def _field_names(cls: type[UdopSettings], name: str) -> list[str]:
    """The environment variables field ``name`` of ``cls`` is read from."""
    alias = cls.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(a).upper() for a in alias.choices]
    if isinstance(alias, str):
        return [alias.upper()]
    return [(cls.env_prefix + name).upper()]


@cache
def _names(cls: type[UdopSettings]) -> tuple[str, ...]:
    """The environment variables ``cls`` reads."""
    return tuple(n for name in cls.model_fields for n in _field_names(cls, name))


def required_variables(cls: type[UdopSettings]) -> tuple[str, ...]:
    """The variables ``cls`` cannot be loaded without (its required fields and its ``requires``)."""
    return tuple(n for name, field in cls.model_fields.items() if field.is_required() or name in cls.requires
                 for n in _field_names(cls, name))


@lru_cache(maxsize=256)
def _load(cls: type[S], _environment: tuple[str | None, ...]) -> S:
    try:
        return cls()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = _variable(cls, tuple(err["loc"]))
            problems.append(f"{name} is missing" if err["type"] == "missing" else f"{name}: {err['msg']}")
        raise ConfigError(f"{cls.__name__}: environment variable " + "; ".join(problems)) from None


def load_settings(cls: type[S]) -> S:
    """Read ``cls`` from the environment; one ``ConfigError`` naming every bad variable.

    Read again only when one of its variables changed (some settings are looked up per task
    attempt, and tests change variables between calls)."""
    settings: S = _load(cls, tuple(os.environ.get(name) for name in _names(cls)))
    return settings


class StoreSettings(UdopSettings):
    """Where the metadata store and the state store are: optional locally (defaults under the home
    folder, see ``Settings``); the functions that use them require them."""

    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<home>/udop.db")
    state_url: str | None = Field(
        None, description="redis://... for the state store (ElastiCache on AWS); default SQLite in <home>"
    )


class CodeSettings(UdopSettings):
    """Where python tasks' modules are imported from (the server, the task runner, the sandbox)."""

    code_dir: str | None = Field(
        None,
        description="folder put first on sys.path, where python tasks' modules are imported from (e.g. the "
        "project folder holding tasks.py); in server mode its top-level modules are the ones python tasks "
        "may name unless UDOP_PYTHON_MODULES says otherwise",
    )


class PlatformSecrets(UdopSettings):
    """The platform's own secrets: read by the task runner and the functions, never by a definition."""

    state_secret_arn: str | None = Field(None, description="the platform's Redis AUTH secret")
    database_secret_arn: str | None = Field(None, description="the platform's database secret")


class AwsResources(UdopSettings):
    """Where the CLI and the API find the deployed platform (the CDK app prints them as outputs)."""

    data_bucket: str | None = Field(None, description="bucket of datasets and task results")
    definitions_bucket: str | None = Field(None, description="bucket of pipeline definitions")
    task_runner_arn: str | None = Field(None, description="the task runner Lambda the state machines invoke")
    state_machine_role_arn: str | None = Field(None, description="the role the state machines run as")
    state_machine_log_group_arn: str | None = Field(None, description="where deployed machines log")
    scheduler_role_arn: str | None = Field(
        None, description="the role EventBridge Scheduler starts runs as; unset: deploys touch no schedule"
    )
    schedule_group: str = Field("default", description="the EventBridge Scheduler group of udop's schedules")
    trigger_function_arn: str | None = Field(
        None, description="the function S3 trigger rules target (starts a run per object version)")
    stream_runner_arn: str | None = Field(
        None, description="the function stream pipelines' event source mappings invoke (udop deploy)")
    # engine: spark / athena (docs/engines.md): the platform's engines, for machines the deployer makes
    emr_application_id: str | None = Field(None, description="EMR Serverless application of engine: spark")
    emr_job_role_arn: str | None = Field(None, description="the role engine: spark job runs run as")
    spark_entry_point: str | None = Field(None, description="S3 URL of udop's Spark entry script")
    athena_workgroup: str | None = Field(None, description="Athena workgroup of engine: athena queries")
    glue_database: str | None = Field(None, description="Glue database of engine: athena input tables")


class LayerBuildSettings(UdopSettings):
    """How a ``cdk synth`` builds the Lambda layers (``udop_infra.layers``, CDK local bundling): read by
    the CDK app only, never by a pipeline."""

    python312: str | None = Field(
        None, description="a CPython 3.12 interpreter (the Lambda runtime's version) that compiles the "
        "layers' bytecode and runs pip; default: python3.12 on PATH, then pyenv's")
    cache_dir: Path | None = Field(
        None, description="where built layers and downloaded wheels are kept between synths; default "
        "~/.cache/udop")


class CelerySettings(UdopSettings):
    """The Celery executor (``udop run --executor celery``, ``udop worker``): the broker, the result
    backend and the delivery guarantees. Coordinator and workers must read the same values."""

    celery_broker_url: str = Field("redis://127.0.0.1:6379/0", description="the Redis broker of the workers")
    celery_result_url: str | None = Field(
        None, description="where results go (small bodies); default the broker")
    celery_prefix: str = Field(
        "udop", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="prefix of every Redis key and queue: deployments sharing one Redis keep apart")
    celery_queue: str = Field(
        "udop", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
        description="the queue of tasks that name none (a task's queue: sends it elsewhere)")
    celery_visibility_timeout: float = Field(
        3600.0, gt=0, description="seconds after which a task taken by a worker that never acknowledged it "
        "(killed) is delivered again; must exceed the longest task's run time")
    celery_restore_interval: float = Field(
        10.0, gt=0, description="seconds between a worker's sweeps for such tasks")
    celery_single_machine: bool = Field(
        False, description="allow a SQLite metadata store (coordinator and workers on this one machine)")


class ProcessSettings(UdopSettings):
    """How this process logs, traces and fails: read where they are used, in every process."""

    log_format: str | None = Field(None, description="json or text")
    task_log_max_bytes: str | None = Field(None, description="bytes of a task's captured log per attempt")
    debug: str | None = Field(None, description="show tracebacks (the CLI)")
    fault_inject: str | None = Field(None, description="test-only: the crash point (udop.faults)")
    otel_endpoint: str | None = Field(None, description="OTLP/HTTP endpoint for traces")
    otlp_endpoint: str | None = Field(None, validation_alias=AliasChoices(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"))
    otel_service_name: str | None = Field(None, validation_alias="OTEL_SERVICE_NAME")
    powertools_service_name: str = Field("udop", validation_alias="POWERTOOLS_SERVICE_NAME")
    powertools_metrics_namespace: str = Field("udop", validation_alias="POWERTOOLS_METRICS_NAMESPACE")
    lambda_function_name: str | None = Field(None, validation_alias="AWS_LAMBDA_FUNCTION_NAME")
    lambda_log_group_name: str | None = Field(None, validation_alias="AWS_LAMBDA_LOG_GROUP_NAME")
    lambda_log_stream_name: str | None = Field(None, validation_alias="AWS_LAMBDA_LOG_STREAM_NAME")
    aws_region: str | None = Field(None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))
    openlineage: str | None = Field(None, description="1, true, yes or on: emit OpenLineage events")
    openlineage_namespace: str | None = Field(None, validation_alias="OPENLINEAGE_NAMESPACE")


class Settings(StoreSettings):
    home: Path = Field(Path(".udop"), description="local working folder (metadata, data, state)")
    data_root: str | None = Field(None, description="where datasets go; default <home>/data; s3://... on AWS")
    duckdb_memory_limit: str | None = Field(None, description="e.g. '2GB'; DuckDB spills beyond it")
    duckdb_threads: int | None = Field(None, ge=1)
    fuse: bool = Field(True, description="run a transform inside the file load that alone reads it")
    stop_grace: float = Field(
        10.0, gt=0, description="seconds a cancelled or timed-out task attempt running in a thread (a "
        "python task of a server, a scheduler, udop run) may take to return before its run gives it up")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'udop.db').as_posix()}"

    @property
    def resolved_data_root(self) -> str:
        return self.data_root or str((self.home / "data").absolute())


@cache
def get_settings() -> Settings:
    return load_settings(Settings)
