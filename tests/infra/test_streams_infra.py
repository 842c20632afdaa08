"""The stream runner in the platform stack: the function with the layers that run a micro-batch, the
settings it validates at cold start, what it may read and poll, its output for ``udop deploy``; and the
event source mappings ``StreamProcessing.add_*`` defines (partial batch failures reported)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.infra
REPO = Path(__file__).resolve().parents[2]


def _policy_statements(resources: dict[str, Any], role_ref: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        st
        for res in resources.values()
        if res["Type"] == "AWS::IAM::Policy" and role_ref in res["Properties"]["Roles"]
        for st in res["Properties"]["PolicyDocument"]["Statement"]
    ]


def test_the_stream_runner_runs_batches_with_the_shared_layers(
    stack: Any, template: Any, resources: dict[str, Any]
) -> None:
    fn = stack.streams.function
    props = resources[stack.get_logical_id(fn.node.default_child)]["Properties"]
    env = props["Environment"]["Variables"]
    for name in (
        "UDOP_DEFINITIONS_BUCKET",
        "UDOP_DATABASE_URL",
        "UDOP_DATABASE_SECRET_ARN",
        "UDOP_STATE_URL",
    ):
        assert name in env, name
    layers = [
        stack.get_logical_id(stack.runtime.layers[n].node.default_child)
        for n in ("core", "connectors", "transforms")
    ]
    assert sorted(ref["Ref"] for ref in props["Layers"]) == sorted(layers)
    assert props["Runtime"] == "python3.12" and props["Timeout"] == 900
    outputs = template.to_json()["Outputs"]
    assert outputs["StreamRunnerArn"]["Value"] == {
        "Fn::GetAtt": [stack.get_logical_id(fn.node.default_child), "Arn"]
    }
    statements = _policy_statements(resources, {"Ref": stack.get_logical_id(fn.role.node.default_child)})
    by_action: dict[str, str] = {}
    for st in statements:
        for action in st["Action"] if isinstance(st["Action"], list) else [st["Action"]]:
            by_action[action] = by_action.get(action, "") + json.dumps(st["Resource"])
    assert "streams/*" in by_action["s3:GetObject"] and "versions/*" in by_action["s3:GetObject"]
    assert ":udop-*" in by_action["sqs:ReceiveMessage"] and ":udop-*" in by_action["sqs:DeleteMessage"]
    assert "stream/udop-*" in by_action["kinesis:GetRecords"]
    # a batch that may be resumed keeps its input under the data bucket's runs/ (the task runner's keys)
    data = stack.get_logical_id(stack.storage.data.node.default_child)
    for action in ("s3:PutObject", "s3:GetObject", "s3:DeleteObject"):
        assert "/runs/*" in by_action[action] and data in by_action[action], action
    assert data in by_action["s3:ListBucket"]


def test_the_stream_runner_carries_the_pipelines_python_code_as_the_task_runner_does(
    synthesized_with_code: tuple[Any, Any, Path], stack: Any, resources: dict[str, Any]
) -> None:
    from test_pipeline_code import runner_asset

    with_code, template, outdir = synthesized_with_code
    props, asset = runner_asset(with_code, template, outdir, with_code.streams.function)
    _, task_runner_asset = runner_asset(with_code, template, outdir)
    # a stream pipeline's python tasks import from UDOP_CODE_DIR; in server mode its top-level modules
    # are the ones they may name (udop.sandbox.server_policy)
    assert props["Environment"]["Variables"]["UDOP_CODE_DIR"] == "/var/task/pipeline_code"
    assert with_code.streams.pipeline_code_dir == "/var/task/pipeline_code"
    assert (asset / "app.py").read_text() == (REPO / "functions" / "stream_runner" / "app.py").read_text()

    def shipped(folder: Path) -> list[str]:
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))

    assert shipped(asset / "pipeline_code") == shipped(task_runner_asset / "pipeline_code") == [
        "report_helpers.py",
        "shared_steps",
        "shared_steps/__init__.py",
        "shared_steps/scale.py",
    ]
    # the session's app (the repository's pipelines/: definitions only) ships the function's own code
    plain = resources[stack.get_logical_id(stack.streams.function.node.default_child)]["Properties"]
    assert "UDOP_CODE_DIR" not in plain["Environment"]["Variables"]
    assert stack.streams.pipeline_code_dir is None


def test_mappings_added_in_the_app_report_partial_batch_failures(tmp_path: Path) -> None:
    from aws_cdk import aws_kinesis as kinesis
    from aws_cdk import aws_sqs as sqs
    from aws_cdk.assertions import Template

    from app import build_app

    # the fast tier's context (conftest.FAST_CONTEXT): placeholder layers, no bundling
    _app, stack = build_app(
        {"udop:assets": "placeholder", "aws:cdk:bundling-stacks": []}, nag=False, outdir=str(tmp_path)
    )
    queue = sqs.Queue(stack, "Orders", queue_name="udop-orders")
    clicks = kinesis.Stream(stack, "Clicks", stream_name="udop-clicks", shard_count=1)
    stack.streams.add_sqs(queue, batch_size=500)
    stack.streams.add_kinesis(clicks)
    stack.streams.add_msk("arn:aws:kafka:us-east-1:111111111111:cluster/events/abc", "orders")
    template = Template.from_stack(stack)
    template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "EventSourceArn": {"Fn::GetAtt": [stack.get_logical_id(queue.node.default_child), "Arn"]},
            "BatchSize": 500,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "MaximumBatchingWindowInSeconds": 5,
        },
    )
    template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "EventSourceArn": {"Fn::GetAtt": [stack.get_logical_id(clicks.node.default_child), "Arn"]},
            "StartingPosition": "TRIM_HORIZON",
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
        },
    )
    template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {"EventSourceArn": "arn:aws:kafka:us-east-1:111111111111:cluster/events/abc", "Topics": ["orders"]},
    )


def test_the_stream_runner_gets_every_setting_it_validates_at_cold_start(
    stack: Any, resources: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from udop.aws.settings import StreamRunnerSettings
    from udop.settings import load_settings, required_variables

    env = resources[stack.get_logical_id(stack.streams.function.node.default_child)]["Properties"][
        "Environment"
    ]
    for name in [n for n in os.environ if n.startswith("UDOP_")]:
        monkeypatch.delenv(name)
    for name, value in env["Variables"].items():
        monkeypatch.setenv(name, value if isinstance(value, str) else "resolved-at-deploy")
    load_settings(StreamRunnerSettings)  # raises ConfigError naming a gap
    required = required_variables(StreamRunnerSettings)
    assert set(required) >= {"UDOP_DEFINITIONS_BUCKET", "UDOP_DATABASE_URL"}
    assert all(name in env["Variables"] for name in required)
