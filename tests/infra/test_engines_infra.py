"""The engines behind ``engine: spark`` / ``engine: athena`` (udop_infra.engines): created only when a
pipeline uses them, with auto-start/stop and a maximum capacity (EMR Serverless), a per-query
bytes-scanned limit (Athena), and the state machine allowed exactly the calls its job states make."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from aws_cdk.assertions import Match

PIPELINES = Path(__file__).parent / "pipelines"


def test_engines_exist_only_when_a_pipeline_uses_them(synth_app: Any, tmp_path: Path) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    shutil.copy(PIPELINES / "engines.yaml", folder)
    _, template = synth_app(
        tmp_path / "out",
        **{"udop:pipelinesDir": str(folder), "udop:sparkMaxVcpu": 8, "udop:athenaBytesScannedCutoff": 10**9},
    )
    template.has_resource_properties(
        "AWS::EMRServerless::Application",
        {
            "Type": "SPARK",
            "AutoStartConfiguration": {"Enabled": True},
            "AutoStopConfiguration": {"Enabled": True, "IdleTimeoutMinutes": 15},
            "MaximumCapacity": {"Cpu": "8 vCPU", "Memory": "64 GB"},
        },
    )
    template.has_resource_properties(
        "AWS::Athena::WorkGroup",
        {
            "WorkGroupConfiguration": Match.object_like(
                {"BytesScannedCutoffPerQuery": 10**9, "EnforceWorkGroupConfiguration": True}
            )
        },
    )
    template.resource_count_is("AWS::Glue::Database", 1)
    machines = template.find_resources("AWS::StepFunctions::StateMachine")
    engines = next(
        m for m in machines.values() if "engines" in json.dumps(m["Properties"]["StateMachineName"])
    )
    subs = engines["Properties"]["DefinitionSubstitutions"]
    assert {"EmrApplicationId", "EmrJobRoleArn", "SparkEntryPoint", "AthenaWorkGroup", "GlueDatabase"} <= set(
        subs
    )
    policies = json.dumps(template.find_resources("AWS::IAM::Policy"))
    for action in (
        "emr-serverless:StartJobRun",
        "emr-serverless:CancelJobRun",
        "iam:PassRole",
        "athena:StartQueryExecution",
        "athena:StopQueryExecution",
        "glue:GetTable",
    ):
        assert action in policies, action
    assert "StepFunctionsGetEventsForEMRServerlessJobRule" in policies


def test_no_engine_resources_without_a_pipeline_or_prop(synth_app: Any, tmp_path: Path) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    _, template = synth_app(tmp_path / "out", **{"udop:pipelinesDir": str(folder)})
    template.resource_count_is("AWS::EMRServerless::Application", 0)
    template.resource_count_is("AWS::Athena::WorkGroup", 0)
    _, template = synth_app(
        tmp_path / "out2", **{"udop:pipelinesDir": str(folder), "udop:athenaEngine": True}
    )
    template.resource_count_is("AWS::Athena::WorkGroup", 1)
    template.resource_count_is("AWS::EMRServerless::Application", 0)


def test_the_task_runner_may_manage_the_runs_glue_tables_and_read_job_billing(
    synth_app: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    shutil.copy(PIPELINES / "engines.yaml", folder)
    stack, template = synth_app(tmp_path / "out", **{"udop:pipelinesDir": str(folder)})
    runner_role = stack.resolve(stack.runtime.task_runner.role.role_name)
    policies = [
        p
        for p in template.find_resources("AWS::IAM::Policy").values()
        if runner_role in p["Properties"].get("Roles", [])
    ]
    actions = json.dumps([p["Properties"]["PolicyDocument"] for p in policies])
    for action in ("glue:CreateTable", "glue:DeleteTable", "emr-serverless:GetJobRun"):
        assert action in actions, action


def test_the_deployers_get_the_engines_the_stack_has(synth_app: Any, tmp_path: Path) -> None:
    """With the spark engine asked for (no pipeline in the app), the deployer function and the API get
    its substitutions as settings, the stack prints them as outputs (``udop deploy FILE``), and the
    role of the machines they make may run its jobs; no Athena settings without the Athena engine."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    stack, template = synth_app(
        tmp_path / "out", **{"udop:pipelinesDir": str(folder), "udop:sparkEngine": True}
    )
    for fn in (stack.runtime.deployer, stack.api.function):
        logical = stack.get_logical_id(fn.node.default_child)
        env = template.find_resources("AWS::Lambda::Function")[logical]["Properties"]["Environment"][
            "Variables"
        ]
        assert {"UDOP_EMR_APPLICATION_ID", "UDOP_EMR_JOB_ROLE_ARN", "UDOP_SPARK_ENTRY_POINT"} <= set(env)
        assert "UDOP_ATHENA_WORKGROUP" not in env
    outputs = template.find_outputs("*")
    assert {"EmrApplicationId", "EmrJobRoleArn", "SparkEntryPoint"} <= set(outputs)
    assert "AthenaWorkGroup" not in outputs
    role = stack.resolve(stack.runtime.deployed_state_machine_role.role_name)
    actions = json.dumps(
        [
            p["Properties"]["PolicyDocument"]
            for p in template.find_resources("AWS::IAM::Policy").values()
            if role in p["Properties"].get("Roles", [])
        ]
    )
    for action in ("emr-serverless:StartJobRun", "emr-serverless:CancelJobRun", "iam:PassRole"):
        assert action in actions, action
