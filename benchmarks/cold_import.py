"""Cold import time of the task runner from the built layers, with python3.12 as on Lambda.

    python layers/build.py && python benchmarks/cold_import.py [--runs 5]

Each run is a fresh python3.12 process whose path is what Lambda gives the function: its code,
the layers (``layers/.build/<layer>/python``) and, standing in for the runtime's own boto3, the
boto3/botocore of this repository's venv. Measured: ``import app`` of functions/task_runner
(module-level work included: settings, the S3 client, the state store client).

Baseline, in the same script: the same imports when the LAYERS' bytecode cannot be used — what
happens on Lambda with timestamp-checked .pyc after the CDK zipper resets file times to 1980 (the
layer is read-only, so every cold start compiles it again). Simulated with a hard-linked copy of each
layer without its ``__pycache__`` folders, run with ``-B`` (nothing written). Only the layers lose
their bytecode: the standard library and the runtime's boto3 keep theirs, as they do on Lambda.
Prints median, min and max of ``--runs`` fresh processes each (the machine may be shared).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3")

PROBE = """
import sys, time
start = time.perf_counter()
import app
print(f"{time.perf_counter() - start:.4f}")
"""


def load_build():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("layers_build", REPO / "layers" / "build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runtime_dir() -> Path:
    """A folder holding links to the venv's boto3 & co, like /var/runtime on Lambda."""
    folder = Path(tempfile.mkdtemp(prefix="udop-fake-runtime-"))
    site = Path(sysconfig.get_paths()["purelib"])
    for name in RUNTIME_PACKAGES:
        if (site / name).exists():
            (folder / name).symlink_to(site / name)
    return folder


def without_bytecode(layer: Path, into: Path) -> Path:
    """A hard-linked copy of ``layer`` without its ``.pyc`` files (same file system, so it is quick)."""
    dest = into / layer.parent.name / layer.name
    shutil.copytree(layer, dest, copy_function=os.link,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def run_once(python312: str, path: list[Path], *, bytecode: bool, cwd: Path) -> float:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_EC2_METADATA_DISABLED": "true",
        "UDOP_DATA_BUCKET": "bench-data",
        "UDOP_DEFINITIONS_BUCKET": "bench-defs",
        "UDOP_STATE_URL": "redis://127.0.0.1:6379/0",
        "POWERTOOLS_SERVICE_NAME": "udop-task-runner",
        "POWERTOOLS_TRACE_DISABLED": "1",
        "POWERTOOLS_METRICS_NAMESPACE": "udop",
        "PYTHONPATH": os.pathsep.join(map(str, path)),
    }
    # -B: the baseline's layer copies must not get bytecode written beside them between runs
    args = [python312, "-I"] if bytecode else [python312, "-I", "-B"]
    # -I ignores PYTHONPATH, so put the path in from the probe itself
    probe = f"import sys; sys.path[:0] = {[str(p) for p in path]!r}\n" + PROBE
    out = subprocess.run([*args, "-c", probe], env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"cold_import: the task runner failed to import:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    build = load_build()
    python312 = build.find_python312()
    layers = build.FUNCTION_LAYERS["task_runner"]
    missing = [layer for layer in layers if not (build.BUILD / layer / "python").is_dir()]
    if missing:
        raise SystemExit(f"cold_import: layers {missing} are not built; run `python layers/build.py` first")
    code = REPO / "functions" / "task_runner"
    runtime = runtime_dir()
    built_layers = [build.BUILD / layer / "python" for layer in layers]
    path = [code, *built_layers, runtime]
    scratch = Path(tempfile.mkdtemp(prefix=".no-bytecode-", dir=build.BUILD))
    try:
        bare = [code, *(without_bytecode(p, scratch) for p in built_layers), runtime]
        run_once(python312, path, bytecode=True, cwd=code)  # warm the OS page cache for both variants
        run_once(python312, bare, bytecode=False, cwd=code)
        built = [run_once(python312, path, bytecode=True, cwd=code) for _ in range(args.runs)]
        baseline = [run_once(python312, bare, bytecode=False, cwd=code) for _ in range(args.runs)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"task runner cold import, python3.12, {args.runs} fresh processes each (seconds)")
    print(f"{'variant':<52}{'median':>8}{'min':>8}{'max':>8}")
    for name, times in [
        ("layers as built (unchecked-hash .pyc)", built),
        ("baseline: layers without usable .pyc (1980 times)", baseline),
    ]:
        print(f"{name:<52}{statistics.median(times):>8.3f}{min(times):>8.3f}{max(times):>8.3f}")
    print(f"speed-up: {statistics.median(baseline) / statistics.median(built):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
