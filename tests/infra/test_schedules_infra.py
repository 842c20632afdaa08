"""The deployer and the API can keep EventBridge Scheduler schedules beside the state machines they
deploy: both know the schedulers' role, may manage only udop-* schedules and pass only that role."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = pytest.mark.infra


def _env(resources: dict[str, Any], fn: Any, stack: Any) -> dict[str, Any]:
    lid = stack.get_logical_id(fn.node.default_child)
    return dict(resources[lid]["Properties"]["Environment"]["Variables"])


def test_deployer_and_api_manage_udop_schedules_with_one_role(stack: Any, resources: dict[str, Any]) -> None:
    role = stack.get_logical_id(stack.schedules.role.node.default_child)
    assert resources[role]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "scheduler.amazonaws.com"}
    for fn in (stack.runtime.deployer, stack.api.function):
        env = _env(resources, fn, stack)
        assert env["UDOP_SCHEDULER_ROLE_ARN"] == {"Fn::GetAtt": [role, "Arn"]}
        assert "UDOP_DATA_BUCKET" in env
        fn_role = stack.get_logical_id(fn.role.node.default_child)
        granted: dict[str, list[Any]] = {}
        conditions: dict[str, Any] = {}
        for res in resources.values():
            if res["Type"] != "AWS::IAM::Policy" or {"Ref": fn_role} not in res["Properties"]["Roles"]:
                continue
            for st in res["Properties"]["PolicyDocument"]["Statement"]:
                actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                for action in actions:
                    granted.setdefault(action, []).append(st["Resource"])
                    if action == "iam:PassRole" and "scheduler" in json.dumps(st.get("Condition", {})):
                        conditions[action] = st
        for action in ("scheduler:CreateSchedule", "scheduler:UpdateSchedule", "scheduler:DeleteSchedule",
                       "scheduler:GetSchedule"):
            assert ":schedule/default/udop-*" in json.dumps(granted[action]), action
        assert conditions["iam:PassRole"]["Resource"] == {"Fn::GetAtt": [role, "Arn"]}
    starts = [st for res in resources.values() if res["Type"] == "AWS::IAM::Policy"
              and {"Ref": role} in res["Properties"]["Roles"]
              for st in res["Properties"]["PolicyDocument"]["Statement"]]
    assert [st["Action"] for st in starts] == ["states:StartExecution"]
    assert ":stateMachine:udop-*" in json.dumps(starts[0]["Resource"])


def test_the_api_may_write_backfill_dates_files_in_the_data_bucket_only(stack: Any, resources: dict[str, Any]) -> None:
    """POST /pipelines/{name}/backfills on Step Functions writes the parent's dates file; nothing else
    of the data bucket is writable by the API."""
    fn_role = stack.get_logical_id(stack.api.function.role.node.default_child)
    data = stack.get_logical_id(stack.storage.data.node.default_child)
    puts = [st["Resource"] for res in resources.values() if res["Type"] == "AWS::IAM::Policy"
            and {"Ref": fn_role} in res["Properties"]["Roles"]
            for st in res["Properties"]["PolicyDocument"]["Statement"]
            if "s3:PutObject" in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
            and data in json.dumps(st["Resource"])]
    assert puts == [{"Fn::Join": ["", [{"Fn::GetAtt": [data, "Arn"]}, "/runs/*/_backfills/*"]]}]
