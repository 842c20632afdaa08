"""Deploy a definition as a Step Functions state machine ``udop-<name>``: the deployer Lambda's core.

validate -> record the version in the metadata store -> store the validated definition where the
task runner reads it -> compile -> create or update the state machine (publishing a version) ->
write ``pipelines/<name>.status.json``. Anything wrong before the state machine call leaves the
existing state machine untouched; the status report lists the errors with their paths.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from udop.aws.definitions import canonical_definition, put_version, status_key
from udop.aws.observability import logger, metrics
from udop.aws.s3 import get_json, put_json
from udop.errors import InputError, SpecError, SpecErrors
from udop.sandbox import Policy

__all__ = ["DeployResult", "deploy_definition", "deploy_s3_object", "engine_substitutions",
           "find_state_machine", "pipeline_name_of_key", "state_machine_name"]

SOURCE_SUFFIXES = (".yaml", ".yml", ".json")


def state_machine_name(pipeline: str) -> str:
    return f"udop-{pipeline}"


def pipeline_name_of_key(key: str) -> str | None:
    """``pipelines/<name>.yaml|.yml|.json`` -> name; None for any other key (status reports too)."""
    if not key.startswith("pipelines/") or key.endswith(".status.json"):
        return None
    base = key.removeprefix("pipelines/")
    if "/" in base:
        return None
    for suffix in SOURCE_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            return base.removesuffix(suffix)
    return None


@dataclass
class DeployResult:
    ok: bool
    pipeline: str
    source: str
    version: int | None = None
    content_hash: str | None = None
    state_machine_arn: str | None = None
    state_machine_version_arn: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    skipped: bool = False  # the same content was already deployed
    schedule: str | None = None  # what became of the EventBridge Scheduler schedule (udop.schedule.aws)
    trigger: str | None = None  # what became of the S3 trigger's EventBridge rule (udop.schedule.s3events)
    after_trigger: str | None = None  # ... and of the after-trigger's rule (udop.schedule.afterevents)
    deployed_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _error_dicts(exc: BaseException) -> list[dict[str, Any]]:
    errors: Iterable[BaseException] = exc.errors if isinstance(exc, SpecErrors) else [exc]
    out = []
    for err in errors:
        if isinstance(err, SpecError):
            out.append({"message": err.message, "path": err.path, "line": err.line, "text": str(err)})
        else:
            out.append({"message": str(err), "path": None, "line": None, "text": str(err)})
    return out


def content_hash(definition: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(definition, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def deploy_definition(text: str | bytes, *, source: str, bucket: str, s3: Any, sfn: Any, store: Any,
                      task_runner_arn: str, role_arn: str, log_group_arn: str | None = None,
                      compile_fn: Callable[..., Any] | None = None,
                      policy: Policy | None = None, schedules: Any = None,
                      triggers: Any = None, engines: Mapping[str, str] | None = None) -> DeployResult:
    """Validate, compile and deploy one definition; always writes the status report.

    ``source`` is the definitions-bucket key (``pipelines/<name>.yaml``) or, from the CLI, a file
    name; the pipeline's ``metadata.name`` must match the key's name so that the report and the
    state machine can be found from the key.

    A deployed definition runs in the task runner, a server: inline secrets are always refused (the
    stored version would hold them), and with ``policy`` everything else it oversteps too.

    ``engines`` holds the platform's engine substitutions (``EmrApplicationId`` ...; see
    ``engine_substitutions``): a pipeline with ``engine: spark``/``athena`` tasks deploys only when the
    ones its engines need are there.
    """
    from udop.spec.loader import load_pipeline
    from udop.spec.secure import check_definition, check_inline_secrets

    key_name = pipeline_name_of_key(source) if source.startswith("pipelines/") else None
    name = key_name or source.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    result = DeployResult(ok=False, pipeline=name, source=source)
    try:
        pipeline = load_pipeline(text, filename=source)
        if key_name is not None and pipeline.name != key_name:
            raise SpecError(f"metadata.name is {pipeline.name!r} but the file is {source}; upload it as "
                            f"pipelines/{pipeline.name}{source[source.rfind('.'):]}",
                            file=source, path="metadata.name")
        name = result.pipeline = pipeline.name
        # python modules live with the task runner, which checks them itself before running
        refused = (check_definition(pipeline, policy, check_modules=False) if policy is not None
                   else check_inline_secrets(pipeline))
        SpecErrors.collect([e.located(source) for e in refused])
        _check_schedulable(pipeline, source)
        definition = canonical_definition(pipeline)
        result.content_hash = content_hash(definition)
        previous = get_json(s3, bucket, status_key(name))
        if (previous and previous.get("ok") and previous.get("content_hash") == result.content_hash
                and previous.get("state_machine_arn")):
            logger.info("definition unchanged; already deployed", extra={"pipeline": name})
            # the caller's store may not have it yet (deployed by the function, run from a laptop)
            store.register_pipeline(name, definition, state_machine_arn=previous["state_machine_arn"])
            return DeployResult(**{**previous, "skipped": True,
                                   "deployed_at": previous.get("deployed_at", result.deployed_at),
                                   "schedule": _sync_schedule(schedules, pipeline,
                                                              previous["state_machine_arn"]),
                                   "trigger": _sync_trigger(triggers, pipeline,
                                                            previous["state_machine_arn"]),
                                   "after_trigger": _sync_after(triggers, pipeline,
                                                                previous["state_machine_arn"])})
        # compile before recording anything: a pipeline over a limit must not leave a version behind
        version = _next_version(store, name, definition)
        compiled = _compile(pipeline, version, compile_fn)
        _check_engines(compiled, name, source, engines or {})
        registered = store.register_pipeline(name, definition).version
        if registered != version:  # another deployment registered in between
            version, compiled = registered, _compile(pipeline, registered, compile_fn)
        result.version = version
        put_version(s3, bucket, name, version, definition)
        result.state_machine_arn, result.state_machine_version_arn = _deploy_machines(
            sfn, compiled, task_runner_arn=task_runner_arn, role_arn=role_arn, log_group_arn=log_group_arn,
            engines=engines or {})
        store.register_pipeline(name, definition, state_machine_arn=result.state_machine_arn)
        result.schedule = _sync_schedule(schedules, pipeline, result.state_machine_arn)
        result.trigger = _sync_trigger(triggers, pipeline, result.state_machine_arn)
        result.after_trigger = _sync_after(triggers, pipeline, result.state_machine_arn)
        result.ok = True
    except InputError as exc:  # SpecErrors, a compile limit, a bad setting: the user's to fix
        result.errors = _error_dicts(exc)
        logger.warning("definition rejected; the existing state machine is unchanged",
                       extra={"pipeline": name, "source": source,
                              "errors": [e["text"] for e in result.errors]})
        metrics.add_metric(name="DefinitionsRejected", unit="Count", value=1)
    else:
        logger.info("pipeline deployed", extra=result.to_dict())
        metrics.add_metric(name="PipelinesDeployed", unit="Count", value=1)
    put_json(s3, bucket, status_key(name), result.to_dict())
    return result


#: engine -> what enables it on the platform (the CDK app's prop and context key)
_ENABLE = {
    "spark": "spark_engine=True (context udop:sparkEngine)",
    "athena": "athena_engine=True (context udop:athenaEngine)",
}


def engine_substitutions(resources: Any) -> dict[str, str]:
    """The platform's engine substitutions from its settings (``UDOP_EMR_APPLICATION_ID`` ... or the
    stack's outputs): only those that are set."""
    fields = {
        "EmrApplicationId": resources.emr_application_id,
        "EmrJobRoleArn": resources.emr_job_role_arn,
        "SparkEntryPoint": resources.spark_entry_point,
        "AthenaWorkGroup": resources.athena_workgroup,
        "GlueDatabase": resources.glue_database,
    }
    return {key: str(value) for key, value in fields.items() if value}


def _check_engines(compiled: Any, name: str, source: str, engines: Mapping[str, str]) -> None:
    """A pipeline with ``engine: spark``/``athena`` tasks needs the platform's EMR Serverless
    application / Athena workgroup (docs/engines.md): refused when the platform has not got them."""
    from udop.compiler import ENGINE_SUBSTITUTIONS

    used = [e for e, keys in ENGINE_SUBSTITUTIONS.items() if any(k in compiled.substitutions for k in keys)]
    missing = [e for e in used if any(k not in engines for k in ENGINE_SUBSTITUTIONS[e])]
    if missing:
        enable = " and ".join(_ENABLE[e] for e in missing)
        raise SpecError(f"pipeline {name!r} has tasks with engine: {', '.join(missing)} but the platform has "
                        f"no such engine: deploy the CDK app with {enable}, then deploy this pipeline "
                        "again", file=source)


def _check_schedulable(pipeline: Any, source: str) -> None:
    """A schedule must be able to start a run: refused before anything is deployed."""
    if getattr(pipeline, "stream", None) is not None:
        raise SpecError("a stream pipeline is not a state machine: deploy it with udop deploy FILE, which "
                        "maps its source to the stream runner (docs/streams.md)", file=source,
                        path="spec.trigger.stream")
    if pipeline.spec.schedule is not None:
        from udop.schedule.expr import scheduled_input

        try:
            scheduled_input(pipeline, "-")
        except ValueError as exc:
            raise SpecError(str(exc), file=source, path="spec.schedule") from None
    from udop.schedule.s3events import check_s3_trigger

    check_s3_trigger(pipeline, source)
    from udop.schedule.afterevents import check_after_trigger

    check_after_trigger(pipeline, source)


def _sync_schedule(target: Any, pipeline: Any, state_machine_arn: str) -> str | None:
    from udop.schedule.aws import ScheduleTarget, sync_schedule

    target = target if target is not None else ScheduleTarget.from_env()
    if target is None:
        return ("not deployed: set UDOP_SCHEDULER_ROLE_ARN and UDOP_DATA_BUCKET"
                if pipeline.spec.schedule is not None else None)
    return sync_schedule(target, pipeline, state_machine_arn)


def _sync_trigger(target: Any, pipeline: Any, state_machine_arn: str) -> str | None:
    from udop.schedule.s3events import sync_from_env

    return sync_from_env(target, pipeline, state_machine_arn)


def _sync_after(target: Any, pipeline: Any, state_machine_arn: str) -> str | None:
    from udop.schedule.afterevents import after_trigger_of, sync_after_trigger
    from udop.schedule.s3events import S3TriggerTarget

    target = target if target is not None else S3TriggerTarget.from_env()
    if target is None:
        return ("not deployed: set UDOP_TRIGGER_FUNCTION_ARN and UDOP_DATA_BUCKET"
                if after_trigger_of(pipeline) is not None else None)
    return sync_after_trigger(target, pipeline, state_machine_arn)


def _next_version(store: Any, name: str, definition: dict[str, Any]) -> int:
    """The version ``register_pipeline`` will give ``definition``: the latest if unchanged, else next."""
    from udop.store.sql import content_hash as store_hash

    record = store.get_pipeline(name)
    latest = record.latest if record is not None else None
    if latest is None:
        return 1
    return int(latest.version) if latest.content_hash == store_hash(definition) else int(latest.version) + 1


def _compile(pipeline: Any, version: int, compile_fn: Callable[..., Any] | None) -> Any:
    if compile_fn is not None:
        return compile_fn(pipeline, version=version)
    from udop.compiler import CompileOptions, compile_pipeline

    return compile_pipeline(pipeline, options=CompileOptions(version=version))


def _deploy_machines(sfn: Any, compiled: Any, *, task_runner_arn: str, role_arn: str,
                     log_group_arn: str | None = None,
                     engines: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """Create or update the child machines (deepest first), then the main one, each with its
    ``${...}`` substitutions filled in; returns the main machine's (ARN, published version ARN)."""
    from udop.compiler._asl import substitution_key

    subs = {"TaskRunnerArn": task_runner_arn, **(engines or {})}  # the platform's engines, if any
    for child in compiled.all_children():
        child_arn, _ = _create_or_update(sfn, state_machine_name(child.machine_name),
                                         _substitute(child.to_json(), subs), role_arn, log_group_arn)
        subs[substitution_key(child.name)] = child_arn
    return _create_or_update(sfn, state_machine_name(compiled.machine_name),
                             _substitute(compiled.to_json(), subs), role_arn, log_group_arn)


def _substitute(asl: str, subs: dict[str, str]) -> str:
    # CreateStateMachine has no DefinitionSubstitutions (CloudFormation does): replace here
    for key, value in subs.items():
        asl = asl.replace("${" + key + "}", value)
    return asl


def find_state_machine(sfn: Any, name: str) -> str | None:
    for page in sfn.get_paginator("list_state_machines").paginate():
        for sm in page["stateMachines"]:
            if sm["name"] == name:
                return str(sm["stateMachineArn"])
    return None


def observability_config(log_group_arn: str | None) -> dict[str, Any]:
    """What the CDK app gives its own state machines (infra/udop_infra/orchestration.py): X-Ray
    tracing and, with a log group, logging level ALL with execution data; sent on create and on
    update, so a machine first created without them gets them at its next deployment."""
    extra: dict[str, Any] = {"tracingConfiguration": {"enabled": True}}
    if log_group_arn:
        extra["loggingConfiguration"] = {"level": "ALL", "includeExecutionData": True, "destinations": [
            {"cloudWatchLogsLogGroup": {"logGroupArn": log_group_arn}}]}
    return extra


def _create_or_update(sfn: Any, name: str, asl: str, role_arn: str,
                      log_group_arn: str | None = None) -> tuple[str, str | None]:
    """Create or update ``name``; returns (state machine ARN, published version ARN)."""
    arn = find_state_machine(sfn, name)
    extra = observability_config(log_group_arn)
    try:
        if arn is None:
            resp = sfn.create_state_machine(name=name, definition=asl, roleArn=role_arn, type="STANDARD",
                                            publish=True, **extra)
            return str(resp["stateMachineArn"]), resp.get("stateMachineVersionArn")
        resp = sfn.update_state_machine(stateMachineArn=arn, definition=asl, roleArn=role_arn, publish=True,
                                        **extra)
        return arn, resp.get("stateMachineVersionArn")
    except sfn.exceptions.InvalidDefinition as exc:
        raise InputError(f"Step Functions rejected the compiled definition of {name}: {exc}") from None


def deploy_s3_object(bucket: str, raw_key: str, *, s3: Any, sfn: Any, store: Any, task_runner_arn: str,
                     role_arn: str, log_group_arn: str | None = None,
                     policy: Policy | None = None,
                     engines: Mapping[str, str] | None = None) -> DeployResult | None:
    """Deploy the object an S3 event names (keys arrive URL-encoded); None for keys we ignore."""
    key = urllib.parse.unquote_plus(raw_key)
    if pipeline_name_of_key(key) is None:
        logger.info("ignoring an object that is not a pipelines/<name>.yaml|.json definition",
                    extra={"key": key})
        return None
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        logger.warning("definition deleted before it could be deployed", extra={"key": key})
        return None
    return deploy_definition(body, source=key, bucket=bucket, s3=s3, sfn=sfn, store=store,
                             task_runner_arn=task_runner_arn, role_arn=role_arn, log_group_arn=log_group_arn,
                             policy=policy, engines=engines)
