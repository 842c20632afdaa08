"""The ``udop`` commands against emulated AWS: deploy, run --executor stepfunctions, redrive, and
``udop runs list/show`` seeing the AWS run."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.aws, pytest.mark.redis, pytest.mark.slow]


def _udop(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from udop.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


@pytest.fixture
def cli_env(moto_aws: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    from udop.settings import get_settings

    monkeypatch.setenv("UDOP_DEFINITIONS_BUCKET", moto_aws.definitions_bucket)
    monkeypatch.setenv("UDOP_DATA_BUCKET", moto_aws.data_bucket)
    monkeypatch.setenv("UDOP_TASK_RUNNER_ARN", moto_aws.task_runner_arn)
    monkeypatch.setenv("UDOP_STATE_MACHINE_ROLE_ARN", moto_aws.role_arn)
    monkeypatch.setenv("UDOP_STATE_MACHINE_LOG_GROUP_ARN", moto_aws.log_group_arn)
    monkeypatch.setenv("UDOP_DATABASE_URL", moto_aws.database_url)
    monkeypatch.setattr("udop.aws.runs.POLL_SECONDS", 0.05)
    get_settings.cache_clear()
    yield moto_aws
    get_settings.cache_clear()


def test_deploy_run_fail_redrive_and_runs_show_from_the_command_line(
    cli_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_dir = cli_env.log_root
    flag = cli_env.flag("fault")
    cli_env.set_flag(flag, True)
    path = tmp_path / "cli-flow.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: cli-flow}}
        spec:
          tasks:
            - {{id: numbers, type: python, callable: "udop_aws_test_tasks:numbers",
               args: {{n: 4, log_dir: "{log_dir}"}}}}
            - {{id: big, type: python, callable: "udop_aws_test_tasks:fails_while", depends_on: [numbers],
               args: {{flag: "{flag}", log_dir: "{log_dir}"}}}}
        """)
    )
    code, out, err = _udop(capsys, "deploy", str(path))
    assert code == 0, err
    assert "cli-flow: version 1 deployed" in out
    # logged and traced like the machines the deployer function and the CDK app create
    machine = cli_env.client("stepfunctions").describe_state_machine(
        stateMachineArn=out.rsplit("-> ", 1)[1].strip()
    )
    assert machine["loggingConfiguration"]["level"] == "ALL"
    assert machine["loggingConfiguration"]["includeExecutionData"] is True
    assert machine["loggingConfiguration"]["destinations"] == [
        {"cloudWatchLogsLogGroup": {"logGroupArn": cli_env.log_group_arn}}
    ]
    assert machine["tracingConfiguration"] == {"enabled": True}

    broken = tmp_path / "broken.yaml"
    broken.write_text(path.read_text().replace("depends_on: [numbers]", "depends_on: [numbres]"))
    code, out, err = _udop(capsys, "deploy", str(broken))
    assert code == 2
    assert "numbres" in err
    assert "Traceback" not in err

    code, out, err = _udop(capsys, "run", str(path), "--executor", "stepfunctions")
    assert code == 1
    run_id = out.split("run ", 1)[1].split()[0]
    assert "fault flag" in err

    code, out, err = _udop(capsys, "runs", "show", run_id, "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["state"] == "failed"
    assert shown["executor"] == "stepfunctions"
    assert shown["trigger"] == "cli"  # carried in the execution input to the record of the run
    assert {t["task_id"]: t["state"] for t in shown["tasks"]} == {"numbers": "succeeded", "big": "failed"}

    cli_env.set_flag(flag, False)
    code, out, err = _udop(capsys, "redrive", run_id)
    assert code == 0, err
    assert f"run {run_id} succeeded" in out
    assert cli_env.calls("numbers", run_id) == 1

    code, out, err = _udop(capsys, "runs", "list", "--pipeline", "cli-flow")
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith(run_id))
    assert "succeeded" in line
    assert "stepfunctions" in line

    code, out, err = _udop(capsys, "redrive", "no-such-run")
    assert code == 2
    assert "no run 'no-such-run'" in err


def test_compile_writes_plain_asl_with_the_runner_substitution(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        textwrap.dedent("""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {name: p}
        spec:
          tasks:
            - {id: a, type: python, callable: "udop_aws_test_tasks:numbers", args: {n: 1, log_dir: "."}}
        """)
    )
    out_file = tmp_path / "p.asl.json"
    code, _, err = _udop(capsys, "compile", str(path), "-o", str(out_file))
    assert code == 0, err
    asl = json.loads(out_file.read_text())
    assert asl["States"]["a"]["Parameters"]["FunctionName"] == "${TaskRunnerArn}"
