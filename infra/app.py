"""The udop CDK app: ``npx cdk synth`` (through cdk.json) or ``python infra/app.py``.

Offline and env-agnostic: no account, region or credentials are needed to synthesize. Settings
come from CDK context (``cdk.json``, ``-c udop:key=value``); see docs/deployment.md.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aws_cdk as cdk

from udop_infra.nag import add_checks
from udop_infra.platform import UdopPlatform, synth_error
from udop_infra.stack import UdopStack

CDK_JSON = Path(__file__).resolve().parent.parent / "cdk.json"


def default_context() -> dict[str, Any]:
    """cdk.json's context (settings and feature flags), so running the app directly synthesizes the
    same templates as ``npx cdk synth``; context given on the CLI still wins."""
    return dict(json.loads(CDK_JSON.read_text()).get("context", {}))


def build_app(
    context: dict[str, Any] | None = None, *, nag: bool | None = None, outdir: str | None = None
) -> tuple[cdk.App, UdopStack]:
    """The app with its one stack; ``nag`` defaults to context ``udop:nag`` (true)."""
    app = cdk.App(context={**default_context(), **(context or {})}, outdir=outdir)
    stack = UdopPlatform(app, str(app.node.try_get_context("udop:stackName") or "Udop"))
    if nag is None:
        nag = str(
            app.node.try_get_context("udop:nag") if app.node.try_get_context("udop:nag") is not None else True
        ).lower() not in {"false", "0", "no"}
    if nag:
        add_checks(app)
    return app, stack


def main() -> int:
    try:
        app, _ = build_app()
        app.synth()
    except Exception as exc:
        message = synth_error(exc)  # a bad setting or a layer that cannot be built: one line
        if message is None:
            raise
        print(f"udop infra: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
