"""CDK tests: the app synthesized once per session with validation and bundling off (fast tier).

The lint tier (test_lint.py) synthesizes in a subprocess through the pinned CDK CLI with CDK's own
template validation and cdk-nag on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

# read by the jsii node process when it starts, i.e. before aws_cdk is first imported
os.environ.setdefault("CDK_VALIDATION", "false")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
if str(INFRA) not in sys.path:
    sys.path.insert(0, str(INFRA))

pytestmark = pytest.mark.infra

#: context of the fast tier: tiny placeholder layers (the real ones are built by layers/build.py),
#: no asset bundling, the repository's pipelines/
FAST_CONTEXT: dict[str, Any] = {"udop:assets": "placeholder", "aws:cdk:bundling-stacks": []}


def synth(tmp_dir: Path, **context: Any) -> tuple[Any, Any]:
    """(stack, Template) of the app with ``context`` on top of cdk.json's and the fast tier's."""
    # imported here, not at the top: CDK_VALIDATION must be in the environment before the jsii
    # runtime (started by the first aws_cdk import) reads it
    from aws_cdk.assertions import Template

    from app import build_app

    _, stack = build_app({**FAST_CONTEXT, **context}, nag=False, outdir=str(tmp_dir))
    return stack, Template.from_stack(stack)


@pytest.fixture(scope="session")
def synth_app() -> Any:
    """``synth(tmp_dir, **context)`` for tests that need the app with other settings."""
    return synth


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    return synth(tmp_path_factory.mktemp("cdk-out"))


@pytest.fixture(scope="session")
def stack(synthesized: tuple[Any, Any]) -> Any:
    return synthesized[0]


@pytest.fixture(scope="session")
def template(synthesized: tuple[Any, Any]) -> Any:
    return synthesized[1]


@pytest.fixture(scope="session")
def resources(template: Any) -> dict[str, Any]:
    return dict(template.to_json()["Resources"])


#: a pipelines folder with Python code beside its definition (a module and a package)
PIPELINES_WITH_CODE = Path(__file__).resolve().parent / "pipelines_with_code"


@pytest.fixture(scope="session")
def synthesized_with_code(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """(stack, Template, cloud assembly folder) of the app whose ``udop:pipelinesDir`` holds Python code
    (and what is not shipped: caches, a hidden folder, a text file); the task and stream runners carry it."""
    import shutil

    pipelines = tmp_path_factory.mktemp("pipelines") / "pipelines"
    shutil.copytree(PIPELINES_WITH_CODE, pipelines)
    (pipelines / "__pycache__").mkdir()
    (pipelines / "__pycache__" / "report_helpers.cpython-312.pyc").write_bytes(b"stale")
    (pipelines / "shared_steps" / "__pycache__").mkdir()
    (pipelines / "shared_steps" / "__pycache__" / "scale.cpython-312.pyc").write_bytes(b"stale")
    (pipelines / ".venv" / "lib").mkdir(parents=True)
    (pipelines / ".venv" / "lib" / "site.py").write_text("raise SystemExit('not user code')\n")
    (pipelines / "notes.txt").write_text("not code\n")
    outdir = tmp_path_factory.mktemp("cdk-out")
    stack, template = synth(outdir, **{"udop:pipelinesDir": str(pipelines)})
    return stack, template, outdir
