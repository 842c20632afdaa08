"""The deployer and the API can keep S3 triggers' EventBridge rules beside the state machines they
deploy: both know the starter function, may manage only udop-* rules and the data bucket's
notifications; the starter may start only udop-* state machines and only udop-* rules invoke it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.infra


def _granted(resources: dict[str, Any], role_ref: dict[str, Any]) -> dict[str, list[Any]]:
    granted: dict[str, list[Any]] = {}
    for res in resources.values():
        if res["Type"] != "AWS::IAM::Policy" or role_ref not in res["Properties"]["Roles"]:
            continue
        for st in res["Properties"]["PolicyDocument"]["Statement"]:
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            for action in actions:
                granted.setdefault(action, []).append(st["Resource"])
    return granted


def test_deployer_and_api_manage_udop_rules_that_target_the_starter(
    stack: Any, resources: dict[str, Any]
) -> None:
    starter = stack.get_logical_id(stack.runtime.run_events.node.default_child)
    for fn in (stack.runtime.deployer, stack.api.function):
        env = resources[stack.get_logical_id(fn.node.default_child)]["Properties"]["Environment"]["Variables"]
        assert env["UDOP_TRIGGER_FUNCTION_ARN"] == {"Fn::GetAtt": [starter, "Arn"]}
        granted = _granted(resources, {"Ref": stack.get_logical_id(fn.role.node.default_child)})
        for action in (
            "events:PutRule",
            "events:PutTargets",
            "events:DeleteRule",
            "events:RemoveTargets",
            "events:DescribeRule",
            "events:ListTargetsByRule",
        ):
            assert [":rule/udop-*" in json.dumps(r) for r in granted[action]] == [True], action
        data = stack.get_logical_id(stack.storage.data.node.default_child)
        assert granted["s3:PutBucketNotification"] == [{"Fn::GetAtt": [data, "Arn"]}]
        assert "iam:PassRole" not in granted or all(
            "events" not in json.dumps(r) for r in granted["iam:PassRole"]
        )  # a Lambda target needs no role

    starts = _granted(
        resources, {"Ref": stack.get_logical_id(stack.runtime.run_events.role.node.default_child)}
    )
    assert [":stateMachine:udop-*" in json.dumps(r) for r in starts["states:StartExecution"]] == [True]
    [permission] = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::Permission"
        and r["Properties"]["FunctionName"] == {"Fn::GetAtt": [starter, "Arn"]}
        and ":rule/udop-*" in json.dumps(r["Properties"].get("SourceArn"))
    ]
    assert permission["Principal"] == "events.amazonaws.com"


def test_cdk_deploy_creates_the_after_trigger_rule_of_each_pipeline(synth_app: Any, tmp_path: Path) -> None:
    """``trigger: after:`` in the app's pipelines: the rule ``udop-<name>-after`` on the upstream's
    SUCCEEDED executions (the machine in the app, or the name a run-time deployed one will have),
    targeting the starter with the same input transformer ``udop deploy`` writes."""
    folder = Path(__file__).resolve().parent / "pipelines_after"
    stack, template = synth_app(tmp_path / "out", **{"udop:pipelinesDir": str(folder)})
    resources = template.to_json()["Resources"]
    rules = {
        r["Properties"]["Name"]: r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::Events::Rule" and r["Properties"].get("Name", "").endswith("-after")
    }
    assert sorted(rules) == ["udop-audit-after", "udop-report-after"]
    ingest = stack.get_logical_id(stack.orchestration.pipelines["ingest"].state_machine.node.default_child)
    report = rules["udop-report-after"]
    assert report["State"] == "ENABLED"
    assert report["EventPattern"] == {
        "source": ["aws.states"],
        "detail-type": ["Step Functions Execution Status Change"],
        "detail": {"status": ["SUCCEEDED"], "stateMachineArn": [{"Ref": ingest}]},
    }
    [target] = report["Targets"]
    starter = stack.get_logical_id(stack.runtime.run_events.node.default_child)
    assert target["Arn"] == {"Fn::GetAtt": [starter, "Arn"]}
    template_text = json.dumps(target["InputTransformer"]["InputTemplate"])
    assert "udop_after_trigger" in template_text and "<aws.events.event>" in template_text
    assert ingest in template_text  # the upstream machine, resolved by CloudFormation
    audit = json.dumps(rules["udop-audit-after"]["EventPattern"]["detail"]["stateMachineArn"])
    assert ":stateMachine:udop-deployed-later" in audit
    # the starter may be invoked by udop-* rules (the S3 triggers' permission covers these)
    assert any(
        r["Type"] == "AWS::Lambda::Permission" and ":rule/udop-*" in json.dumps(r["Properties"])
        for r in resources.values()
    )
