"""The Lambda layers, built for python3.12 x86_64 during ``cdk synth`` (CDK local bundling, no Docker).

Each layer is a ``python/`` folder (what Lambda puts on ``sys.path``). Third-party wheels are installed
for manylinux x86_64 / CPython 3.12 (all four manylinux tags: with 2014 alone pip silently picks old
pandas/pyarrow/numpy releases), pinned to udop's ``uv.lock`` (shipped in the wheel), then trimmed
(tests, headers, Cython sources, pyarrow Flight), stripped, and precompiled with
``--invalidation-mode unchecked-hash`` (the CDK zipper sets file times to 1980, which makes
timestamp-checked .pyc stale and costs seconds at every cold start). boto3/botocore are in the Lambda
runtime and left out. The core layer also carries the udop packages themselves, copied from where
they are installed, with one dist-info for their entry points.

pyarrow + pandas + numpy do not fit Lambda's 250 MB (function + layers, unzipped) together, so the
layers are split and each function carries only the layers it uses (``FUNCTION_LAYERS``).

Everything is cached under ``~/.cache/udop`` (``UDOP_CACHE_DIR``): downloaded wheels (``pip/``), each
layer's third-party part by the hash of its requirements and pins (``layers/site-<hash>``), and the
udop packages by the hash of their files. A layer's asset hash (``layer_asset_hash``) is computed
from those inputs and udop's version without building anything, so a synth whose layers are cached
only links files, a synth that skips bundling still gets the real hashes, and upgrading udop changes
every layer's hash.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from functools import cache
from pathlib import Path

#: third-party requirements per layer (pinned by uv.lock); a higher layer never repeats what a lower
#: one in the same function already holds
LAYERS: dict[str, list[str]] = {
    # the udop packages themselves, settings, spec, metadata store, state store, observability
    "core": [
        "pydantic",
        "pyyaml",
        "click",
        "sqlalchemy",
        "alembic",
        "psycopg[binary]",
        "redis",
        "aws-lambda-powertools[tracer]",
        "sqlglot",  # column lineage of transform and validate tasks runs in the task runner
    ],
    # Arrow/Parquet interchange and the connector drivers (pymongo brings dnspython: mongodb+srv://)
    "connectors": ["pyarrow", "pymysql", "httpx", "pika", "pymongo"],
    # the transform engine
    "transforms": ["duckdb"],
    # the REST API (FastAPI behind Mangum, JWT/JWKS checks): its own layer, not core, because the
    # task runner (core + connectors + transforms) has ~6 MiB left in its budget and these are ~20
    "api": ["fastapi", "mangum", "pyjwt[crypto]", "prometheus-client"],  # prometheus: /metrics
    # OpenLineage events (UDOP_OPENLINEAGE=1) are sent by the run events, which record every attempt:
    # the client and its HTTP stack (~10 MiB) do not fit beside pyarrow and DuckDB in the task runner
    "openlineage": ["openlineage-python"],
}
#: which layers each function uses, bottom first (at most 5 per function)
FUNCTION_LAYERS: dict[str, tuple[str, ...]] = {
    "task_runner": ("core", "connectors", "transforms"),
    "deployer": ("core",),
    "run_events": ("core", "openlineage"),  # OpenLineage events leave from where attempts are recorded
    "api": ("core", "api"),
    "stream_runner": ("core", "connectors", "transforms"),  # udop_infra.streams
}
#: our own packages, copied as source into the core layer (with one dist-info for entry points)
OWN_PACKAGES = ("udop", "udop_connectors", "udop_transforms")
#: in the Lambda python3.12 runtime already (jmespath is too, but Powertools needs it and it is tiny)
RUNTIME_PROVIDED = {"boto3", "botocore", "s3transfer"}
PLATFORMS = [
    "manylinux_2_34_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
]
#: the Lambda environment uv.lock's markers are evaluated for
LAMBDA_MARKERS = {
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "python_version": "3.12",
    "python_full_version": "3.12.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}
#: Lambda: function + all layers, unzipped; the budget keeps 20 MB to spare
LAMBDA_UNZIPPED_LIMIT = 262_144_000
SPARE = 20 * 1024 * 1024
BUDGET = LAMBDA_UNZIPPED_LIMIT - SPARE
BUILD_VERSION = "7"  # bump when the trimming code changes (its lists are in the key already)

#: where this package finds the functions' code and uv.lock: inside the installed wheel
#: (``udop_infra/_assets``), else udop's source tree
_PACKAGED = Path(__file__).resolve().parent / "_assets"
_SOURCE_TREE = Path(__file__).resolve().parents[2]


class LayerBuildError(RuntimeError):
    """A layer cannot be built; the message says what to install or set."""


def assets_root() -> Path:
    """The folder holding ``functions/`` and ``uv.lock``."""
    return _PACKAGED if (_PACKAGED / "functions").is_dir() else _SOURCE_TREE


def functions_dir() -> Path:
    return assets_root() / "functions"


def lock_file() -> Path:
    return assets_root() / "uv.lock"


def udop_version() -> str:
    return importlib.metadata.version("udop")


def cache_root() -> Path:
    from udop.settings import LayerBuildSettings, load_settings

    configured = load_settings(LayerBuildSettings).cache_dir
    return configured if configured is not None else Path.home() / ".cache" / "udop"


# --- inputs -------------------------------------------------------------------------------------------


def dist_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def locked_constraints(lock: Path | None = None) -> str:
    """Every third-party version of ``uv.lock`` that applies to the Lambda runtime, as pip constraints,
    so the layers run what udop's tests ran. Where the lock forks a package by environment
    (``resolution-markers``), the version for CPython 3.12 on Linux x86_64 is taken."""
    from packaging.markers import Marker

    data = tomllib.loads((lock or lock_file()).read_text())
    pins: dict[str, str] = {}
    for package in data.get("package", []):
        source = package.get("source", {})
        if "registry" not in source:
            continue  # udop itself (editable / virtual)
        markers = package.get("resolution-markers")
        if markers and not any(Marker(m).evaluate(dict(LAMBDA_MARKERS)) for m in markers):
            continue
        pins[dist_name(package["name"])] = str(package["version"])
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def package_dir(name: str) -> Path:
    """Where an own package is imported from, without importing it (udop_transforms loads DuckDB)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise LayerBuildError(f"package {name} is not installed: the core layer carries it")
    return Path(next(iter(spec.submodule_search_locations)))


def _own_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def own_packages_hash() -> str:
    """The udop packages' files: a change of udop's code (or version) is a new core layer."""
    digest = hashlib.sha256(udop_version().encode())
    for name in OWN_PACKAGES:
        folder = package_dir(name)
        for path in _own_files(folder):
            digest.update(f"{name}/{path.relative_to(folder).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def shared_lower_layers(layer: str) -> list[str]:
    """The layers loaded below ``layer`` by every function that uses it: what it need not repeat.
    (The api layer comes after connectors in ``LAYERS`` but the API function does not load
    connectors, so anyio and idna, which httpx brought into connectors, must stay in the api layer.)"""
    users = [layers for layers in FUNCTION_LAYERS.values() if layer in layers]
    order = list(LAYERS)
    below = [name for name in order if order.index(name) < order.index(layer)]
    return [name for name in below if users and all(name in layers for layers in users)]


def site_key(layer: str, constraints: str) -> str:
    """The hash of what a layer's third-party part is built from (requirements, pins, rules)."""
    lower = {name: LAYERS[name] for name in shared_lower_layers(layer)}
    rules = [sorted(SQLGLOT_KEEP), list(UNUSED_PACKAGE_DIRS), list(PYARROW_UNUSED)]
    payload = json.dumps([BUILD_VERSION, rules, PLATFORMS, LAYERS[layer], lower, constraints])
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def layer_asset_hash(layer: str) -> str:
    """The layer's asset hash: its third-party inputs, udop's version and (core) udop's own files.
    Computed without building; the same inputs always give the same hash."""
    parts = [site_key(layer, locked_constraints()), udop_version()]
    if layer == "core":
        parts.append(own_packages_hash())
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


# --- building -----------------------------------------------------------------------------------------


@cache
def find_python312() -> str:
    """A working CPython 3.12 (compileall must run with the runtime's bytecode version)."""
    from udop.settings import LayerBuildSettings, load_settings

    configured = load_settings(LayerBuildSettings).python312
    home = Path.home()
    candidates = [
        configured or "",
        shutil.which("python3.12") or "",
        *sorted(str(p) for p in home.glob(".pyenv/versions/3.12*/bin/python3.12")),
    ]
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if out.strip() == "(3, 12)":
            return candidate
    raise LayerBuildError(
        "building the Lambda layers needs CPython 3.12 (the Lambda runtime's version): "
        "install python3.12 or set UDOP_PYTHON312=/path/to/python3.12"
    )


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


#: pyarrow parts nothing in udop loads: C++ test helpers, C++ sources, Cython declarations; its S3
#: file system (~14 MiB: libarrow_s3 is needed by _s3fs alone, and pyarrow.fs imports _s3fs only if
#: present): udop reads and writes S3 with boto3 and hands pyarrow local paths — room for pymongo
PYARROW_UNUSED = ("_pyarrow_cpp_tests", "src", "includes", "_s3fs", "libarrow_s3")
#: sqlglot's per-dialect modules kept: column lineage follows the SQL DuckDB runs; `engine: athena` and
#: `engine: spark` tasks transpile it in the task runner (athena < trino < presto, spark < spark2 <
#: hive < mysql: what the two import); sqlglot imports a dialect only when asked for it, and the other
#: ~30 dialects (~3 MiB) would push the task runner over
SQLGLOT_KEEP = {"__init__", "dialect", "base", "duckdb",
                "athena", "trino", "presto", "spark", "spark2", "hive", "mysql"}
#: never imported on Lambda: SQLAlchemy dialects of databases udop has no connector for; Powertools'
#: REST event handler and JWT alpha (the API function runs FastAPI through Mangum; the functions use
#: Powertools' Logger, Metrics and Tracer only) — ~4.4 MiB the task runner's budget needs
UNUSED_PACKAGE_DIRS = (
    ("sqlalchemy", "dialects", "mssql"),
    ("sqlalchemy", "dialects", "oracle"),
    ("aws_lambda_powertools", "event_handler"),
    ("aws_lambda_powertools", "utilities", "auth_alpha"),
)


def trim(folder: Path) -> None:
    """Drop what a Lambda never loads: tests, headers, Cython sources, pyarrow Flight, caches, sqlglot's
    other dialects, ``UNUSED_PACKAGE_DIRS``."""
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
    for parts in UNUSED_PACKAGE_DIRS:
        shutil.rmtree(folder.joinpath(*parts), ignore_errors=True)
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
        if path.is_dir() and (
            name in {"tests", "__pycache__", "include", "_duckdb-stubs"}
            or (name == "flight" and "pyarrow" in path.parts)
            or (name == "testing" and path.parent.name == "sqlalchemy")
        ):
            shutil.rmtree(path)
        elif path.is_file() and (
            path.suffix in {".h", ".hpp", ".pyx", ".pxd", ".pxi", ".cpp", ".c", ".pyi"}
            or ("pyarrow" in path.parts and "flight" in name)
        ):
            path.unlink()


def strip_shared_objects(folder: Path) -> None:
    if shutil.which("strip") is None:
        return  # binutils missing: the layers are larger, not wrong (the size test says if too large)
    objects = [str(p) for p in folder.rglob("*") if p.is_file() and re.search(r"\.so(\.|$)", p.name)]
    for start in range(0, len(objects), 200):
        # a few vendored objects are not ELF files strip understands; leaving them as they are is fine
        subprocess.run(
            ["strip", "--strip-unneeded", *objects[start : start + 200]],
            check=False,
            stderr=subprocess.DEVNULL,
        )


def compile_bytecode(python312: str, folder: Path) -> None:
    subprocess.run(
        [
            python312,
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            str(folder),
        ],
        check=False,
        stdout=subprocess.DEVNULL,
    )


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _pip_install(python312: str, target: Path, requirements: list[str], constraints: Path) -> None:
    cmd = [
        python312,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--target",
        str(target),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        "3.12",
        *(arg for p in PLATFORMS for arg in ("--platform", p)),
        "--cache-dir",
        str(cache_root() / "pip"),
        "-c",
        str(constraints),
        *requirements,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["pip failed"]
        last = next((line for line in lines if line.startswith("ERROR:")), lines[-1])
        raise LayerBuildError(
            f"installing {' '.join(requirements)} for python3.12 manylinux x86_64 failed "
            f"(pip: {last}); check access to the package index"
        )


def _publish(built: Path, target: Path) -> Path:
    """Move a finished build into the cache; a concurrent synth that finished first wins."""
    try:
        built.rename(target)
    except OSError:
        shutil.rmtree(built, ignore_errors=True)
        if not target.is_dir():
            raise
    return target


def build_site(layer: str) -> Path:
    """The layer's third-party ``python/`` folder, built once per ``site_key`` and cached."""
    constraints = locked_constraints()
    target = cache_root() / "layers" / f"{layer}-{site_key(layer, constraints)}"
    if (target / "python").is_dir():
        return target / "python"
    lower = {name: build_site(name) for name in shared_lower_layers(layer)}
    python312 = find_python312()
    (cache_root() / "layers").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{layer}-", dir=cache_root() / "layers"))
    site = work / "python"
    site.mkdir()
    (work / "constraints.txt").write_text(constraints)
    print(
        f"udop: building the {layer} layer ({' '.join(LAYERS[layer])}) for python3.12 x86_64",
        file=sys.stderr,
        flush=True,
    )
    _pip_install(python312, site, LAYERS[layer], work / "constraints.txt")
    # a layer below this one in every function that uses it already provides these
    provided = set(RUNTIME_PROVIDED)
    for folder in lower.values():
        provided |= set(installed_dists(folder))
    for name, info in installed_dists(site).items():
        if name in provided:
            remove_dist(site, info)
    shutil.rmtree(site / "bin", ignore_errors=True)
    trim(site)
    strip_shared_objects(site)
    compile_bytecode(python312, site)
    return _publish(work, target) / "python"


def build_own_packages() -> Path:
    """The udop packages (source + 3.12 bytecode) and their dist-info, cached by their files' hash."""
    target = cache_root() / "layers" / f"udop-{own_packages_hash()[:32]}"
    if (target / "python").is_dir():
        return target / "python"
    python312 = find_python312()
    (cache_root() / "layers").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".udop-", dir=cache_root() / "layers"))
    site = work / "python"
    for name in OWN_PACKAGES:
        shutil.copytree(package_dir(name), site / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    compile_bytecode(python312, site)
    _write_own_dist_info(site)
    return _publish(work, target) / "python"


def _write_own_dist_info(site: Path) -> None:
    """One dist-info for the udop packages, so ``importlib.metadata`` sees their entry points."""
    dist = importlib.metadata.distribution("udop")
    version = dist.version
    info = site / f"udop-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: udop\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(dist.read_text("entry_points.txt") or "")
    (info / "INSTALLER").write_text("udop_infra.layers\n")


def _link_tree(source: Path, target: Path) -> None:
    """Copy a folder by hard links (same file system) or copies: a warm synth moves no bytes."""
    for path in source.rglob("*"):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)


def stage_layer(layer: str, output_dir: Path) -> None:
    """Write the layer (``python/...``) into ``output_dir``: what CDK's local bundling asks for."""
    _link_tree(build_site(layer), output_dir / "python")
    if layer == "core":
        _link_tree(build_own_packages(), output_dir / "python")


def layer_requirements(layer: str) -> str:
    """What the layer is built from, as a requirements file (the asset's source folder shows it)."""
    lines = [
        f"# udop {udop_version()} layer {layer!r}: python3.12 manylinux x86_64, pinned by uv.lock",
        *LAYERS[layer],
    ]
    if layer == "core":
        lines.append("# + the udop packages: " + ", ".join(OWN_PACKAGES))
    return "\n".join(lines) + "\n"
