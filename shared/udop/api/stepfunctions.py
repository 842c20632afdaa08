"""Runs on AWS: the API deploys definitions and starts, stops and redrives Step Functions executions.

The serverless engineer's code does the work (``udop.aws.deployer``, ``udop.aws.runs``,
``udop.aws.events``); this adapter gives it the launcher's shape. The run record is written at once,
so ``GET /runs/{id}`` finds a run the moment the API answered 202; the run-events function keeps it
up to date from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from udop.api.launcher import task_ids
from udop.api.settings import ApiSettings
from udop.errors import ConfigError, InputError, RunNotFound, SpecError, SpecErrors, StoreError
from udop.sandbox import server_policy
from udop.spec.models import Pipeline
from udop.states import RunState, is_terminal
from udop.store.api import MetadataStore, PipelineVersionRecord, RunRecord

__all__ = ["StepFunctionsLauncher"]

log = logging.getLogger(__name__)

_REQUIRED = ("definitions_bucket", "task_runner_arn", "state_machine_role_arn")


class StepFunctionsLauncher:
    executor_name = "stepfunctions"

    def __init__(
        self, store: MetadataStore, settings: ApiSettings, *, sfn: Any = None, s3: Any = None
    ) -> None:
        missing = [f"UDOP_{name.upper()}" for name in _REQUIRED if not getattr(settings, name)]
        if missing:
            raise ConfigError(
                f"UDOP_EXECUTOR=stepfunctions needs {', '.join(missing)} (the CDK app's stack outputs)"
            )
        import boto3

        self.store = store
        self.settings = settings
        self.sfn = sfn or boto3.client("stepfunctions")
        self.s3 = s3 or boto3.client("s3")
        #: checked at registration; the task runner checks again (and the python modules) when it runs
        bucket = settings.data_bucket
        self.policy = server_policy(data_root=f"s3://{bucket}" if bucket else None)

    def register(self, pipeline: Pipeline, text: bytes, filename: str) -> PipelineVersionRecord:
        """Compile and deploy the state machine now; the existing one stays if that fails."""
        from udop.aws.definitions import upload_key
        from udop.aws.deployer import deploy_definition, engine_substitutions

        key = upload_key(pipeline.name, ".json" if filename.endswith(".json") else ".yaml")
        result = deploy_definition(
            text,
            source=key,
            bucket=str(self.settings.definitions_bucket),
            s3=self.s3,
            sfn=self.sfn,
            store=self.store,
            task_runner_arn=str(self.settings.task_runner_arn),
            role_arn=str(self.settings.state_machine_role_arn),
            log_group_arn=self.settings.state_machine_log_group_arn,
            policy=self.policy,
            engines=engine_substitutions(self.settings),
        )
        if not result.ok:
            raise SpecErrors(
                [SpecError(e["message"], path=e.get("path"), line=e.get("line")) for e in result.errors]
                or [SpecError("the definition could not be deployed")]
            )
        # the bucket stays the source of truth; its deployer sees this content deployed and skips it
        self.s3.put_object(Bucket=str(self.settings.definitions_bucket), Key=key, Body=text)
        record = self.store.get_pipeline(pipeline.name)
        latest = record.latest if record else None
        if latest is None:
            raise StoreError(f"pipeline {pipeline.name!r} was deployed but is not in the metadata store")
        return latest

    def trigger(
        self, pipeline: Pipeline, *, params: Mapping[str, Any], logical_date: datetime | None, run_id: str
    ) -> RunRecord:
        from udop.aws.runs import start_run
        from udop.spec.params import jsonable_params, resolve_params

        values = jsonable_params(resolve_params(pipeline, params))
        logical = logical_date or datetime.now(UTC)
        run_id, execution_arn, _ = start_run(
            pipeline, params, store=self.store, sfn=self.sfn, run_id=run_id, logical_date=logical,
            trigger="api",
        )
        record = self.store.get_pipeline(pipeline.name)
        version = record.latest.version if record and record.latest else 1
        try:
            return self.store.create_run(
                run_id=run_id,
                pipeline=pipeline.name,
                pipeline_version=version,
                task_ids=task_ids(pipeline),
                params=values,
                logical_date=logical,
                executor="stepfunctions",
                external_id=execution_arn,
                trigger="api",
            )
        except StoreError:
            existing = self.store.get_run(run_id)  # the run-events function recorded it first
            if existing is None:
                raise
            return existing

    def cancel(self, run: RunRecord, *, reason: str) -> RunRecord:
        if is_terminal(run.state):
            raise InputError(f"run {run.id!r} has already ended ({run.state.value})")
        if not run.external_id:
            raise InputError(f"run {run.id!r} has no Step Functions execution to stop")
        self.sfn.stop_execution(
            executionArn=self._latest_execution(run), error="udop.Cancelled", cause=reason[:32768]
        )
        return self._sync(run)

    def resume(self, run: RunRecord, pipeline: Pipeline) -> RunRecord:
        from udop.aws.runs import redrive_run

        if run.state not in (RunState.FAILED, RunState.CANCELLED):
            raise InputError(
                f"run {run.id!r} is {run.state.value}; only a failed or cancelled run can be redriven"
            )
        redrive_run(run.id, store=self.store, sfn=self.sfn)
        return run

    def retry(self, run: RunRecord, pipeline: Pipeline, task_id: str) -> list[str]:
        """A new execution of the run that runs ``task_id`` and everything downstream again and reuses
        the other tasks' results (``udop.aws.runs.retry_run_from``)."""
        from udop.aws.runs import retry_run_from
        from udop.spec.dag import downstream

        if task_id not in {t.id for t in pipeline.spec.tasks}:
            raise RunNotFound(f"run {run.id!r} has no task {task_id!r}")
        reset, _, _ = retry_run_from(run.id, [task_id, *downstream(pipeline, task_id)], store=self.store,
                                     sfn=self.sfn)
        return reset

    def close(self) -> None:
        pass

    def _latest_execution(self, run: RunRecord) -> str:
        """The run's newest execution (a redrive without RedriveExecution starts a new one)."""
        from udop.aws.events import run_id_of_execution

        arn = str(run.external_id)
        machine = self.sfn.describe_execution(executionArn=arn)["stateMachineArn"]
        ours = [
            e
            for page in self.sfn.get_paginator("list_executions").paginate(stateMachineArn=machine)
            for e in page["executions"]
            if run_id_of_execution(e["name"]) == run.id
        ]
        return str(max(ours, key=lambda e: e["startDate"])["executionArn"]) if ours else arn

    def _sync(self, run: RunRecord) -> RunRecord:
        from udop.aws.events import sync_run

        machine = self.sfn.describe_execution(executionArn=str(run.external_id))["stateMachineArn"]
        synced = sync_run(self.store, self.sfn, state_machine_arn=machine, run_id=run.id)
        return synced if synced is not None else run
