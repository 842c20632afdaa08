"""Time from ``udop init --aws`` to a synthesized template, on a warm layer cache.

    python benchmarks/init_to_synth.py [--runs 3] [--python /path/to/venv/bin/python]

Each run, in a fresh temporary folder: ``udop init --aws demo``, then ``cdk synth`` of the scaffolded
app through the pinned CDK CLI (``node_modules/.bin/cdk``, the ``python3`` of ``--python``'s venv
first on ``PATH``, as after ``. .venv/bin/activate``): CDK's template validation and cdk-nag on, the
layers built by CDK local bundling — from ``~/.cache/udop``, which one untimed synth warms first (its
time is printed too: on a cold cache that is the ~400 MB download and the layer builds). ``--python``
defaults to this interpreter (udop's checkout, editable); give a venv with the wheel installed to
measure an installed udop.

Baseline, measured the same way: the same two commands with the synth told to skip bundling
(``-c aws:cdk:bundling-stacks=...`` cannot say "none" through the CLI, so the scaffolded app is run by
``python app.py`` with ``CDK_CONTEXT_JSON``, as the scaffold's own test does, for both variants):
what the synth costs without staging the layers. Prints median, min and max of ``--runs`` each; the
machine may be shared (say its load beside any figure).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def environment(python: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_", "VIRTUAL_ENV"))}
    env.update(
        {
            "PATH": f"{python.parent}{os.pathsep}{env.get('PATH', '')}",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_CONFIG_FILE": "/nonexistent",
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
            "CDK_DISABLE_VERSION_CHECK": "1",
        }
    )
    return env


def run(cmd: list[str], **kwargs: object) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise SystemExit(
            f"init_to_synth: {' '.join(cmd[:3])} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        )


def once(python: Path, *, cli: bool, bundling: bool) -> float:
    """Seconds from ``udop init --aws demo`` to ``Udop.template.json`` written."""
    env = environment(python)
    with tempfile.TemporaryDirectory(prefix="udop-init-synth-") as tmp:
        start = time.perf_counter()
        run([str(python.parent / "udop"), "init", "--aws", "demo"], cwd=tmp, env=env)
        project = Path(tmp) / "demo"
        out = Path(tmp) / "cdk.out"
        if cli:
            run(
                [
                    str(REPO / "node_modules" / ".bin" / "cdk"),
                    "synth",
                    "--quiet",
                    "--no-notices",
                    "--output",
                    str(out),
                ],
                cwd=project,
                env=env,
            )
        else:
            context = json.loads((project / "cdk.json").read_text())["context"]
            if not bundling:
                context["aws:cdk:bundling-stacks"] = []
            run(
                [str(python), "app.py"],
                cwd=project,
                env={**env, "CDK_OUTDIR": str(out), "CDK_CONTEXT_JSON": json.dumps(context)},
            )
        elapsed = time.perf_counter() - start
        if not (out / "Udop.template.json").is_file():
            raise SystemExit("init_to_synth: no template written")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--python", type=Path, default=Path(sys.executable))
    args = parser.parse_args()
    if shutil.which("node") is None or not (REPO / "node_modules" / ".bin" / "cdk").exists():
        raise SystemExit("init_to_synth: needs Node and the pinned CDK CLI (bash scripts/bootstrap.sh)")
    python = args.python.absolute()
    warm_up = once(python, cli=True, bundling=True)
    print(f"untimed warm-up synth (builds whatever ~/.cache/udop lacks): {warm_up:.1f} s")
    variants = {
        "udop init --aws + npx cdk synth (layers from the cache)": dict(cli=True, bundling=True),
        "udop init --aws + python app.py (layers from the cache)": dict(cli=False, bundling=True),
        "baseline: udop init --aws + python app.py, no bundling": dict(cli=False, bundling=False),
    }
    results = {name: [once(python, **kw) for _ in range(args.runs)] for name, kw in variants.items()}
    print(
        f"init -> synthesized template, {args.runs} runs each (seconds); load average now "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(f"{'variant':<60}{'median':>8}{'min':>8}{'max':>8}")
    for name, times in results.items():
        print(f"{name:<60}{statistics.median(times):>8.1f}{min(times):>8.1f}{max(times):>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
