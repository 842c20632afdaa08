"""Lineage through a real run: PostgreSQL -> transform -> MariaDB and S3 (moto). Every dataset is
named as OpenLineage names it, loads leave a lineage record, and secrets never appear in a name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from moto import mock_aws

from udop.executor.local import LocalExecutor
from udop.lineage.graph import walk
from udop.spec.loader import load_pipeline
from udop.state.sqlite import SQLiteStateStore
from udop.store import open_store

pytestmark = [pytest.mark.postgres, pytest.mark.mysql]

UDOP = str(Path(sys.executable).parent / "udop")  # the installed command, as a user runs it
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/test"

PIPELINE = """
apiVersion: udop/v1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  connections:
    # trust auth ignores the password: it is here to prove no name ever carries it
    shop: {{connector: postgres, url: {{env: UDOP_TEST_LINEAGE_URL}}}}
    mart: {{connector: mariadb, host: 127.0.0.1, user: root, database: test}}
  tasks:
    - id: orders
      type: extract
      source: {{connection: shop, connector: postgres, table: {src}}}
    - id: totals
      type: transform
      depends_on: [orders]
      steps:
        - derive: {{doubled: "amount * 2"}}
        - select: [id, region, doubled]
    - id: to_mart
      type: load
      depends_on: [totals]
      target: {{connection: mart, connector: mariadb, table: {dst}, mode: overwrite}}
    - id: to_lake
      type: load
      depends_on: [totals]
      target: {{connector: s3, path: "s3://lake/{prefix}/"}}
"""


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


@pytest.fixture
def tables() -> Iterator[tuple[str, str]]:
    src, dst = f"udop_lin_src_{uuid.uuid4().hex[:8]}", f"udop_lin_dst_{uuid.uuid4().hex[:8]}"
    pg, my = _engine(PG_URL), _engine(MYSQL_URL)
    with pg.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {src} (id int primary key, region text, amount numeric(10,2))"))
        conn.execute(sa.text(f"INSERT INTO {src} VALUES (1, 'eu', 2.5), (2, 'us', 4.0), (3, 'eu', 1.0)"))
    yield src, dst
    with pg.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {src}"))
    with my.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {dst}"))
    pg.dispose()
    my.dispose()


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="lake")
        yield client


def test_a_run_records_every_dataset_by_its_openlineage_name(
    tables: tuple[str, str], s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UDOP_TEST_LINEAGE_URL",
                       "postgresql://postgres:pg-secret-never-shown@127.0.0.1:5432/test?sslmode=disable")
    src, dst = tables
    prefix = f"marts/{uuid.uuid4().hex[:8]}"
    text = PIPELINE.format(name=f"lin-{uuid.uuid4().hex[:6]}", src=src, dst=dst, prefix=prefix)
    pipeline = load_pipeline(text, filename="lineage.yaml")
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    state = SQLiteStateStore(tmp_path / "state.db")
    executor = LocalExecutor(store, workers=2, data_root=str(tmp_path / "data"),
                             services={"state": state, "base_dir": str(tmp_path)})
    run = executor.run(pipeline, run_id=f"r-{uuid.uuid4().hex[:6]}")
    assert run.state.value == "succeeded", run
    records = {r.task_id: r for r in store.get_lineage(run.id)}

    assert records["orders"].inputs == [f"postgres://127.0.0.1:5432/test.public.{src}"]
    assert records["orders"].rows == 3
    # loads into a database and into S3 both leave a record naming the dataset they wrote
    assert records["to_mart"].output_uri == f"mysql://127.0.0.1:3306/test.{dst}"
    assert records["to_mart"].rows == 3
    assert records["to_mart"].inputs == [records["totals"].output_uri]
    assert records["to_lake"].output_uri == f"s3://lake/{prefix}"
    assert records["to_lake"].rows == 3
    # the run's own intermediate dataset links the two
    assert records["totals"].inputs == [records["orders"].output_uri]
    assert records["totals"].schema_fingerprint == records["to_mart"].schema_fingerprint
    # the column mapping of the transform, over the extract's dataset
    totals = next(t for t in store.get_run(run.id).tasks if t.task_id == "totals")  # type: ignore[union-attr]
    upstream = records["orders"].output_uri
    assert totals.result["column_lineage"] == {
        "id": [[upstream, "id"]], "region": [[upstream, "region"]], "doubled": [[upstream, "amount"]]}
    for r in records.values():
        assert "pg-secret-never-shown" not in repr(r)
    state.close()

    # across runs: the MariaDB table's upstream reaches the PostgreSQL table (as `udop lineage` and
    # GET /lineage answer it), and `udop runs show` prints the column mapping
    edges = store.lineage_edges()
    mart = f"mysql://127.0.0.1:3306/test.{dst}"
    source = f"postgres://127.0.0.1:5432/test.public.{src}"
    found = {h.dataset: h for h in walk(edges, mart, "upstream")}
    assert found[source].depth == 3 and found[source].task_id == "orders"
    assert {mart, f"s3://lake/{prefix}"} <= {h.dataset for h in walk(edges, source, "downstream")}
    env = {**os.environ, "UDOP_DATABASE_URL": f"sqlite:///{tmp_path / 'meta.db'}"}
    shown = subprocess.run([UDOP, "runs", "show", run.id], env=env,
                           capture_output=True, text=True, check=True).stdout
    assert f"doubled <- {upstream}#amount" in shown, shown
    up = subprocess.run([UDOP, "lineage", mart, "--json"], env=env,
                        capture_output=True, text=True, check=True).stdout
    assert source in {h["dataset"] for h in json.loads(up)["datasets"]}
    missing = subprocess.run([UDOP, "lineage", "mysql://nowhere:3306/x.y"],
                             check=False, env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "no recorded run" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_openlineage_events_name_postgres_mariadb_and_s3_with_the_column_mapping(
    tables: tuple[str, str], s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ol_schema import validate_event

    from udop.lineage import openlineage

    events_file = tmp_path / "ol.jsonl"
    monkeypatch.setenv("UDOP_OPENLINEAGE", "1")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(events_file))
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    monkeypatch.setenv("UDOP_TEST_LINEAGE_URL",
                       "postgresql://postgres:pg-secret-never-shown@127.0.0.1:5432/test?sslmode=disable")
    openlineage.reset_client()
    src, dst = tables
    prefix = f"marts/{uuid.uuid4().hex[:8]}"
    name = f"lin-{uuid.uuid4().hex[:6]}"
    pipeline = load_pipeline(PIPELINE.format(name=name, src=src, dst=dst, prefix=prefix), filename="l.yaml")
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    state = SQLiteStateStore(tmp_path / "state.db")
    executor = LocalExecutor(store, workers=2, data_root=str(tmp_path / "data"),
                             services={"state": state, "base_dir": str(tmp_path)})
    try:
        run = executor.run(pipeline, run_id=f"r-{uuid.uuid4().hex[:6]}")
    finally:
        state.close()
        openlineage.reset_client()
    assert run.state.value == "succeeded", run
    text = events_file.read_text()
    assert "pg-secret-never-shown" not in text
    events = {(e["job"]["name"], e["eventType"]): e for e in map(json.loads, text.splitlines())}
    for event in events.values():
        validate_event(event)
    extract = events[(f"{name}.orders", "COMPLETE")]
    assert [(d["namespace"], d["name"]) for d in extract["inputs"]] == [
        ("postgres://127.0.0.1:5432", f"test.public.{src}")]
    staged = extract["outputs"][0]
    totals = events[(f"{name}.totals", "COMPLETE")]["outputs"][0]
    mapping = {col: [(f["namespace"], f["name"], f["field"]) for f in v["inputFields"]]
               for col, v in totals["facets"]["columnLineage"]["fields"].items()}
    assert mapping == {c: [("file", staged["name"], s)] for c, s in
                       (("id", "id"), ("region", "region"), ("doubled", "amount"))}
    mart = events[(f"{name}.to_mart", "COMPLETE")]["outputs"]
    assert [(d["namespace"], d["name"]) for d in mart] == [("mysql://127.0.0.1:3306", f"test.{dst}")]
    assert mart[0]["outputFacets"]["outputStatistics"]["rowCount"] == 3
    assert set(mart[0]["facets"]["columnLineage"]["fields"]) == {"id", "region", "doubled"}
    lake = events[(f"{name}.to_lake", "COMPLETE")]["outputs"]
    assert [(d["namespace"], d["name"]) for d in lake] == [("s3://lake", prefix)]
