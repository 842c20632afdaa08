"""The app synthesizes (CDK's template validation and cdk-nag on, layers not built) and every pipeline
in pipelines/ is valid: `pytest`, before `npx cdk deploy`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = sorted(p for p in (ROOT / "pipelines").iterdir() if p.suffix in {".yaml", ".yml", ".json"})


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_the_pipeline_is_valid(path: Path) -> None:
    udop = Path(sys.executable).parent / "udop"
    proc = subprocess.run([str(udop), "validate", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_the_app_synthesizes_a_state_machine_per_pipeline(tmp_path: Path) -> None:
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    # bundling off: the layers are built by `cdk deploy`, not by the tests; their hashes are real
    context["aws:cdk:bundling-stacks"] = []
    env = {
        **os.environ,
        "CDK_OUTDIR": str(tmp_path),
        "CDK_CONTEXT_JSON": json.dumps(context),
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
    }
    proc = subprocess.run(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "AwsSolutions-" not in proc.stdout + proc.stderr  # cdk-nag found nothing unacknowledged
    template = json.loads((tmp_path / "Udop.template.json").read_text())
    machines = [r for r in template["Resources"].values() if r["Type"] == "AWS::StepFunctions::StateMachine"]
    names = {json.dumps(m["Properties"].get("StateMachineName")) for m in machines}
    for path in PIPELINES:
        assert any(path.stem in name for name in names), path.name
