"""GET /lineage across runs and pipelines, and column lineage in GET /runs/{id}/lineage, over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime

from udop.states import AttemptState, RunState, TaskState
from udop.tasks.contract import Manifest, TaskResult

from .conftest import Api

PG = "postgres://db:5432/shop.public.orders"
MART = "mysql://mart:3306/dw.orders"


def _record(api: Api, pipeline: str, run_id: str, results: dict[str, TaskResult]) -> None:
    api.store.register_pipeline(pipeline, {
        "apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": pipeline},
        "spec": {"tasks": [{"id": t, "type": "python", "callable": "m:f"} for t in results]}})
    api.store.create_run(run_id=run_id, pipeline=pipeline, pipeline_version=1, task_ids=list(results),
                         params={}, logical_date=datetime(2026, 1, 1, tzinfo=UTC))
    api.store.set_run_state(run_id, RunState.RUNNING)
    for task_id, result in results.items():
        api.store.start_attempt(run_id, task_id, 1)
        api.store.finish_attempt(run_id, task_id, 1, attempt_state=AttemptState.SUCCEEDED,
                                 task_state=TaskState.SUCCEEDED, result=result.to_dict())


def test_upstream_and_downstream_across_two_pipelines(api: Api) -> None:
    # pipeline a: postgres -> (extract) /data/a/orders -> (transform) /data/a/totals -> (load) MariaDB
    _record(api, "a", "r-a", {
        "orders": TaskResult(output=Manifest(uri="/data/a/orders/", rows=3), inputs=(PG,)),
        "totals": TaskResult(output=Manifest(uri="/data/a/totals/", rows=3), inputs=("/data/a/orders/",),
                             columns={"doubled": [["/data/a/orders/", "amount"]]}),
        "load": TaskResult(inputs=("/data/a/totals/",), written=(Manifest(uri=MART, rows=3, format="mysql"),)),
    })
    # pipeline b reads what a loaded and writes to S3
    _record(api, "b", "r-b", {
        "copy": TaskResult(output=Manifest(uri="s3://lake/dw/orders", rows=3), inputs=(MART,)),
    })
    c = api.client("viewer")
    up = c.get("/lineage", params={"dataset": "s3://lake/dw/orders", "direction": "upstream"})
    assert up.status_code == 200, up.text
    hops = {h["dataset"]: h for h in up.json()["datasets"]}
    assert hops[MART]["pipeline"] == "b" and hops[MART]["depth"] == 1
    assert hops[PG]["pipeline"] == "a" and hops[PG]["depth"] == 4 and hops[PG]["task_id"] == "orders"
    down = c.get("/lineage", params={"dataset": PG, "direction": "downstream"}).json()
    assert [h["dataset"] for h in down["datasets"]] == [
        "file:///data/a/orders", "file:///data/a/totals", MART, "s3://lake/dw/orders"]
    # the load left a record; the transform's record carries its column mapping
    rows = {r["task_id"]: r for r in c.get("/runs/r-a/lineage").json()}
    assert rows["load"]["output_uri"] == MART and rows["load"]["rows"] == 3
    assert rows["totals"]["columns"] == {"doubled": [["/data/a/orders/", "amount"]]}
    assert c.get("/lineage", params={"dataset": "s3://nowhere/x"}).status_code == 404
    assert c.get("/lineage", params={"dataset": PG, "direction": "sideways"}).status_code == 422
    assert api.client(None).get("/lineage", params={"dataset": PG}).status_code == 401
