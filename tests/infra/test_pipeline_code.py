"""Fast tier: the Python code beside the definitions reaches the task runner's deployment package.

python tasks name ``module:function``; the LocalExecutor imports the module from the definition's
folder, the task runner from ``UDOP_CODE_DIR``. The CDK app copies the ``.py`` files of
``udop:pipelinesDir`` into the runner's asset under ``pipeline_code/`` and points the variable there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.infra
HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "pipelines_with_code"


def logical_id(stack: Any, construct: Any) -> str:
    return str(stack.get_logical_id(construct.node.default_child))


def runner_asset(
    stack: Any, template: Any, outdir: Path, function: Any = None
) -> tuple[dict[str, Any], Path]:
    """(a runner's properties, the folder its code asset was staged to in the assembly); default the
    task runner."""
    function = function if function is not None else stack.runtime.task_runner
    props = template.to_json()["Resources"][logical_id(stack, function)]["Properties"]
    key = props["Code"]["S3Key"]  # "<asset hash>.zip"
    folder = outdir / f"asset.{key.removesuffix('.zip')}"
    assert folder.is_dir(), sorted(p.name for p in outdir.iterdir())
    return props, folder


@pytest.fixture(scope="module")
def shipped(synthesized_with_code: tuple[Any, Any, Path]) -> tuple[dict[str, Any], Path]:
    return runner_asset(*synthesized_with_code)


def test_the_task_runner_imports_pipeline_code_from_its_package(shipped: tuple[dict[str, Any], Path]) -> None:
    props, asset = shipped
    assert props["Environment"]["Variables"]["UDOP_CODE_DIR"] == "/var/task/pipeline_code"
    assert props["Handler"] == "app.handler"
    assert (asset / "app.py").is_file()  # the function's own code is still there
    files = sorted(str(p.relative_to(asset / "pipeline_code")) for p in (asset / "pipeline_code").rglob("*"))
    # the module and the package (folders kept), not the definition, caches, hidden folders or other files
    assert files == [
        "report_helpers.py",
        "shared_steps",
        "shared_steps/__init__.py",
        "shared_steps/scale.py",
    ]
    assert (asset / "pipeline_code" / "report_helpers.py").read_text() == (
        FIXTURE / "report_helpers.py"
    ).read_text()


def test_the_shipped_callables_import_and_run_as_the_runner_calls_them(
    shipped: tuple[dict[str, Any], Path],
) -> None:
    _, asset = shipped
    # a fresh interpreter (its sys.path untouched by this session), importing as the runner does:
    # udop.tasks.python.import_callable(callable, UDOP_CODE_DIR); -B: the session's shared asset stays as shipped
    code = (
        "import json, sys; from udop.tasks.python import import_callable; d = sys.argv[1]; "
        "numbers = import_callable('report_helpers:numbers', d)(None, {}, n=4); "
        "doubled = import_callable('shared_steps.scale:doubled', d)(None, {'numbers': numbers}); "
        "print(json.dumps([numbers, doubled]))"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-B", "-c", code, str(asset / "pipeline_code")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=asset,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == [[1, 2, 3, 4], [2, 4, 6, 8]]


def test_without_pipeline_code_the_runner_ships_only_its_own(stack: Any, template: Any) -> None:
    # the session's app: the repository's pipelines/, definitions only
    props = template.to_json()["Resources"][logical_id(stack, stack.runtime.task_runner)]["Properties"]
    assert "UDOP_CODE_DIR" not in props["Environment"]["Variables"]
    assert stack.runtime.pipeline_code_dir is None


def test_a_changed_module_changes_the_runners_asset(synth_app: Any, tmp_path: Path) -> None:
    # the asset hash follows the shipped code, so `cdk deploy` updates the function when it changes
    pipelines = tmp_path / "pipelines"
    shutil.copytree(FIXTURE, pipelines)
    hashes = []
    for n, body in enumerate(["def numbers(context, inputs, n):\n    return [n]\n", "X = 1\n"]):
        (pipelines / "report_helpers.py").write_text(body)
        stack, template = synth_app(tmp_path / f"out{n}", **{"udop:pipelinesDir": str(pipelines)})
        hashes.append(runner_asset(stack, template, tmp_path / f"out{n}")[0]["Code"]["S3Key"])
    assert hashes[0] != hashes[1]
