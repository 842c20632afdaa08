"""``UdopPlatform`` (``udop_infra.platform``): the platform as a typed entry point a team's CDK app
creates; its props win over context, are checked like context, and it is the stack udop's own app
builds (same logical ids)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.infra

REPO = Path(__file__).resolve().parents[2]
#: conftest.py's fast tier: placeholder layers, no bundling
FAST_CONTEXT: dict[str, Any] = {"udop:assets": "placeholder", "aws:cdk:bundling-stacks": []}


def _synth(tmp_path: Path, props: Any, context: dict[str, Any] | None = None) -> Any:
    import aws_cdk as cdk
    from aws_cdk.assertions import Template

    from app import default_context
    from udop_infra.platform import UdopPlatform

    # cdk.json's context: the feature flags a team's cdk.json needs too, and udop:natGateways 0 that
    # the props override
    app = cdk.App(context={**default_context(), **FAST_CONTEXT, **(context or {})},
                  outdir=str(tmp_path / "cdk.out"))
    stack = UdopPlatform(app, "TeamUdop", props=props)
    return stack, Template.from_stack(stack)


def test_props_configure_the_platform_in_a_teams_own_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from udop_infra.platform import UdopPlatformProps

    team = tmp_path / "team"
    (team / "pipelines").mkdir(parents=True)
    shutil.copy(REPO / "tests" / "infra" / "pipelines" / "fan-out.yaml", team / "pipelines")
    monkeypatch.chdir(team)  # a relative pipelines_dir is the team app's folder
    stack, template = _synth(tmp_path, UdopPlatformProps(
        pipelines_dir="pipelines", nat_gateways=1, alarm_email="data@example.com", db_instance_type="t4g.small"))
    assert stack.config.pipelines_dir == team / "pipelines"
    template.resource_count_is("AWS::EC2::NatGateway", 1)
    template.has_resource_properties("AWS::SNS::Subscription", {"Protocol": "email",
                                                                "Endpoint": "data@example.com"})
    template.has_resource_properties("AWS::RDS::DBInstance", {"DBInstanceClass": "db.t4g.small"})
    outputs = template.to_json()["Outputs"]
    # what `udop deploy` / `udop run --executor stepfunctions` read (udop.aws.platform)
    assert {"DefinitionsBucket", "DataBucket", "TaskRunnerArn", "StateMachineRoleArn",
            "StateMachineLogGroupArn"} <= set(outputs)


def test_a_bad_prop_is_one_error_naming_it(tmp_path: Path) -> None:
    from udop_infra.config import ContextError
    from udop_infra.platform import UdopPlatformProps

    with pytest.raises(ContextError, match="udop:natGateways"):
        _synth(tmp_path, UdopPlatformProps(nat_gateways=-1))


def test_udops_own_app_builds_the_platform_construct(synth_app: Any, tmp_path: Path) -> None:
    from udop_infra.platform import UdopPlatform

    stack, _ = synth_app(tmp_path)
    assert isinstance(stack, UdopPlatform)
