"""Fixtures shared by every test tier. Each tier's own conftest adds what only it needs."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

SUPPORT = Path(__file__).parent / "support"


@pytest.fixture(autouse=True)
def _isolated_udop_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own .udop/ so no test sees another's metadata or data."""
    home = tmp_path_factory.mktemp("udop-home")
    monkeypatch.setenv("UDOP_HOME", str(home))
    for name in ("UDOP_DATABASE_URL", "UDOP_DATA_ROOT", "UDOP_STATE_URL"):
        if name in os.environ and not os.environ.get("UDOP_TEST_KEEP_ENV"):
            monkeypatch.delenv(name)
    from udop.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
    from udop.masking import remove_detectors

    remove_detectors()  # a server policy turns them on for the whole process; tests share one


POSTGRES_URL = os.environ.get("UDOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("UDOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.module = f"udop_tasks_{uuid.uuid4().hex[:10]}"
        shutil.copy(SUPPORT / "tasklib.py", root / f"{self.module}.py")

    def fn(self, name: str) -> str:
        return f"{self.module}:{name}"

    def task(
        self, task_id: str, fn: str = "noop", *, depends_on: list[str] | None = None, **fields: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"id": task_id, "type": "python", "callable": self.fn(fn)}
        if depends_on:
            body["depends_on"] = depends_on
        body.update(fields)
        return body

    def pipeline(
        self,
        tasks: list[dict[str, Any]],
        *,
        name: str = "demo",
        params: dict[str, Any] | None = None,
        defaults: dict[str, Any] | None = None,
        file: str = "pipeline.yaml",
    ) -> Path:
        spec: dict[str, Any] = {"tasks": tasks}
        if params:
            spec["params"] = params
        if defaults:
            spec["defaults"] = defaults
        doc = {"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": name}, "spec": spec}
        path = self.root / file
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def count(self, name: str) -> int:
        path = self.root / f"{name}.count"
        return len(path.read_text()) if path.exists() else 0


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    proj = Project(tmp_path)
    sys.path.insert(0, str(tmp_path))
    yield proj
    sys.path.remove(str(tmp_path))
    sys.modules.pop(proj.module, None)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Any]:
    from udop.store import open_store

    s = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    yield s
    s.close()


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``udop ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from udop.cli import main

    def invoke(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return invoke
