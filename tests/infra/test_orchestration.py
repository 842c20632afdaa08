"""State machines beyond the example: a pipeline split into child machines, a foreach task."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from udop.compiler import CompileOptions, compile_pipeline
from udop_infra import orchestration

pytestmark = pytest.mark.infra
HERE = Path(__file__).resolve().parent


def role_actions(resources: dict[str, Any], role_id: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for res in resources.values():
        if res["Type"] == "AWS::IAM::Policy" and {"Ref": role_id} in res["Properties"]["Roles"]:
            for st in res["Properties"]["PolicyDocument"]["Statement"]:
                for action in st["Action"] if isinstance(st["Action"], list) else [st["Action"]]:
                    out.setdefault(action, []).extend(
                        st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
                    )
    return out


def lid(stack: Any, construct: Any) -> str:
    return str(stack.get_logical_id(construct.node.default_child))


def synth_split(
    synth_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, tasks: int, budget: int
) -> tuple[Any, dict[str, Any]]:
    lines = "\n".join(
        f"    - {{id: t{i}, type: python, callable: 'jobs:step'"
        + (f", depends_on: [t{i - 1}]" if i else "")
        + "}"
        for i in range(tasks)
    )
    (tmp_path / "big.yaml").write_text(
        f"apiVersion: udop/v1\nkind: Pipeline\nmetadata: {{name: big}}\nspec:\n  tasks:\n{lines}\n"
    )

    def small_budget(source: Any) -> Any:  # the same compiler, with a budget that forces a split
        return compile_pipeline(
            source.pipeline, options=CompileOptions(version=source.version, max_definition_bytes=budget)
        )

    monkeypatch.setattr(orchestration, "compile_source", small_budget)
    stack, template = synth_app(tmp_path / "out", **{"udop:pipelinesDir": str(tmp_path)})
    return stack, template.to_json()["Resources"]


@pytest.fixture
def split_stack(
    synth_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, dict[str, Any]]:
    return synth_split(synth_app, tmp_path, monkeypatch, tasks=40, budget=20_000)


def test_split_pipeline_becomes_a_parent_that_starts_its_children(
    split_stack: tuple[Any, dict[str, Any]],
) -> None:
    stack, resources = split_stack
    big = stack.orchestration.pipelines["big"]
    assert set(big.children) == {"udop-big-part1", "udop-big-part2"}
    machines = {
        r["Properties"]["StateMachineName"]: (k, r["Properties"])
        for k, r in resources.items()
        if r["Type"] == "AWS::StepFunctions::StateMachine"
    }
    assert set(machines) == {"udop-big", "udop-big-part1", "udop-big-part2"}
    parent = machines["udop-big"][1]
    assert parent["DefinitionSubstitutions"] == {
        "Child_part1Arn": {"Ref": machines["udop-big-part1"][0]},
        "Child_part2Arn": {"Ref": machines["udop-big-part2"][0]},
    }
    assert parent["DefinitionString"] == big.compiled.to_json()
    runner = {"Fn::GetAtt": [lid(stack, stack.runtime.task_runner), "Arn"]}
    for part in ("udop-big-part1", "udop-big-part2"):
        child = machines[part][1]
        assert child["DefinitionSubstitutions"] == {"TaskRunnerArn": runner}
        assert child["LoggingConfiguration"]["Level"] == "ALL"
        assert child["TracingConfiguration"] == {"Enabled": True}
    # the parent runs no task: it may start exactly its two children, and invoke nothing
    actions = role_actions(resources, lid(stack, big.state_machine.role))
    assert sorted(actions["states:StartExecution"], key=json.dumps) == sorted(
        [{"Ref": machines["udop-big-part1"][0]}, {"Ref": machines["udop-big-part2"][0]}], key=json.dumps
    )
    assert "lambda:InvokeFunction" not in actions
    assert ":execution:udop-big-*" in json.dumps(actions["states:DescribeExecution"])
    assert "StepFunctionsGetEventsForStepFunctionsExecutionRule" in json.dumps(actions["events:PutRule"])
    child_actions = role_actions(resources, lid(stack, big.children["udop-big-part1"].role))
    assert "states:StartExecution" not in child_actions
    assert runner in child_actions["lambda:InvokeFunction"]


def test_nested_split_each_machine_starts_exactly_its_own_children(
    synth_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, resources = synth_split(synth_app, tmp_path, monkeypatch, tasks=20, budget=3000)
    big = stack.orchestration.pipelines["big"]
    compiled = big.compiled
    assert any(child.children for child in compiled.children)  # really three levels
    by_name = {
        r["Properties"]["StateMachineName"]: (k, r["Properties"])
        for k, r in resources.items()
        if r["Type"] == "AWS::StepFunctions::StateMachine"
    }
    machines = [compiled, *compiled.all_children()]
    assert set(by_name) == {f"udop-{m.machine_name}" for m in machines}
    for machine in machines:
        _, props = by_name[f"udop-{machine.machine_name}"]
        children = {
            f"Child_{c.name}Arn": {"Ref": by_name[f"udop-{c.machine_name}"][0]} for c in machine.children
        }
        assert props["DefinitionString"] == machine.to_json()
        assert {
            k: v for k, v in props.get("DefinitionSubstitutions", {}).items() if k != "TaskRunnerArn"
        } == children
        role = props["RoleArn"]["Fn::GetAtt"][0]
        started = role_actions(resources, role).get("states:StartExecution", [])
        assert sorted(started, key=json.dumps) == sorted(children.values(), key=json.dumps), (
            machine.machine_name
        )


def test_foreach_gets_s3_and_child_execution_rights_on_the_data_bucket_only(
    synth_app: Any, tmp_path: Path
) -> None:
    shutil.copy(HERE / "pipelines" / "fan-out.yaml", tmp_path)
    stack, template = synth_app(tmp_path / "out", **{"udop:pipelinesDir": str(tmp_path)})
    resources = template.to_json()["Resources"]
    fan = stack.orchestration.pipelines["fan-out"]
    actions = role_actions(resources, lid(stack, fan.state_machine.role))
    data = lid(stack, stack.storage.data)
    assert actions["s3:ListBucket"] == [{"Fn::GetAtt": [data, "Arn"]}]
    for action in ("s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"):
        assert actions[action] == [{"Fn::Join": ["", [{"Fn::GetAtt": [data, "Arn"]}, "/runs/*"]]}], action
    own = json.dumps(actions["states:StartExecution"])
    assert own.endswith(':stateMachine:udop-fan-out"]]}]')
    assert ":execution:udop-fan-out/*" in json.dumps(actions["states:DescribeExecution"])
    schedule = next(r["Properties"] for r in resources.values() if r["Type"] == "AWS::Scheduler::Schedule")
    assert schedule["ScheduleExpression"] == "rate(1 hour)"
    assert schedule["State"] == "DISABLED"


def test_unknown_service_integration_is_refused(
    synth_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(HERE / "pipelines" / "fan-out.yaml", tmp_path)
    real = orchestration.compile_source

    def with_sqs(source: Any) -> Any:
        compiled = real(source)
        compiled.definition["States"]["files"]["Resource"] = "arn:aws:states:::sqs:sendMessage"
        return compiled

    monkeypatch.setattr(orchestration, "compile_source", with_sqs)
    with pytest.raises(orchestration.ContextError, match=r"sqs:sendMessage.*no IAM mapping"):
        synth_app(tmp_path / "out", **{"udop:pipelinesDir": str(tmp_path)})
