"""An S3 Parquet source is read in place on AWS: the extract records a snapshot (keys, sizes, ETags,
schema) and the run's prefix holds no copy of the source; the transform reads the objects themselves,
and an object replaced after the snapshot is an error instead of other data."""

from __future__ import annotations

import io
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aws_support import in_process_only

from udop.aws.runs import deploy_file
from udop.cli.aws import run_on_stepfunctions
from udop.errors import FatalError
from udop.states import RunState, TaskState

pytestmark = [pytest.mark.aws, pytest.mark.redis, pytest.mark.slow]

EU = pa.table({"id": [1, 2, 3], "amount": [10.0, 2.5, 4.0]})
US = pa.table({"id": [4, 5], "amount": [7.0, 1.0]})


def _put(s3: Any, bucket: str, key: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())


def _lake(aws: Any) -> str:
    s3 = aws.client("s3")
    bucket = f"{aws.prefix}-lake"
    s3.create_bucket(Bucket=bucket)
    _put(s3, bucket, "orders/region=eu/part-0.parquet", EU)
    _put(s3, bucket, "orders/region=us/part-0.parquet", US)
    s3.put_object(Bucket=bucket, Key="orders/_SUCCESS", Body=b"")  # hidden names are not data
    return bucket


def _pipeline(tmp_path: Path, bucket: str) -> Path:
    path = tmp_path / "lake.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: lake}}
        spec:
          params: {{out: {{type: str}}}}
          tasks:
            - id: orders
              type: extract
              source: {{connector: s3, path: "s3://{bucket}/orders/"}}
            - id: totals
              type: transform
              depends_on: [orders]
              steps:
                - filter: "amount > 1.5"
                - aggregate: {{by: [region], metrics: {{total: "sum(amount)", n: "count(*)"}}}}
                - sort: [region]
            - id: publish
              type: load
              depends_on: [totals]
              target: {{connector: parquet, path: "${{params.out}}/totals.parquet"}}
        """))
    return path


@in_process_only  # the load writes a file of this machine
def test_an_s3_source_is_read_in_place_through_step_functions(
    moto_aws: Any, store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = _lake(moto_aws)
    path = _pipeline(tmp_path, bucket)
    s3 = moto_aws.client("s3")
    result = deploy_file(str(path), definitions_bucket=moto_aws.definitions_bucket,
                         task_runner_arn=moto_aws.task_runner_arn, role_arn=moto_aws.role_arn, store=store,
                         s3=s3, sfn=moto_aws.client("stepfunctions"))
    assert result.ok, result.errors
    monkeypatch.setenv("UDOP_DATA_BUCKET", moto_aws.data_bucket)
    out = tmp_path / "out"
    code = run_on_stepfunctions(str(path), {"out": str(out)}, store=store, sfn=moto_aws.client("stepfunctions"),
                                poll=0.05)
    run = store.get_run(store.list_runs(pipeline="lake", limit=1)[0].id)
    assert code == 0, run.error
    assert run.state == RunState.SUCCEEDED and {t.state for t in run.tasks} == {TaskState.SUCCEEDED}

    # the run's prefix holds the snapshot of the source, never a copy of its data
    prefix = f"runs/lake/{run.id}/orders/"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=moto_aws.data_bucket, Prefix=prefix).get("Contents", [])]
    assert keys == [f"{prefix}_snapshot.json"]
    orders = next(t for t in run.tasks if t.task_id == "orders").result["output"]
    assert orders["format"] == "snapshot" and orders["rows"] == 5 and orders["files"] == 2

    rows = pq.read_table(out / "totals.parquet").to_pylist()
    expected = [{"region": region, "total": sum(a for a in t["amount"].to_pylist() if a > 1.5),
                 "n": sum(1 for a in t["amount"].to_pylist() if a > 1.5)} for region, t in (("eu", EU), ("us", US))]
    assert rows == expected
    lineage = {r.task_id: r for r in store.get_lineage(run.id)}
    assert lineage["orders"].inputs == [f"s3://{bucket}/orders/"]
    assert lineage["orders"].rows == 5


def test_an_object_replaced_after_the_snapshot_is_an_error(moto_aws: Any, tmp_path: Path) -> None:
    from udop.spec.loader import load_pipeline
    from udop.tasks import TaskContext, run_task

    bucket = _lake(moto_aws)
    pipeline = load_pipeline(str(_pipeline(tmp_path, bucket)))
    s3 = moto_aws.client("s3")

    def context(task_id: str) -> TaskContext:
        return TaskContext(pipeline=pipeline, task_id=task_id, run_id="r1", attempt=1,
                           logical_date=datetime(2024, 1, 1, tzinfo=UTC), params={"out": str(tmp_path)},
                           data_root=str(tmp_path / "data"), services={"s3_client": s3})

    extracted = run_task(context("orders"), pipeline.task("orders"), {})
    assert extracted.output is not None and extracted.output.format == "snapshot"
    assert sorted(p.name for p in Path(extracted.output.uri).iterdir()) == ["_snapshot.json"]
    first = run_task(context("totals"), pipeline.task("totals"), {"orders": extracted})
    assert first.output is not None and first.output.rows == 2

    _put(s3, bucket, "orders/region=us/part-0.parquet", US.slice(0, 1))  # replaced after the snapshot
    with pytest.raises(FatalError) as info:
        run_task(context("totals"), pipeline.task("totals"), {"orders": extracted})
    assert str(info.value).startswith(
        f"task 'totals': input 'orders': the source changed after extract 'orders' recorded it: "
        f"s3://{bucket}/orders/region=us/part-0.parquet was replaced")
