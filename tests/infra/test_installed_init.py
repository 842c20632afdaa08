"""udop on AWS from a team's own repository: the wheel, installed into a fresh virtual environment with
the ``cdk`` extra, scaffolds a repository (``udop init --aws demo``) whose app synthesizes offline,
from the installed package alone, with CDK's template validation, cdk-nag and cfn-lint clean; and
installing a newer udop changes every layer's asset hash (so ``cdk deploy`` ships the new layers).

The layers' assets are hashed from their inputs (requirements, uv.lock's pins, udop's version, udop's
files) without building them; the synth skips bundling unless ``UDOP_BUILD_LAYERS=1``, when it builds
(or takes from ``~/.cache/udop``) the real layers through CDK local bundling and checks them too.
Packages come from uv's cache when it has them (``--offline`` first), else from the package index.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.infra, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
UV = REPO / ".tools" / "bin" / "uv"
#: what the wheel is built from (pyproject's [tool.hatch.build] packages and force-include)
SOURCES = (
    "pyproject.toml",
    "README.md",
    "uv.lock",
    "shared",
    "layers/connectors",
    "layers/transforms",
    "infra/udop_infra",
    "functions",
)
#: as tests/infra/test_lint.py: CDK's explicit DependsOn on a role's policy; nothing else is ignored
CFN_LINT_IGNORED = ["W3005"]
BUILD_LAYERS = os.environ.get("UDOP_BUILD_LAYERS") == "1"


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900, **kwargs)
    assert proc.returncode == 0, f"{cmd[:3]}: {proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc


def _wheel(tmp: Path, version: str) -> Path:
    """The wheel of udop's sources with ``version`` (a copy: the checkout is left alone)."""
    src = tmp / f"src-{version}"
    for rel in SOURCES:
        source, target = REPO / rel, src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        else:
            shutil.copy(source, target)
    pyproject = src / "pyproject.toml"
    text = pyproject.read_text()
    assert 'version = "' in text
    current = text.split('version = "', 1)[1].split('"', 1)[0]
    pyproject.write_text(text.replace(f'version = "{current}"', f'version = "{version}"', 1))
    _run([str(UV), "build", "--wheel", "--quiet", "-o", str(tmp / "dist"), str(src)])
    (wheel,) = (tmp / "dist").glob(f"udop-{version}-*.whl")
    return wheel


def _install(python: Path, requirement: str) -> None:
    cmd = [str(UV), "pip", "install", "--quiet", "--python", str(python), requirement]
    if subprocess.run(
        [*cmd, "--offline"], capture_output=True, text=True, check=False, timeout=900
    ).returncode:
        _run(cmd)  # something not in uv's cache: from the package index


def _offline_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_", "UDOP_", "VIRTUAL_ENV"))}
    env.update(
        {
            "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_CONFIG_FILE": "/nonexistent",
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        }
    )
    for name in ("UDOP_CACHE_DIR", "UDOP_PYTHON312"):  # where the layer cache and python3.12 are
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def _synth(project: Path, venv: Path, out: Path, *, validation: bool = True) -> dict[str, Any]:
    """``python app.py`` as the CDK CLI runs it (context from cdk.json, output folder from CDK_OUTDIR)."""
    context = json.loads((project / "cdk.json").read_text())["context"]
    if not BUILD_LAYERS:
        context["aws:cdk:bundling-stacks"] = []
    env = {**_offline_env(venv), "CDK_OUTDIR": str(out), "CDK_CONTEXT_JSON": json.dumps(context)}
    if not validation:
        env["CDK_VALIDATION"] = "false"
    proc = _run([str(venv / "bin" / "python"), "app.py"], cwd=project, env=env)
    assert "AwsSolutions-" not in proc.stdout + proc.stderr  # cdk-nag: nothing unacknowledged
    template: dict[str, Any] = json.loads((out / "Udop.template.json").read_text())
    return template


def _layer_keys(template: dict[str, Any]) -> dict[str, str]:
    return {
        lid: res["Properties"]["Content"]["S3Key"]
        for lid, res in template["Resources"].items()
        if res["Type"] == "AWS::Lambda::LayerVersion" and lid.startswith("Runtime")
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tmp folder, venv) with udop[cdk] installed from a freshly built wheel, nothing from the checkout."""
    if not UV.exists():
        pytest.skip("uv is not in .tools/ (bash scripts/bootstrap.sh)")
    tmp = tmp_path_factory.mktemp("installed")
    wheel = _wheel(tmp, "0.1.0")
    venv = tmp / "venv"
    _run([str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)])
    _install(venv / "bin" / "python", f"udop[cdk] @ {wheel.as_uri()}")
    where = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import udop, udop_infra.layers as l; print(udop.__file__); print(l.functions_dir())",
        ],
        cwd=tmp,
        env=_offline_env(venv),
    ).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # the wheel's copies, not the checkout
    return tmp, venv


def test_init_refuses_a_folder_that_has_files(installed: tuple[Path, Path]) -> None:
    tmp, venv = installed
    (tmp / "taken").mkdir()
    (tmp / "taken" / "notes.txt").write_text("mine\n")
    proc = subprocess.run(
        [str(venv / "bin" / "udop"), "init", "--aws", "taken"],
        cwd=tmp,
        env=_offline_env(venv),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "taken already exists and is not empty; choose a new folder name"
    assert (tmp / "taken" / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in (tmp / "taken").iterdir()) == ["notes.txt"]


def test_the_scaffolded_app_synthesizes_clean_and_an_upgrade_changes_the_layers(
    installed: tuple[Path, Path],
) -> None:
    tmp, venv = installed
    _run([str(venv / "bin" / "udop"), "init", "--aws", "demo"], cwd=tmp, env=_offline_env(venv))
    project = tmp / "demo"
    assert "udop[cdk]==0.1.0" in (project / "requirements.txt").read_text().splitlines()
    assert (
        json.loads((project / "package.json").read_text())["devDependencies"]["aws-cdk"]
        == json.loads((REPO / "package.json").read_text())["devDependencies"]["aws-cdk"]
    )

    template = _synth(project, venv, tmp / "out-0.1.0")
    machines = {
        lid: res
        for lid, res in template["Resources"].items()
        if res["Type"] == "AWS::StepFunctions::StateMachine"
    }
    assert any("udop-daily-orders" in json.dumps(m["Properties"]) for m in machines.values())
    # the example's tasks.py ships in the task runner's code, from the team's pipelines/ folder
    runner = next(
        res["Properties"]
        for res in template["Resources"].values()
        if res["Type"] == "AWS::Lambda::Function"
        and res["Properties"].get("Environment", {}).get("Variables", {}).get("UDOP_CODE_DIR")
        and res["Properties"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == "udop-task-runner"
    )
    code = tmp / "out-0.1.0" / f"asset.{runner['Code']['S3Key'].removesuffix('.zip')}"
    assert (code / "app.py").read_text() == (REPO / "functions" / "task_runner" / "app.py").read_text()
    assert (code / "pipeline_code" / "tasks.py").read_text() == (
        project / "pipelines" / "tasks.py"
    ).read_text()
    layers = _layer_keys(template)
    assert len(layers) == 5
    if BUILD_LAYERS:  # the real layers, built (or cached) during the synth
        core = tmp / "out-0.1.0" / f"asset.{layers['RuntimeCoreLayer7D22F68B'].removesuffix('.zip')}"
        assert (core / "python" / "udop" / "__init__.py").is_file()
        assert (core / "python" / "udop-0.1.0.dist-info" / "entry_points.txt").is_file()

    lint = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "cfn-lint"),
            "--ignore-checks",
            *CFN_LINT_IGNORED,
            "--",
            str(tmp / "out-0.1.0" / "Udop.template.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr

    # the next release: the same app, the same pipelines, a new udop
    _install(venv / "bin" / "python", str(_wheel(tmp, "0.1.1")))
    upgraded = _layer_keys(_synth(project, venv, tmp / "out-0.1.1", validation=False))
    assert upgraded.keys() == layers.keys()
    assert all(upgraded[lid] != layers[lid] for lid in layers), (layers, upgraded)
