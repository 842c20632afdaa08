"""``udop init``: write a small project that runs as it is; ``udop init --aws NAME``: a team repository
that deploys the udop platform with its pipelines (``npx cdk deploy``) and tests them (``pytest``)."""

from __future__ import annotations

import importlib.metadata
import re
from importlib.resources import files
from pathlib import Path

from udop.errors import InputError

TEMPLATES = ("pipeline.yaml", "tasks.py", ".gitignore")


def write_project(directory: Path, *, force: bool = False) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    targets = [directory / name for name in TEMPLATES]
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        raise InputError(f"{existing[0]} already exists; use --force to overwrite, or choose another folder")
    source = files("udop.cli") / "templates"
    for name, target in zip(TEMPLATES, targets, strict=True):
        target.write_text((source / name.replace(".gitignore", "gitignore.txt")).read_text())
    return targets


#: template -> where ``udop init --aws`` writes it
AWS_TEMPLATES = {
    "aws/README.md": "README.md",
    "aws/app.py": "app.py",
    "aws/cdk.json": "cdk.json",
    "aws/requirements.txt": "requirements.txt",
    "aws/package.json": "package.json",
    "aws/package-lock.json": "package-lock.json",
    "aws/gitignore.txt": ".gitignore",
    "aws/test_app.py": "tests/test_app.py",
    "pipeline.yaml": "pipelines/daily-orders.yaml",
    "tasks.py": "pipelines/tasks.py",
}


def write_aws_project(directory: Path) -> list[Path]:
    """A team repository: the CDK app (``UdopPlatform``), its pinned requirements and CDK CLI, an example
    pipeline with its code, a test; never into a folder that has anything in it."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise InputError(f"{directory} already exists and is not empty; choose a new folder name")
    name = directory.resolve().name
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        raise InputError(
            f"{name!r}: a project name is lower-case letters, digits, '.', '_' or '-' "
            "(it names the npm package); choose another folder name"
        )
    values = {"{{NAME}}": name, "{{UDOP_VERSION}}": importlib.metadata.version("udop")}
    source = files("udop.cli") / "templates"
    written = []
    for template, rel in AWS_TEMPLATES.items():
        text = (source / template).read_text()
        for key, value in values.items():
            text = text.replace(key, value)
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        written.append(target)
    return written
