"""The CLI finds the deployed platform from the stack's outputs (``udop.aws.platform``): with only a
stack name, ``udop deploy`` and ``udop run --executor stepfunctions`` work; missing AWS
configuration is one line saying what to set, exit 2."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

VARIABLES = ("UDOP_DEFINITIONS_BUCKET", "UDOP_DATA_BUCKET", "UDOP_TASK_RUNNER_ARN", "UDOP_STATE_MACHINE_ROLE_ARN",
             "UDOP_STATE_MACHINE_LOG_GROUP_ARN", "UDOP_STACK_NAME")


def _udop(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from udop.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def _pipeline(tmp_path: Path, name: str, log_dir: str = ".") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: {name}}}
        spec:
          tasks:
            - {{id: numbers, type: python, callable: "udop_aws_test_tasks:numbers",
               args: {{n: 3, log_dir: "{log_dir}"}}}}
        """))
    return path


def _stack(cfn: Any, name: str, outputs: dict[str, str]) -> None:
    template = {"Resources": {"Nothing": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
                "Outputs": {key: {"Value": value} for key, value in outputs.items()}}
    with pytest.warns(UserWarning, match="WaitConditionHandle"):  # moto does not model WaitConditionHandle; the outputs are what count
        cfn.create_stack(StackName=name, TemplateBody=json.dumps(template))


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the platform's variables set, so only the stack can name the resources."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def moto_only(monkeypatch: pytest.MonkeyPatch, bare: None) -> Iterator[Any]:
    """An empty moto account (no stack), credentials and region set."""
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        import boto3

        yield boto3.client("cloudformation", region_name="us-east-1")


@pytest.mark.aws
@pytest.mark.redis
@pytest.mark.slow
def test_deploy_and_run_with_only_the_stack_name(
    moto_aws: Any, bare: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = f"{moto_aws.prefix}-stack"
    _stack(moto_aws.client("cloudformation"), stack, {
        "DefinitionsBucket": moto_aws.definitions_bucket, "DataBucket": moto_aws.data_bucket,
        "TaskRunnerArn": moto_aws.task_runner_arn, "StateMachineRoleArn": moto_aws.role_arn,
        "StateMachineLogGroupArn": moto_aws.log_group_arn})
    monkeypatch.setenv("UDOP_STACK_NAME", stack)
    monkeypatch.setenv("UDOP_DATABASE_URL", moto_aws.database_url)
    monkeypatch.setattr("udop.aws.runs.POLL_SECONDS", 0.05)
    path = _pipeline(tmp_path, "from-stack", moto_aws.log_root)

    code, out, err = _udop(capsys, "deploy", str(path))
    assert code == 0, err
    arn = out.rsplit("-> ", 1)[1].strip()
    machine = moto_aws.client("stepfunctions").describe_state_machine(stateMachineArn=arn)
    assert machine["roleArn"] == moto_aws.role_arn  # from the stack's StateMachineRoleArn
    assert machine["loggingConfiguration"]["destinations"] == [
        {"cloudWatchLogsLogGroup": {"logGroupArn": moto_aws.log_group_arn}}]
    assert moto_aws.task_runner_arn in machine["definition"]
    keys = [o["Key"] for o in moto_aws.client("s3").list_objects_v2(
        Bucket=moto_aws.definitions_bucket, Prefix="pipelines/").get("Contents", [])]
    assert "pipelines/from-stack.yaml" in keys

    code, out, err = _udop(capsys, "run", str(path), "--executor", "stepfunctions")
    assert code == 0, err
    run_id = out.split("run ", 1)[1].split()[0]
    assert moto_aws.calls("numbers", run_id) == 1
    # the data bucket came from the stack too: the run's full result (output rows) was read from it
    code, out, err = _udop(capsys, "runs", "show", run_id, "--json")
    assert code == 0, err
    assert json.loads(out)["tasks"][0]["result"]["output"]["rows"] == 3

    # a variable still wins over the stack's output
    monkeypatch.setenv("UDOP_DEFINITIONS_BUCKET", "no-such-bucket")
    code, _, err = _udop(capsys, "deploy", str(path))
    assert code != 0
    assert "no-such-bucket" in err or "NoSuchBucket" in err


def test_no_region_is_one_line_saying_what_to_set(
    bare: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("UDOP_DATABASE_URL", f"sqlite:///{tmp_path / 'udop.db'}")
    path = _pipeline(tmp_path, "no-region")
    for args in (["deploy", str(path)], ["run", str(path), "--executor", "stepfunctions"],
                 ["redrive", "some-run"]):
        code, _, err = _udop(capsys, *args)
        assert code == 2, (args, err)
        assert err.strip().count("\n") == 0, err
        assert "set AWS_DEFAULT_REGION" in err and "internal error" not in err, err


def test_a_stack_that_is_not_there_names_the_setting(
    moto_only: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _pipeline(tmp_path, "no-stack")
    code, _, err = _udop(capsys, "deploy", str(path), "--stack", "NotDeployed")
    assert code == 2
    assert err.strip() == ("stack 'NotDeployed' not found in us-east-1: deploy it (npx cdk deploy), or name the "
                           "deployed stack with UDOP_STACK_NAME or --stack, or set AWS_DEFAULT_REGION to its "
                           "region")


def test_a_missing_output_names_the_variable(
    moto_only: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _stack(moto_only, "Udop", {"DefinitionsBucket": "defs", "TaskRunnerArn": "arn:aws:lambda:x"})
    path = _pipeline(tmp_path, "no-output")
    code, _, err = _udop(capsys, "deploy", str(path))  # the default stack name, Udop
    assert code == 2
    assert "stack 'Udop' has no output StateMachineRoleArn: set UDOP_STATE_MACHINE_ROLE_ARN" in err
    assert err.strip().count("\n") == 0


def test_optional_outputs_come_from_the_stack_and_variables_win(
    moto_only: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from udop.aws.platform import Platform

    _stack(moto_only, "team-udop", {"DataBucket": "from-stack"})
    assert Platform("team-udop").optional("data_bucket") == "from-stack"
    monkeypatch.setenv("UDOP_STACK_NAME", "team-udop")
    assert Platform().optional("data_bucket") == "from-stack"
    assert Platform().optional("state_machine_log_group_arn") is None
    monkeypatch.setenv("UDOP_DATA_BUCKET", "from-env")
    assert Platform().optional("data_bucket") == "from-env"
    # without a stack named, a missing default stack means "not known"; a named one is an error
    monkeypatch.delenv("UDOP_STACK_NAME")
    monkeypatch.delenv("UDOP_DATA_BUCKET")
    assert Platform().optional("data_bucket") is None
    from udop.errors import ConfigError

    with pytest.raises(ConfigError, match="stack 'gone' not found"):
        Platform("gone").optional("data_bucket")
