"""Object storage: the local folder connector and S3 on moto (in-process); Parquet, CSV, JSON and
NDJSON; hive partitions; overwrite/append; extract/load through S3 prefixes."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pytest
from moto import mock_aws

from udop.connectors import extract_to_parquet, get_connector, load_from_parquet
from udop.errors import FatalError
from udop.spec.models import Pipeline
from udop.state import MemoryStateStore
from udop.tasks.contract import TaskContext, TaskResult


def flights(n: int = 12) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "id": pa.array(range(n), pa.int64()),
            "carrier": [["AA", "UA", "DL"][i % 3] for i in range(n)],
            "delay": [float(i) * 1.5 for i in range(n)],
            "day": pa.array([dt.date(2024, 1, 1 + i % 5) for i in range(n)], pa.date32()),
        }
    )


def read_rows(spec: dict[str, Any]) -> list[dict[str, Any]]:
    with get_connector(spec) as c:
        return sorted((r for b in c.read() for r in b.to_pylist()), key=lambda r: r["id"])


@pytest.mark.parametrize("fmt", ["parquet", "csv", "ndjson", "json"])
def test_local_round_trip_each_format(tmp_path: Path, fmt: str) -> None:
    spec = {"connector": "local", "path": str(tmp_path / "out"), "format": fmt}
    with get_connector(spec) as c:
        assert c.write([flights(7), flights(3)], "overwrite") == 10
    got = read_rows({**spec, "columns": {"id": "int", "carrier": "string", "delay": "float", "day": "date"}})
    expected = sorted(flights(7).to_pylist() + flights(3).to_pylist(), key=lambda r: r["id"])
    assert got == expected


def test_local_partitioned_write_and_read(tmp_path: Path) -> None:
    spec = {"connector": "local", "path": str(tmp_path / "lake"), "partition_by": ["carrier"]}
    with get_connector(spec) as c:
        c.write([flights()], "overwrite")
    folders = sorted(p.name for p in (tmp_path / "lake").iterdir())
    assert folders == ["carrier=AA", "carrier=DL", "carrier=UA"]
    got = read_rows({"connector": "local", "path": str(tmp_path / "lake")})
    assert [(r["id"], r["carrier"]) for r in got] == [(r["id"], r["carrier"]) for r in flights().to_pylist()]
    only_ua = read_rows({"connector": "local", "path": str(tmp_path / "lake") + "/carrier=UA/*.parquet"})
    assert {r["carrier"] for r in only_ua} == {"UA"} and len(only_ua) == 4


def test_local_overwrite_replaces_and_append_adds(tmp_path: Path) -> None:
    spec = {"connector": "local", "path": str(tmp_path / "t")}
    with get_connector(spec) as c:
        c.write([flights(5)], "overwrite")
        c.write([flights(2)], "append")
    assert len(read_rows(spec)) == 7
    with get_connector(spec) as c:
        c.write([flights(3)], "overwrite")
    assert [r["id"] for r in read_rows(spec)] == [0, 1, 2]


def test_bad_json_and_missing_files_are_fatal(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FatalError, match=r"bad.json is not valid json"):
        read_rows({"connector": "local", "path": str(tmp_path / "bad.json")})
    with pytest.raises(FatalError, match="no files at"):
        read_rows({"connector": "local", "path": str(tmp_path / "nothing" / "*.csv")})
    with pytest.raises(FatalError, match="mode 'upsert' is not supported"):
        get_connector({"connector": "local", "path": str(tmp_path / "x")}).write(
            [flights()], "upsert", ["id"]
        )


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="lake")
        yield client


def keys(client: Any, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket="lake", Prefix=prefix).get("Contents", []))


@pytest.mark.aws
def test_s3_partitioned_parquet_round_trip_and_overwrite(s3: Any) -> None:
    spec = {"connector": "s3", "path": "s3://lake/flights/", "partition_by": ["carrier"]}
    with get_connector(spec) as c:
        c.write([flights()], "overwrite")
    first = keys(s3, "flights/")
    assert [k.split("/")[1] for k in first] == ["carrier=AA", "carrier=DL", "carrier=UA"]
    got = read_rows({"connector": "s3", "path": "s3://lake/flights/"})
    assert [(r["id"], r["carrier"], r["delay"]) for r in got] == [
        (r["id"], r["carrier"], r["delay"]) for r in flights().to_pylist()
    ]
    with get_connector(spec) as c:
        c.write([flights(2)], "overwrite")
    assert not set(keys(s3, "flights/")) & set(first)  # the old files are gone
    assert len(read_rows({"connector": "s3", "path": "s3://lake/flights/"})) == 2


@pytest.mark.aws
def test_s3_csv_glob_and_ndjson(s3: Any) -> None:
    s3.put_object(Bucket="lake", Key="raw/a.csv", Body=b"id,name\n1,x\n2,y\n")
    s3.put_object(Bucket="lake", Key="raw/b.csv", Body=b"id,name\n3,z\n")
    s3.put_object(Bucket="lake", Key="raw/c.ndjson", Body=b'{"id": 4, "name": "w"}\n')
    got = read_rows({"connector": "s3", "path": "s3://lake/raw/*.csv"})
    assert [(r["id"], r["name"]) for r in got] == [(1, "x"), (2, "y"), (3, "z")]
    got = read_rows({"connector": "s3", "path": "s3://lake/raw/c.ndjson"})
    assert got == [{"id": 4, "name": "w"}]


@pytest.mark.aws
def test_s3_missing_bucket_is_fatal_and_names_the_connection(s3: Any) -> None:
    connections = {"lake2": {"connector": "s3", "path": "s3://no-such-bucket/x/"}}
    with (
        pytest.raises(
            FatalError,
            match=r"^connection 'lake2' \(s3\): list s3://no-such-bucket/x/: "
            "the bucket does not exist",
        ),
        get_connector("lake2", connections=connections) as c,
    ):
        list(c.read())


@pytest.mark.aws
def test_extract_and_load_through_s3_prefixes(s3: Any, tmp_path: Path) -> None:
    s3.put_object(
        Bucket="lake", Key="in/data.json", Body=json.dumps([{"id": i, "v": i * i} for i in range(5)])
    )
    pipeline = Pipeline.model_validate(
        {
            "apiVersion": "udop/v1",
            "kind": "Pipeline",
            "metadata": {"name": "s3p"},
            "spec": {
                "tasks": [
                    {
                        "id": "ext",
                        "type": "extract",
                        "source": {"connector": "s3", "path": "s3://lake/in/data.json"},
                    },
                    {
                        "id": "load",
                        "type": "load",
                        "depends_on": ["ext"],
                        "target": {"connector": "local", "path": str(tmp_path / "out"), "format": "csv"},
                    },
                ]
            },
        }
    )

    def ctx(task: str) -> TaskContext:
        return TaskContext(
            pipeline=pipeline,
            task_id=task,
            run_id="r1",
            attempt=1,
            logical_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            params={},
            data_root="s3://lake/udop",
            services={"state": MemoryStateStore()},
        )

    c = ctx("ext")
    manifest = extract_to_parquet(c, pipeline.task("ext").source, c.output_uri)
    assert manifest.uri == "s3://lake/udop/runs/s3p/r1/ext/"
    assert manifest.rows == 5
    assert keys(s3, "udop/runs/s3p/r1/ext/") == ["udop/runs/s3p/r1/ext/part-00000.parquet"]
    metrics = load_from_parquet(
        ctx("load"), pipeline.task("load").target, manifest, {"ext": TaskResult(output=manifest)}
    )
    assert metrics["rows_written"] == 5
    (out,) = (tmp_path / "out").iterdir()
    lines = out.read_text().splitlines()
    assert lines[0] == '"id","v"'
    assert [tuple(map(int, line.split(","))) for line in lines[1:]] == [(i, i * i) for i in range(5)]


def test_local_target_on_another_file_system_appends_with_normal_modes(tmp_path: Path) -> None:
    """The local connector stages beside its target, so appending to a folder on another file
    system than the temp folder renames within one device (no EXDEV), and what it publishes gets
    the user's umask, not mkdtemp's 0700."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == Path(tempfile.gettempdir()).stat().st_dev:
        pytest.skip("needs /dev/shm on a file system other than the temp folder")
    out = shm / f"udop-test-{uuid.uuid4().hex[:10]}"
    umask = os.umask(0o022)
    try:
        batch = pa.RecordBatch.from_pydict({"id": [1, 2]})
        for mode in ("overwrite", "append"):
            with get_connector({"connector": "local", "path": str(out), "format": "parquet"}) as c:
                assert c.write([batch], mode) == 2
        assert sorted(pq_ids(out)) == [1, 1, 2, 2]
        assert stat.S_IMODE(out.stat().st_mode) == 0o755
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in out.iterdir())
        assert not [p for p in shm.iterdir() if p.name.startswith(f".{out.name}.")]  # no staging left
    finally:
        os.umask(umask)
        shutil.rmtree(out, ignore_errors=True)


def pq_ids(folder: Path) -> list[int]:
    import pyarrow.dataset as ds

    return list(ds.dataset(folder, format="parquet").to_table().column("id").to_pylist())
