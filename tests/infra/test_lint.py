"""Lint tier: the pinned CDK CLI synthesizes offline with CDK's template validation and cdk-nag on;
cfn-lint and asl-validator accept what it wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.infra, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
#: CDK writes an explicit DependsOn on a role's policy next to the GetAtt of the role itself (it
#: must: the policy is a separate resource the function needs at create time); cfn-lint calls the
#: DependsOn redundant. Nothing else is ignored.
CFN_LINT_IGNORED = ["W3005"]


def offline_env() -> dict[str, str]:
    """No credentials, no instance metadata, validation on (the fast tier turns it off)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "CDK_")) or k == "CDK_DISABLE_VERSION_CHECK"
    }
    env.update(
        {
            "AWS_EC2_METADATA_DISABLED": "true",
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
            "CDK_DISABLE_VERSION_CHECK": "1",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_CONFIG_FILE": "/nonexistent",
        }
    )
    return env


@pytest.fixture(scope="module")
def cdk_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cdk-synth")
    # the repository's pipelines plus the test ones (a foreach task needs more IAM than the example)
    pipelines = tmp_path_factory.mktemp("pipelines")
    for source in [
        *(REPO / "pipelines").glob("*.yaml"),
        *(Path(__file__).parent / "pipelines").glob("*.yaml"),
    ]:
        shutil.copy(source, pipelines)
    # and python tasks with their code: the CLI's synth ships it to the task runner (pipeline_code/)
    shutil.copytree(Path(__file__).parent / "pipelines_with_code", pipelines, dirs_exist_ok=True)
    proc = subprocess.run(
        [
            str(REPO / "node_modules" / ".bin" / "cdk"),
            "synth",
            "--quiet",
            "--no-notices",
            "--output",
            str(out),
            "-c",
            "udop:assets=placeholder",
            "-c",
            f"udop:pipelinesDir={pipelines}",
        ],
        cwd=REPO,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "AwsSolutions" not in proc.stdout + proc.stderr  # every finding is acknowledged
    return out


def templates(out: Path) -> list[Path]:
    found = sorted(out.glob("*.template.json"))
    assert found
    return found


def test_npx_cdk_synth_is_clean_offline_with_validation_and_nag(cdk_out: Path) -> None:
    manifest = json.loads((cdk_out / "manifest.json").read_text())
    stack = manifest["artifacts"]["Udop"]
    assert stack["environment"] == "aws://unknown-account/unknown-region"  # env-agnostic


def test_the_cli_synth_ships_pipeline_code_in_the_runners_assets(cdk_out: Path) -> None:
    template = json.loads((cdk_out / "Udop.template.json").read_text())
    runners = {
        res["Properties"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]: res["Properties"]
        for res in template["Resources"].values()
        if res["Type"] == "AWS::Lambda::Function"
        and res["Properties"].get("Environment", {}).get("Variables", {}).get("UDOP_CODE_DIR")
    }
    assert sorted(runners) == ["udop-stream-runner", "udop-task-runner"]  # the functions running tasks
    for runner in runners.values():
        assert runner["Environment"]["Variables"]["UDOP_CODE_DIR"] == "/var/task/pipeline_code"
        asset = cdk_out / f"asset.{runner['Code']['S3Key'].removesuffix('.zip')}"
        assert (asset / "app.py").is_file()
        assert (asset / "pipeline_code" / "report_helpers.py").is_file()
        assert (asset / "pipeline_code" / "shared_steps" / "scale.py").is_file()
        assert not list(asset.rglob("*.yaml"))


def test_cfn_lint_accepts_every_template(cdk_out: Path) -> None:
    proc = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "cfn-lint"),
            "--ignore-checks",
            *CFN_LINT_IGNORED,
            "--",
            *map(str, templates(cdk_out)),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_asl_validator_accepts_every_state_machine(cdk_out: Path, tmp_path: Path) -> None:
    files = []
    for template in templates(cdk_out):
        for lid, res in json.loads(template.read_text())["Resources"].items():
            if res["Type"] == "AWS::StepFunctions::StateMachine":
                definition = res["Properties"]["DefinitionString"]
                assert isinstance(definition, str), f"{lid}: cfn-lint checks ASL only in a plain string"
                path = tmp_path / f"{lid}.json"
                path.write_text(definition)
                files.append(path)
    assert len(files) >= 2
    for path in files:
        proc = subprocess.run(
            [str(REPO / "node_modules" / ".bin" / "asl-validator"), "--json-path", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_nag_is_really_on_an_unacknowledged_finding_fails_the_synth(tmp_path: Path) -> None:
    # deletion protection off is a legitimate setting for a test account, but not one we acknowledge
    env = {
        **offline_env(),
        "CDK_OUTDIR": str(tmp_path),
        "CDK_CONTEXT_JSON": json.dumps({"udop:assets": "placeholder", "udop:deletionProtection": False}),
    }
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), str(REPO / "infra" / "app.py")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output: Any = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "AwsSolutions-RDS10" in output
