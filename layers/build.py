"""Build the Lambda layer folders for python3.12 x86_64 without Docker.

    python layers/build.py            # build what is missing or stale, print sizes
    python layers/build.py --force    # rebuild every layer

Each layer is ``layers/.build/<layer>/python/...`` (what ``Code.from_asset`` zips). Third-party
wheels are downloaded for manylinux x86_64 / CPython 3.12 (all four manylinux tags: with 2014 alone
pip silently picks old pandas/pyarrow/numpy releases), pinned to ``uv.lock``, then trimmed (tests,
headers, Cython sources, pyarrow Flight), stripped, and precompiled with
``--invalidation-mode unchecked-hash`` (the CDK zipper sets file times to 1980, which makes
timestamp-checked .pyc stale and costs seconds at every cold start). boto3/botocore are in the
Lambda runtime and left out.

pyarrow + pandas + numpy do not fit Lambda's 250 MB (function + layers, unzipped) together, so the
layers are split and each function carries only the layers it uses (``FUNCTION_LAYERS``).
Downloads are cached under ``layers/.build/pip-cache``; a layer whose inputs did not change is kept.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "layers" / ".build"
PIP_CACHE = BUILD / "pip-cache"

#: third-party requirements per layer (pinned by uv.lock); a higher layer never repeats what a lower
#: one in the same function already holds
LAYERS: dict[str, list[str]] = {
    # the udop packages themselves, settings, spec, metadata store, state store, observability
    "core": [
        "pydantic", "pydantic-settings", "pyyaml", "click", "sqlalchemy", "alembic",
        "psycopg[binary]", "redis", "aws-lambda-powertools[tracer]",
        "sqlglot",  # column lineage of transform and validate tasks runs in the task runner
    ],
    # Arrow/Parquet interchange and the connector drivers
    "connectors": ["pyarrow", "pymysql", "httpx", "pika"],
    # the transform engine
    "transforms": ["duckdb"],
    # the REST API (FastAPI behind Mangum, JWT/JWKS checks): its own layer, not core, because the
    # task runner (core + connectors + transforms) has ~6 MiB left in its budget and these are ~20
    "api": ["fastapi", "mangum", "pyjwt[crypto]", "prometheus-client"],  # prometheus: /metrics
    # OpenLineage events (UDOP_OPENLINEAGE=1) are sent by the run events, which record every attempt:
    # the client and its HTTP stack (~10 MiB) do not fit beside pyarrow and DuckDB in the task runner
    "openlineage": ["openlineage-python"],
}
#: which layers each function in functions/ uses, bottom first (at most 5 per function)
FUNCTION_LAYERS: dict[str, list[str]] = {
    "task_runner": ["core", "connectors", "transforms"],
    "deployer": ["core"],
    "run_events": ["core", "openlineage"],
    "api": ["core", "api"],
    "stream_runner": ["core", "connectors", "transforms"],
}
#: our own packages, copied as source into the core layer (with one dist-info for entry points)
OWN_PACKAGES = [
    ROOT / "shared" / "udop",
    ROOT / "layers" / "connectors" / "udop_connectors",
    ROOT / "layers" / "transforms" / "udop_transforms",
]
#: in the Lambda python3.12 runtime already (jmespath is too, but Powertools needs it and it is tiny)
RUNTIME_PROVIDED = {"boto3", "botocore", "s3transfer"}

PLATFORMS = ["manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64"]
#: Lambda: function + all layers, unzipped; the budget keeps 20 MB to spare
LAMBDA_UNZIPPED_LIMIT = 262_144_000
SPARE = 20 * 1024 * 1024
BUDGET = LAMBDA_UNZIPPED_LIMIT - SPARE
BUILD_VERSION = "5"  # bump when the trimming rules change


def find_python312() -> str:
    """A working CPython 3.12 (compileall must run with the runtime's bytecode version)."""
    candidates = [os.environ.get("UDOP_PYTHON312", ""), shutil.which("python3.12") or "",
                  *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))]
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            continue
        if out.strip() == "(3, 12)":
            return candidate
    raise SystemExit("layers/build.py: no python3.12 found; install it or set "
                     "UDOP_PYTHON312=/path/to/python3.12")


def dist_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_constraints() -> str:
    """Every locked third-party version (uv.lock), so the layers run what the tests ran."""
    uv = ROOT / ".tools" / "bin" / "uv"
    out = subprocess.run([str(uv) if uv.exists() else "uv", "export", "--frozen", "--no-dev", "--all-extras",
                          "--no-hashes", "--no-emit-project", "--no-header", "--no-annotate"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return "".join(line + "\n" for line in out.splitlines() if line and not line.startswith(("#", "-e", " ")))


def installed_dists(folder: Path) -> dict[str, Path]:
    return {dist_name(p.name.split("-")[0]): p for p in folder.glob("*.dist-info")}


def remove_dist(folder: Path, dist_info: Path) -> None:
    """Remove one installed distribution using its RECORD."""
    record = dist_info / "RECORD"
    tops: set[Path] = set()
    if record.exists():
        for line in record.read_text().splitlines():
            rel = line.split(",")[0]
            if not rel:
                continue
            path = (folder / rel).resolve()
            if path.is_file() or path.is_symlink():
                path.unlink()
            tops.add(folder / Path(rel).parts[0])
    for top in tops:
        if top.is_dir() and not any(p.is_file() for p in top.rglob("*")):
            shutil.rmtree(top)
    if dist_info.exists():
        shutil.rmtree(dist_info)


#: pyarrow parts nothing in udop loads: C++ test helpers, C++ sources, Cython declarations
PYARROW_UNUSED = ("_pyarrow_cpp_tests", "src", "includes")
#: sqlglot's per-dialect modules kept: column lineage follows the SQL DuckDB runs, and sqlglot imports
#: a dialect only when asked for it; the other ~35 dialects (~3 MiB) would push the task runner over
SQLGLOT_KEEP = {"__init__", "dialect", "base", "duckdb"}


def trim(folder: Path) -> None:
    """Drop what a Lambda never loads: tests, headers, Cython sources, pyarrow Flight, caches, sqlglot's
    other dialects."""
    pyarrow = folder / "pyarrow"
    if pyarrow.is_dir():
        for path in pyarrow.iterdir():
            if path.name.startswith(PYARROW_UNUSED):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        # pip writes symlinked libraries as copies; the loader only needs the SONAME (libx.so.NNNN)
        for lib in list(pyarrow.glob("lib*.so*")):
            soname = re.match(r"(lib\w+\.so)(\.\d+)?", lib.name)
            if soname and lib.name != "".join(filter(None, soname.groups())):
                continue
            if soname and soname.group(2) is None and any(pyarrow.glob(lib.name + ".*")):
                lib.unlink()  # libx.so beside libx.so.NNNN: link-time only
        for lib in list(pyarrow.glob("lib*.so.*.*")):
            lib.unlink()  # libx.so.NNNN.1.0 beside libx.so.NNNN: link-time only
    sqlglot = folder / "sqlglot"
    if sqlglot.is_dir():
        shutil.rmtree(sqlglot / "executor", ignore_errors=True)  # its SQL interpreter in Python: unused
        for sub in ("dialects", "generators", "parsers"):
            for path in (sqlglot / sub).glob("*.py"):
                if path.stem not in SQLGLOT_KEEP:
                    path.unlink()
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if not path.exists():
            continue
        name = path.name
        if path.is_dir() and (name in {"tests", "__pycache__", "include", "_duckdb-stubs"} or
                              (name == "flight" and "pyarrow" in path.parts) or
                              (name == "testing" and path.parent.name == "sqlalchemy")):
            shutil.rmtree(path)
        elif path.is_file() and (path.suffix in {".h", ".hpp", ".pyx", ".pxd", ".pxi", ".cpp", ".c", ".pyi"}
                                 or ("pyarrow" in path.parts and "flight" in name)):
            path.unlink()


def strip_shared_objects(folder: Path) -> None:
    objects = [str(p) for p in folder.rglob("*") if p.is_file() and re.search(r"\.so(\.|$)", p.name)]
    for start in range(0, len(objects), 200):
        # a few vendored objects are not ELF files strip understands; leaving them as they are is fine
        subprocess.run(["strip", "--strip-unneeded", *objects[start:start + 200]], check=False,
                       stderr=subprocess.DEVNULL)


def compile_bytecode(python312: str, folder: Path) -> None:
    subprocess.run([python312, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
                    str(folder)], check=False, stdout=subprocess.DEVNULL)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def write_own_dist_info(site: Path) -> None:
    """One dist-info for the udop packages, so ``importlib.metadata`` sees their entry points."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    info = site / f"udop-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: udop\nVersion: {project['version']}\n")
    groups = project.get("entry-points", {})
    lines = []
    for group, entries in groups.items():
        if entries:
            lines.append(f"[{group}]")
            lines += [f"{name} = {target}" for name, target in entries.items()]
            lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    (info / "INSTALLER").write_text("udop layers/build.py\n")


def pip_install(python312: str, target: Path, requirements: list[str], constraints: Path) -> None:
    cmd = [python312, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--target", str(target), "--only-binary=:all:", "--implementation", "cp",
           "--python-version", "3.12", *(arg for p in PLATFORMS for arg in ("--platform", p)),
           "--cache-dir", str(PIP_CACHE), "-c", str(constraints), *requirements]
    subprocess.run(cmd, check=True)


def layer_inputs_hash(layer: str, constraints: str) -> str:
    lower = [name for name in LAYERS if list(LAYERS).index(name) < list(LAYERS).index(layer)]
    payload = json.dumps([BUILD_VERSION, LAYERS[layer], {n: LAYERS[n] for n in lower}, constraints])
    return hashlib.sha256(payload.encode()).hexdigest()


def shared_lower_layers(layer: str) -> list[str]:
    """The layers loaded below ``layer`` by every function that uses it: what it need not repeat.
    (The api layer comes after connectors in ``LAYERS`` but the API function does not load
    connectors, so anyio and idna, which httpx brought into connectors, must stay in the api layer.)"""
    users = [layers for layers in FUNCTION_LAYERS.values() if layer in layers]
    below = [name for name in LAYERS if list(LAYERS).index(name) < list(LAYERS).index(layer)]
    return [name for name in below if users and all(name in layers for layers in users)]


def build_layer(layer: str, python312: str, constraints: str, *, force: bool) -> Path:
    out = BUILD / layer
    site = out / "python"
    stamp = out / ".inputs"
    digest = layer_inputs_hash(layer, constraints)
    if not force and stamp.exists() and stamp.read_text() == digest:
        print(f"{layer}: up to date")
        return out
    if out.exists():
        shutil.rmtree(out)
    site.mkdir(parents=True)
    constraints_file = BUILD / "constraints.txt"
    constraints_file.write_text(constraints)
    print(f"{layer}: installing {' '.join(LAYERS[layer])}", flush=True)
    pip_install(python312, site, LAYERS[layer], constraints_file)
    # a layer below this one in every function that uses it already provides these
    provided = set(RUNTIME_PROVIDED)
    for lower in shared_lower_layers(layer):
        provided |= set(installed_dists(BUILD / lower / "python"))
    for name, info in installed_dists(site).items():
        if name in provided:
            remove_dist(site, info)
    for leftover in ("bin",):
        shutil.rmtree(site / leftover, ignore_errors=True)
    trim(site)
    strip_shared_objects(site)
    compile_bytecode(python312, site)
    stamp.write_text(digest)
    return out


def refresh_own_packages(python312: str) -> None:
    """Copy the udop packages into the core layer (fast, done on every build so code is current)."""
    site = BUILD / "core" / "python"
    for old in [*site.glob("udop-*.dist-info"), *(site / p.name for p in OWN_PACKAGES)]:
        if old.exists():
            shutil.rmtree(old)
    for package in OWN_PACKAGES:
        if package.exists():
            shutil.copytree(package, site / package.name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            compile_bytecode(python312, site / package.name)
    write_own_dist_info(site)


def report() -> dict[str, int]:
    """Unzipped sizes in MiB: Lambda's 250 MB limit is 262,144,000 bytes, i.e. 250 MiB."""
    mib = 1024 * 1024
    sizes = {layer: folder_size(BUILD / layer) for layer in LAYERS if (BUILD / layer).exists()}
    for layer, size in sizes.items():
        print(f"  layer {layer:<11} {size / mib:8.1f} MiB unzipped")
    for function, layers in FUNCTION_LAYERS.items():
        folder = ROOT / "functions" / function
        total = (folder_size(folder) if folder.exists() else 0) + sum(sizes.get(layer, 0) for layer in layers)
        flag = "ok" if total <= BUDGET else "OVER BUDGET"
        print(f"  function {function:<12} {total / mib:8.1f} MiB (code + {', '.join(layers)}; "
              f"budget {BUDGET / mib:.0f} MiB = 250 less 20 spare) {flag}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild every layer")
    parser.add_argument("--layer", action="append", choices=list(LAYERS), help="only these layers")
    args = parser.parse_args(argv)
    python312 = find_python312()
    constraints = locked_constraints()
    BUILD.mkdir(parents=True, exist_ok=True)
    (BUILD / ".gitignore").write_text("*\n")
    for layer in args.layer or list(LAYERS):
        build_layer(layer, python312, constraints, force=args.force)
    refresh_own_packages(python312)
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
