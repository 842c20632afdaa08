"""A third-party connector package (examples/connector-package) is installed into a temporary folder,
found through the ``udop.connectors`` entry point, and used by extract and load: no change to udop."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from udop.connectors import (
    available_connectors,
    extract_to_parquet,
    get_connector,
    load_from_parquet,
    registry,
)
from udop.spec.models import Pipeline
from udop.state import MemoryStateStore
from udop.tasks.contract import TaskContext, TaskResult

REPO = Path(__file__).resolve().parents[3]
PACKAGE = REPO / "examples" / "connector-package"


def _uv() -> str:
    found = REPO / ".tools" / "bin" / "uv"
    if found.exists():
        return str(found)
    which = shutil.which("uv")
    if which is None:
        pytest.fail(
            "uv is needed to install the example connector package (scripts/bootstrap.sh installs it)"
        )
    return which


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    target = tmp_path_factory.mktemp("site")
    base = [
        _uv(),
        "pip",
        "install",
        "--quiet",
        "--python",
        sys.executable,
        "--target",
        str(target),
        "--no-deps",
        str(PACKAGE),
    ]
    # offline first (the build backend is in uv's cache after bootstrap); then let uv fetch it
    if subprocess.run([*base, "--offline"], check=False, capture_output=True).returncode != 0:
        subprocess.run(base, check=True, capture_output=True)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    registry._entry_points.cache_clear()
    yield target
    sys.path.remove(str(target))
    sys.modules.pop("udop_sequence", None)
    registry._entry_points.cache_clear()


def test_the_installed_package_is_found_through_its_entry_point(installed: Path) -> None:
    assert "sequence" in available_connectors()
    connector = get_connector({"connector": "sequence", "stop": 5})
    assert Path(sys.modules[type(connector).__module__].__file__ or "").is_relative_to(installed)
    assert [r["square"] for b in connector.read() for r in b.to_pylist()] == [0, 1, 4, 9, 16]


def test_extract_and_load_through_the_third_party_connector(installed: Path, tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    pipeline = Pipeline.model_validate(
        {
            "apiVersion": "udop/v1",
            "kind": "Pipeline",
            "metadata": {"name": "seq"},
            "spec": {
                "tasks": [
                    {
                        "id": "ext",
                        "type": "extract",
                        "source": {
                            "connector": "sequence",
                            "start": 1,
                            "stop": 8,
                            "batch_size": 3,
                            "incremental": {"column": "n"},
                        },
                    },
                    {
                        "id": "load",
                        "type": "load",
                        "depends_on": ["ext"],
                        "target": {"connector": "sequence", "path": str(out), "mode": "append"},
                    },
                ]
            },
        }
    )
    state = MemoryStateStore()

    def ctx(task: str, run: str) -> TaskContext:
        return TaskContext(
            pipeline=pipeline,
            task_id=task,
            run_id=run,
            attempt=1,
            logical_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            params={},
            data_root=str(tmp_path / "data"),
            services={"state": state},
        )

    c = ctx("ext", "r1")
    manifest = extract_to_parquet(c, pipeline.task("ext").source, c.output_uri)
    assert pq.read_table(manifest.uri).column("n").to_pylist() == list(range(1, 8))
    metrics = load_from_parquet(
        ctx("load", "r1"), pipeline.task("load").target, manifest, {"ext": TaskResult(output=manifest)}
    )
    assert metrics["rows_written"] == 7
    assert metrics["watermarks_committed"] == [{"key": "udop:watermark:seq:ext", "value": 7}]
    # the next run starts after the committed watermark: nothing new
    c2 = ctx("ext", "r2")
    assert extract_to_parquet(c2, pipeline.task("ext").source, c2.output_uri).rows == 0
    assert [json.loads(line)["n"] for line in out.read_text().splitlines()] == list(range(1, 8))
