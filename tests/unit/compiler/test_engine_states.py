"""Transform tasks with ``engine: spark`` / ``engine: athena`` on Step Functions: a prepare call, the
``.sync`` job state (EMR Serverless ``startJobRun`` / Athena ``startQueryExecution``) carrying the task's
Retry and TimeoutSeconds, and a record call; every state's failure caught into the task's record. The
definitions pass asl-validator; moto accepts the API calls the job states make (it runs no job or
query, so only the calls and their parameters are checked here)."""

from __future__ import annotations

import json
import re
from typing import Any

import boto3
import pytest
from asl_tools import assert_valid
from moto import mock_aws

from udop.compiler import CompileError, compile_pipeline
from udop.spec.models import Pipeline

pytestmark = pytest.mark.aws


def pipeline(**query_extra: Any) -> Pipeline:
    tasks = [
        {"id": "orders", "type": "extract", "source": {"connector": "s3", "path": "s3://lake/orders/"}},
        {
            "id": "big",
            "type": "transform",
            "engine": "spark",
            "depends_on": ["orders"],
            "steps": [{"aggregate": {"by": ["region"], "metrics": {"n": "count(*)"}}}],
            "retry": {"max_attempts": 3, "base_delay": "5s"},
            "timeout": "2h",
            **query_extra,
        },
        {
            "id": "scan",
            "type": "transform",
            "engine": "athena",
            "depends_on": ["orders"],
            "steps": [{"filter": "amount > 100"}],
        },
        {
            "id": "checks",
            "type": "validate",
            "engine": "duckdb",
            "depends_on": ["big"],
            "rules": [{"not_null": ["region"]}],
        },
    ]
    return Pipeline.model_validate(
        {"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": "eng"}, "spec": {"tasks": tasks}}
    )


def flat(states: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, state in states.items():
        out[name] = state
        for branch in state.get("Branches", ()):
            out.update(flat(branch["States"]))
    return out


def test_spark_and_athena_tasks_compile_to_prepare_job_record() -> None:
    compiled = compile_pipeline(pipeline())
    states = flat(compiled.definition["States"])
    # prepare -> job -> record, each caught into the task's failure record
    assert states["big"]["Next"] == "big job" and states["big job"]["Next"] == "big record"
    assert states["big"]["Parameters"]["Payload"]["engine_phase"] == "prepare"
    assert states["big record"]["Parameters"]["Payload"]["engine_phase"] == "finish"
    for name in ("big", "big job", "big record"):
        assert states[name]["Catch"][0]["ErrorEquals"] == ["States.ALL"]
    job = states["big job"]
    assert job["Resource"] == "arn:aws:states:::emr-serverless:startJobRun.sync"
    assert job["TimeoutSeconds"] == 7200  # over Lambda's 900 s: the job is not a Lambda
    retry_all = job["Retry"][-1]
    assert retry_all["ErrorEquals"] == ["States.ALL"] and retry_all["MaxAttempts"] == 2
    assert retry_all["IntervalSeconds"] == 5
    assert job["Parameters"]["ApplicationId"] == "${EmrApplicationId}"
    athena = states["scan job"]
    assert athena["Resource"] == "arn:aws:states:::athena:startQueryExecution.sync"
    assert athena["Parameters"]["WorkGroup"] == "${AthenaWorkGroup}"
    assert athena["ResultSelector"]["bytes_scanned.$"] == "$.QueryExecution.Statistics.DataScannedInBytes"
    # a duckdb task is one Lambda call as before
    assert states["orders"]["Resource"] == "arn:aws:states:::lambda:invoke" and "orders job" not in states
    assert "checks job" not in states
    assert set(compiled.substitutions) == {
        "TaskRunnerArn",
        "EmrApplicationId",
        "EmrJobRoleArn",
        "SparkEntryPoint",
        "AthenaWorkGroup",
        "GlueDatabase",
    }
    assert_valid(compiled)


def test_a_spark_validate_task_compiles_to_prepare_job_record() -> None:
    p = pipeline()
    doc = p.model_dump(mode="json", by_alias=True, exclude_unset=True)
    doc["spec"]["tasks"][-1]["engine"] = "spark"
    compiled = compile_pipeline(Pipeline.model_validate(doc))
    states = flat(compiled.definition["States"])
    prepare, job, record = states["checks"], states["checks job"], states["checks record"]
    assert prepare["Parameters"]["Payload"]["engine_phase"] == "prepare" and prepare["Next"] == "checks job"
    assert job["Resource"] == "arn:aws:states:::emr-serverless:startJobRun.sync"
    assert job["Parameters"]["ApplicationId"] == "${EmrApplicationId}"
    assert job["Parameters"]["JobDriver"]["SparkSubmit"]["EntryPoint"] == "${SparkEntryPoint}"
    assert job["Next"] == "checks record" and record["Parameters"]["Payload"]["engine_phase"] == "finish"
    assert_valid(compiled)


def test_athena_on_a_validate_task_is_a_compile_error_on_aws() -> None:
    p = pipeline()
    doc = p.model_dump(mode="json", by_alias=True, exclude_unset=True)
    task = Pipeline.model_validate(doc).spec.tasks[-1]
    object.__setattr__(task, "engine", "athena")  # the spec refuses it; the compiler must too
    with pytest.raises(CompileError, match=r"task 'checks': engine athena on AWS runs transform tasks only"):
        compile_pipeline(
            p.model_copy(update={"spec": p.spec.model_copy(update={"tasks": [*p.spec.tasks[:-1], task]})})
        )


def test_foreach_on_an_engine_task_is_a_compile_error() -> None:
    with pytest.raises(CompileError, match=r"task 'big': foreach runs on Lambda"):
        compile_pipeline(pipeline(foreach={"input": "orders"}))


def _resolve(params: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The Parameters a state sends, with substitutions and paths filled from ``values``."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out[key] = _resolve(value, values)
        elif key.endswith(".$"):
            out[key[:-2]] = values[value]
        else:
            out[key] = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], value)
    return out


def _to_boto(params: dict[str, Any]) -> dict[str, Any]:
    """Step Functions' optimized integrations name parameters in PascalCase; boto3 in camelCase for
    EMR Serverless."""

    def camel(name: str) -> str:
        return name[0].lower() + name[1:]

    return {camel(k): _to_boto(v) if isinstance(v, dict) else v for k, v in params.items()}


def test_moto_accepts_the_job_states_calls() -> None:
    states = flat(compile_pipeline(pipeline()).definition["States"])
    with mock_aws():
        emr = boto3.client("emr-serverless", region_name="us-east-1")
        app = emr.create_application(name="udop", releaseLabel="emr-7.5.0", type="SPARK")["applicationId"]
        values = {
            "EmrApplicationId": app,
            "EmrJobRoleArn": "arn:aws:iam::123456789012:role/udop-emr-job",
            "SparkEntryPoint": "s3://code/udop/spark/udop_spark_entry.py",
            "$.engine.job.name": "eng-big-run1",
            "States.UUID()": "7d1c3c4e-0000-4000-8000-000000000001",
            "States.Array($.engine.job.spec_uri)": ["s3://data/runs/eng/run1/big/_job.json"],
        }
        started = emr.start_job_run(**_to_boto(_resolve(states["big job"]["Parameters"], values)))
        run = emr.get_job_run(applicationId=app, jobRunId=started["jobRunId"])["jobRun"]
        assert run["jobDriver"]["sparkSubmit"]["entryPoint"] == "s3://code/udop/spark/udop_spark_entry.py"
        assert run["jobDriver"]["sparkSubmit"]["entryPointArguments"] == [
            "s3://data/runs/eng/run1/big/_job.json"
        ]

        athena = boto3.client("athena", region_name="us-east-1")
        athena.create_work_group(Name="udop", Configuration={"BytesScannedCutoffPerQuery": 10 * 1024**3})
        values = {
            "AthenaWorkGroup": "udop",
            "GlueDatabase": "udop_runs",
            "$.engine.job.query": "UNLOAD (SELECT 1 AS x) TO 's3://data/runs/eng/run1/scan/' "
            "WITH (format = 'PARQUET')",
            "States.UUID()": "7d1c3c4e-0000-4000-8000-000000000002",
        }
        query = athena.start_query_execution(**_resolve(states["scan job"]["Parameters"], values))
        got = athena.get_query_execution(QueryExecutionId=query["QueryExecutionId"])["QueryExecution"]
        assert got["WorkGroup"] == "udop" and got["QueryExecutionContext"]["Database"] == "udop_runs"


class _History:
    """An execution history as Step Functions pages it (a fake of the one call run events make)."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events

    def get_paginator(self, name: str) -> Any:
        assert name == "get_execution_history"
        return self

    def paginate(self, **_: Any) -> list[dict[str, Any]]:
        return [{"events": self.events}]


def _history(job_outcome: dict[str, Any]) -> list[dict[str, Any]]:
    """prepare call -> job state (EMR Serverless) -> record call when the job succeeded."""
    from datetime import UTC, datetime

    at = datetime(2026, 11, 30, tzinfo=UTC)
    payload = {"task_id": "big", "version": 1, "execution": "arn:x", "attempt": 0}

    def lam(phase: str) -> dict[str, Any]:
        params = {"FunctionName": "arn:f", "Payload": {**payload, "engine_phase": phase}}
        return {"resourceType": "lambda", "resource": "invoke", "parameters": json.dumps(params)}

    evs: list[dict[str, Any]] = [
        {"type": "TaskStateEntered", "stateEnteredEventDetails": {"name": "big"}},
        {"type": "TaskScheduled", "taskScheduledEventDetails": lam("prepare")},
        {"type": "TaskStarted"},
        {"type": "TaskSucceeded", "taskSucceededEventDetails": {"output": "{}"}},
        {"type": "TaskStateExited", "stateExitedEventDetails": {"name": "big"}},
        {"type": "TaskStateEntered", "stateEnteredEventDetails": {"name": "big job"}},
        {
            "type": "TaskScheduled",
            "taskScheduledEventDetails": {
                "resourceType": "emr-serverless",
                "resource": "startJobRun.sync",
                "parameters": "{}",
            },
        },
        {"type": "TaskStarted"},
        job_outcome,
    ]
    if job_outcome["type"] == "TaskSucceeded":
        evs += [
            {"type": "TaskStateEntered", "stateEnteredEventDetails": {"name": "big record"}},
            {"type": "TaskScheduled", "taskScheduledEventDetails": lam("finish")},
            {"type": "TaskStarted"},
            {
                "type": "TaskSucceeded",
                "taskSucceededEventDetails": {
                    "output": json.dumps(
                        {"Payload": {"task_id": "big", "output": {"uri": "s3://d/runs/x/", "rows": 3}}}
                    )
                },
            },
            {"type": "TaskStateExited", "stateExitedEventDetails": {"name": "big record"}},
        ]
    for i, ev in enumerate(evs, start=1):
        ev.update(id=i, previousEventId=i - 1, timestamp=at)
    return evs


def test_run_records_show_the_record_call_or_the_failed_job_as_the_attempt() -> None:
    from udop.aws.events import _attempts
    from udop.states import AttemptState

    ok = _attempts(
        _History(_history({"type": "TaskSucceeded", "taskSucceededEventDetails": {"output": "{}"}})), "arn:x"
    )
    assert [(a.task_id, a.state) for a in ok] == [("big", AttemptState.SUCCEEDED)]
    assert ok[0].result == {"output": {"uri": "s3://d/runs/x/", "rows": 3}} and ok[0].exited

    failed = _attempts(
        _History(
            _history(
                {
                    "type": "TaskFailed",
                    "taskFailedEventDetails": {
                        "error": "EMRServerless.JobRunFailed",
                        "cause": "the Spark driver exited with code 1",
                    },
                }
            )
        ),
        "arn:x",
    )
    assert [(a.task_id, a.state, a.error_type) for a in failed] == [
        ("big", AttemptState.FAILED, "EMRServerless.JobRunFailed")
    ]
