"""The packaging for one's own servers (deploy/: Dockerfile, compose file, Helm chart) and the GitHub
Actions workflow, checked by the maintained linters installed from PyPI as dev dependencies (hadolint,
actionlint, yamllint), and by what they start: every command they run is one the udop CLI accepts.
No container engine here: nothing is built or started (docs/deployment.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
WORKFLOW = REPO / ".github" / "workflows" / "tests.yml"
CHART = DEPLOY / "helm" / "udop"
BIN = Path(sys.executable).parent


def _linter(name: str) -> str:
    found = BIN / name
    if found.exists():
        return str(found)
    on_path = shutil.which(name)
    if on_path is None:
        pytest.skip(f"LINTER NOT RUN: {name} is not installed (`bash scripts/bootstrap.sh` installs it from "
                    "the dev group); the file it checks is unchecked")
    return on_path


def _lint(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dockerfile_passes_hadolint() -> None:
    _lint(_linter("hadolint"), str(DEPLOY / "Dockerfile"))


def test_the_workflow_passes_actionlint() -> None:
    _lint(_linter("actionlint"), str(WORKFLOW))


def test_the_yaml_files_pass_yamllint() -> None:
    files = [DEPLOY / "compose.yaml", CHART / "Chart.yaml", CHART / "values.yaml", WORKFLOW]
    _lint(_linter("yamllint"), "--strict", "-c", str(DEPLOY / "yamllint.yaml"), *map(str, files))


def test_helm_lint() -> None:
    helm = shutil.which("helm")
    if helm is None:
        pytest.skip("LINTER NOT RUN: helm has no maintained PyPI package and is not installed here; the chart "
                    "is checked by test_the_chart_references_only_values_it_has and yamllint only")
    _lint(helm, "lint", str(CHART))


def _accepts(args: list[str]) -> None:
    """The udop CLI parses ``args`` (without running the command)."""
    from udop.cli import cli

    command = cli.get_command(None, args[0])  # type: ignore[arg-type]
    assert command is not None, f"udop has no command {args[0]!r}"
    command.make_context(f"udop {args[0]}", list(args[1:]))


def test_the_compose_file_starts_redis_postgres_the_api_the_scheduler_and_two_workers() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services: dict[str, Any] = compose["services"]
    assert set(services) == {"redis", "postgres", "api", "scheduler", "worker-1", "worker-2"}
    roles = {name: service["command"][0] for name, service in services.items() if "command" in service}
    assert roles == {"api": "serve", "scheduler": "scheduler", "worker-1": "worker", "worker-2": "worker"}
    for name in roles:
        _accepts(services[name]["command"])
        env = services[name]["environment"]
        assert env["UDOP_DATABASE_URL"].startswith("postgresql"), name  # SQLite is refused with celery
    assert services["api"]["environment"]["UDOP_EXECUTOR"] == "celery"


def test_the_image_starts_the_api_by_default() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    entry = yaml.safe_load(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))  # type: ignore[union-attr]
    command = yaml.safe_load(re.search(r"^CMD (.+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert entry == ["udop"]
    _accepts(command)


def _has(values: Any, path: list[str]) -> bool:
    for part in path:
        if not isinstance(values, dict) or part not in values:
            return False
        values = values[part]
    return True


def test_the_chart_references_only_values_it_has() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    worker = values["workers"][0]
    for template in (CHART / "templates").iterdir():
        text = template.read_text()
        for ref in re.findall(r"\$?\.Values\.([A-Za-z0-9_.]+)", text):
            assert _has(values, ref.split(".")), f"{template.name}: .Values.{ref} is not in values.yaml"
        if template.name == "worker.yaml":  # inside `range .Values.workers`: fields of one worker
            for ref in re.findall(r"\{\{-? \.([a-zA-Z]+)", text):
                assert ref in worker, f"worker.yaml: .{ref} is not a field of values.workers[]"


def test_the_charts_worker_arguments_are_ones_udop_worker_accepts() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for worker in values["workers"]:
        _accepts(["worker", "--concurrency", str(worker["concurrency"]), "--queues", worker["queues"],
                  "--max-memory-per-task", worker["maxMemoryPerTask"], "--hostname", f"{worker['name']}@%h"])
    _accepts(["scheduler", "--pipelines", "/pipelines", "--executor", "celery"])
