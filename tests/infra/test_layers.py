"""Layer size: every function's code plus its layers fits Lambda's 250 MB (unzipped) with 20 MB spare.

Building the layers downloads ~400 MB of wheels and takes minutes the first time, so the build only
runs here when ``UDOP_BUILD_LAYERS=1``; an existing ``layers/.build`` is checked either way.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from udop_infra.layers import FUNCTION_LAYERS
from udop_infra.runtime import pipeline_code_files

pytestmark = [pytest.mark.infra, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
LAMBDA_LIMIT = 262_144_000  # 250 MiB, Lambda's quota for a function and all its layers, unzipped
SPARE = 20 * 1024 * 1024


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("layers_build", REPO / "layers" / "build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unzipped_size(folder: Path) -> int:
    # what Lambda counts: every file's bytes (symlinks are zipped as the files they point to)
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def built() -> ModuleType:
    build = load_build()
    missing = [name for name in build.LAYERS if not (build.BUILD / name / "python").is_dir()]
    if os.environ.get("UDOP_BUILD_LAYERS") == "1":
        subprocess.run([sys.executable, str(REPO / "layers" / "build.py")], check=True, timeout=1800)
    elif missing:
        pytest.skip(f"layers {missing} not built; run `python layers/build.py` or set UDOP_BUILD_LAYERS=1")
    return build


def test_every_function_fits_lambda_with_20_mb_to_spare(built: ModuleType) -> None:
    assert {k: tuple(v) for k, v in built.FUNCTION_LAYERS.items()} == FUNCTION_LAYERS  # build == deploy
    # the task and stream runners also carry the Python code beside the definitions (pipeline_code/)
    pipelines = REPO / "pipelines"
    pipeline_code = sum((pipelines / rel).stat().st_size for rel in pipeline_code_files(pipelines))
    for function, layers in FUNCTION_LAYERS.items():
        total = unzipped_size(REPO / "functions" / function) + sum(
            unzipped_size(built.BUILD / layer) for layer in layers
        )
        if function in ("task_runner", "stream_runner"):
            total += pipeline_code
        assert total <= LAMBDA_LIMIT - SPARE, (
            f"{function}: {total / 2**20:.1f} MiB with {', '.join(layers)}; "
            f"limit {LAMBDA_LIMIT / 2**20:.0f} MiB"
        )


def test_layers_are_trimmed_compiled_for_312_and_leave_boto_to_the_runtime(built: ModuleType) -> None:
    for layer in built.LAYERS:
        site = built.BUILD / layer / "python"
        names = {p.name for p in site.iterdir()}
        assert not names & {"boto3", "botocore", "s3transfer"}, layer
        assert not list(site.rglob("tests")), layer
        assert not list(site.rglob("*.h")), layer
        # every module has bytecode for 3.12 that does not check source timestamps
        for source in list(site.rglob("*.py"))[:200]:
            pyc = source.parent / "__pycache__" / f"{source.stem}.cpython-312.pyc"
            assert pyc.exists(), source
            flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
            assert flags & 0b01, f"{pyc}: not a hash-based pyc"
            assert not flags & 0b10, f"{pyc}: checks its source (should be unchecked-hash)"
    pyarrow = built.BUILD / "connectors" / "python" / "pyarrow"
    assert not list(pyarrow.glob("*flight*"))
    # the task types and connectors are found through entry points: the layer must carry them
    entry_points = (built.BUILD / "core" / "python" / "udop-0.1.0.dist-info" / "entry_points.txt").read_text()
    assert "[udop.task_types]" in entry_points
    assert "s3 = udop_connectors.objects:S3Connector" in entry_points


def test_the_task_runner_imports_from_its_layers_with_python312(built: ModuleType) -> None:
    python312 = built.find_python312()
    path = os.pathsep.join(
        str(built.BUILD / layer / "python") for layer in ("core", "connectors", "transforms")
    )
    code = (
        "import pyarrow.parquet, duckdb, sqlalchemy, psycopg, redis, pydantic; "
        "from aws_lambda_powertools import Logger, Metrics, Tracer; import udop.tasks; "
        # the runner transpiles engine: athena / engine: spark tasks' SQL: their dialects are kept
        "from udop_transforms._dialects import to_dialect; "
        "s = {'t': [('x', 'INTEGER')]}; assert to_dialect('SELECT x FROM t', s, 'athena') and to_dialect('SELECT x FROM t', s, 'spark'); "
        "print(duckdb.sql('select 21 * 2').fetchall()[0][0])"
    )
    proc = subprocess.run(
        [python312, "-I", "-c", f"import sys; sys.path[:0] = {path.split(os.pathsep)!r}; {code}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "42"


@pytest.mark.parametrize(
    "layers", sorted({FUNCTION_LAYERS["task_runner"], FUNCTION_LAYERS["stream_runner"]}), ids=",".join
)
def test_the_runners_read_mongodb_through_their_layers_with_python312(
    built: ModuleType, layers: tuple[str, ...], tmp_path: Path
) -> None:
    # pymongo (+ dnspython for mongodb+srv:// URLs) ride in the connectors layer; room was made by
    # leaving out pyarrow's S3 file system: what udop does with pyarrow still loads without it
    import uuid

    import pymongo
    from secantus import SecantusDBServer

    server = SecantusDBServer(storage_path=str(tmp_path / "mongo"))
    server.start()
    database = f"h17aws_{uuid.uuid4().hex[:8]}"
    try:
        with pymongo.MongoClient(server.uri) as client:
            client[database].orders.insert_many([{"sku": f"s{i}", "qty": i} for i in range(5)])
        path = [str(built.BUILD / layer / "python") for layer in layers]
        out = tmp_path / "out"
        out.mkdir()
        code = (
            "import sys, json; import pymongo, bson, dns.resolver; "
            "import udop_connectors.mongodb; from udop.connectors import get_connector; "
            f"spec = {{'connector': 'mongodb', 'url': {server.uri!r}, 'database': {database!r}, "
            "'collection': 'orders', 'filter': {'qty': {'$gte': 2}}, 'projection': ['sku', 'qty']}; "
            "c = get_connector(spec); rows = [r for b in c.read() for r in b.to_pylist()]; c.close(); "
            # what udop does with pyarrow: Parquet datasets on local paths (S3 goes through boto3)
            "import pyarrow as pa, pyarrow.dataset as ds, pyarrow.parquet as pq, pyarrow.fs as fs; "
            f"pq.write_table(pa.Table.from_pylist(rows), {str(out / 'rows.parquet')!r}); "
            f"back = ds.dataset({str(out)!r}, format='parquet').to_table().to_pylist(); "
            "assert 'S3FileSystem' in fs._not_imported, 'pyarrow S3 file system still shipped'; "
            "print(json.dumps(sorted((r['sku'], r['qty']) for r in back)))"
        )
        proc = subprocess.run(
            [built.find_python312(), "-I", "-c", f"import sys; sys.path[:0] = {path!r}; {code}"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == '[["s2", 2], ["s3", 3], ["s4", 4]]'
