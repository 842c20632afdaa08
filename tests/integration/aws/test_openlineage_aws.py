"""OpenLineage on AWS: the run events (here `udop run` following the execution, the same code as the
run-events Lambda) send the run's events and each task attempt's as they record them, with the task
runner's full results (datasets, column lineage, row counts); the parent run facet links them. S3
datasets are named ``s3://bucket`` + prefix."""

from __future__ import annotations

import io
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aws_support import in_process_only

from udop.aws.runs import deploy_file
from udop.cli.aws import run_on_stepfunctions
from udop.lineage import openlineage
from udop.states import RunState

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lineage"))
from ol_schema import validate_event

pytestmark = [pytest.mark.aws, pytest.mark.redis, pytest.mark.slow]


def _pipeline(tmp_path: Path, bucket: str) -> Path:
    path = tmp_path / "ol-lake.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: ol-lake}}
        spec:
          tasks:
            - id: orders
              type: extract
              source: {{connector: s3, path: "s3://{bucket}/orders/"}}
            - id: totals
              type: transform
              depends_on: [orders]
              steps:
                - derive: {{doubled: "amount * 2"}}
                - select: [id, doubled]
            - id: publish
              type: load
              depends_on: [totals]
              target: {{connector: s3, path: "s3://{bucket}/marts/totals/"}}
        """))
    return path


@in_process_only  # the events file is on this machine
def test_a_step_functions_run_sends_linked_openlineage_events(
    moto_aws: Any, store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events_file = tmp_path / "ol.jsonl"
    monkeypatch.setenv("UDOP_OPENLINEAGE", "1")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(events_file))
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    openlineage.reset_client()
    s3 = moto_aws.client("s3")
    bucket = f"{moto_aws.prefix}-lake"
    s3.create_bucket(Bucket=bucket)
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": [1, 2, 3], "amount": [10.0, 2.5, 4.0]}), buf)
    s3.put_object(Bucket=bucket, Key="orders/part-0.parquet", Body=buf.getvalue())
    path = _pipeline(tmp_path, bucket)
    result = deploy_file(str(path), definitions_bucket=moto_aws.definitions_bucket,
                         task_runner_arn=moto_aws.task_runner_arn, role_arn=moto_aws.role_arn, store=store,
                         s3=s3, sfn=moto_aws.client("stepfunctions"))
    assert result.ok, result.errors
    monkeypatch.setenv("UDOP_DATA_BUCKET", moto_aws.data_bucket)
    try:
        code = run_on_stepfunctions(str(path), {}, store=store, sfn=moto_aws.client("stepfunctions"), poll=0.05)
    finally:
        openlineage.reset_client()
    run = store.get_run(store.list_runs(pipeline="ol-lake", limit=1)[0].id)
    assert code == 0, run.error
    assert run.state == RunState.SUCCEEDED

    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    for event in events:
        validate_event(event)
    keys = [(e["job"]["name"], e["eventType"]) for e in events]
    assert keys[-1] == ("ol-lake", "COMPLETE")
    assert ("ol-lake", "START") in keys
    tasks = [k for k in keys if k[0] != "ol-lake"]
    assert tasks == [("ol-lake.orders", "START"), ("ol-lake.orders", "COMPLETE"),
                     ("ol-lake.totals", "START"), ("ol-lake.totals", "COMPLETE"),
                     ("ol-lake.publish", "START"), ("ol-lake.publish", "COMPLETE")]
    run_uuid = openlineage.run_uuid("ol-lake", run.id)
    assert events[-1]["run"]["runId"] == run_uuid
    by_key = {(e["job"]["name"], e["eventType"]): e for e in events}
    for name in ("orders", "totals", "publish"):
        assert by_key[(f"ol-lake.{name}", "COMPLETE")]["run"]["facets"]["parent"]["run"]["runId"] == run_uuid

    orders = by_key[("ol-lake.orders", "COMPLETE")]
    assert [(d["namespace"], d["name"]) for d in orders["inputs"]] == [(f"s3://{bucket}", "orders")]
    staged = orders["outputs"][0]
    assert staged["namespace"] == f"s3://{moto_aws.data_bucket}"
    assert staged["name"] == f"runs/ol-lake/{run.id}/orders"
    assert staged["outputFacets"]["outputStatistics"]["rowCount"] == 3

    totals = by_key[("ol-lake.totals", "COMPLETE")]["outputs"][0]
    fields = totals["facets"]["columnLineage"]["fields"]
    assert [(f["namespace"], f["name"], f["field"]) for f in fields["doubled"]["inputFields"]] == [
        (f"s3://{moto_aws.data_bucket}", f"runs/ol-lake/{run.id}/orders", "amount")]

    publish = by_key[("ol-lake.publish", "COMPLETE")]["outputs"]
    assert [(d["namespace"], d["name"]) for d in publish] == [(f"s3://{bucket}", "marts/totals")]
    assert publish[0]["outputFacets"]["outputStatistics"]["rowCount"] == 3
