"""``udop init``: write a small project that runs as it is."""

from __future__ import annotations

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
