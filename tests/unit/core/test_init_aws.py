"""``udop init --aws NAME``: a team repository that deploys the udop platform with its pipelines. The
slow end-to-end check (wheel -> fresh venv -> init -> synth) is tests/infra/test_installed_init.py."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]

EXPECTED = [
    ".gitignore",
    "README.md",
    "app.py",
    "cdk.json",
    "package-lock.json",
    "package.json",
    "pipelines/daily-orders.yaml",
    "pipelines/tasks.py",
    "requirements.txt",
    "tests/test_app.py",
]


def test_init_aws_writes_a_repository_pinned_to_this_udop_and_cdk(cli: Any, tmp_path: Path) -> None:
    code, out, err = cli("init", "--aws", "data-team", cwd=tmp_path)
    assert code == 0, err
    project = tmp_path / "data-team"
    assert sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()) == EXPECTED
    assert "npx cdk deploy" in out
    version = importlib.metadata.version("udop")
    assert f"udop[cdk]=={version}" in (project / "requirements.txt").read_text().splitlines()
    # the CDK CLI and the feature flags udop's own app is tested with
    ours = json.loads((REPO / "package.json").read_text())["devDependencies"]["aws-cdk"]
    assert json.loads((project / "package.json").read_text())["devDependencies"]["aws-cdk"] == ours
    lock = json.loads((project / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/aws-cdk"]["version"] == ours
    assert lock["name"] == json.loads((project / "package.json").read_text())["name"] == "data-team"
    flags = {
        k: v for k, v in json.loads((REPO / "cdk.json").read_text())["context"].items() if k.startswith("@")
    }
    cdk_json = json.loads((project / "cdk.json").read_text())
    assert cdk_json["context"] == flags
    assert cdk_json["app"] == "python3 app.py"
    app = (project / "app.py").read_text()
    assert "UdopPlatform(" in app and 'pipelines_dir="pipelines"' in app
    readme = (project / "README.md").read_text()
    assert "npx cdk deploy" in readme and "\npytest" in readme
    assert "{{" not in "".join(p.read_text() for p in project.rglob("*") if p.is_file())


def test_the_example_pipeline_runs_locally_from_the_repository(cli: Any, tmp_path: Path) -> None:
    assert cli("init", "--aws", "team", cwd=tmp_path)[0] == 0
    code, out, err = cli("run", "pipelines/daily-orders.yaml", "--param", "orders=300", cwd=tmp_path / "team")
    assert code == 0, err
    assert "report succeeded" in out


def test_init_aws_refuses_a_folder_with_anything_in_it(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / ".git").mkdir()
    code, _, err = cli("init", "--aws", "taken", cwd=tmp_path)
    assert code == 2
    assert err.strip() == "taken already exists and is not empty; choose a new folder name"
    assert [p.name for p in (tmp_path / "taken").iterdir()] == [".git"]
    # an empty folder is fine (e.g. a fresh clone's target); --force is not a way around the refusal
    (tmp_path / "empty").mkdir()
    assert cli("init", "--aws", "empty", cwd=tmp_path)[0] == 0
    code, _, err = cli("init", "--aws", "--force", "taken", cwd=tmp_path)
    assert code == 2 and "--force does not go with --aws" in err


def test_a_name_that_cannot_name_the_package_is_refused(cli: Any, tmp_path: Path) -> None:
    code, _, err = cli("init", "--aws", "Data Team", cwd=tmp_path)
    assert code == 2
    assert err.strip().startswith("'Data Team': a project name is lower-case letters")
    assert not (tmp_path / "Data Team").exists()
