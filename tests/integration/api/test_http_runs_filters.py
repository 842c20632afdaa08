"""``GET /runs`` filters applied by the server: the logical date and how a run was started (its trigger),
over real HTTP, on the SQLite path a server with a warm credential cache answers through ``FastReads``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from udop.executor.local import LocalExecutor
from udop.spec.models import Pipeline

from .conftest import Api


def _seed(api: Api) -> list[tuple[str, datetime]]:
    api.store.register_pipeline(
        "daily",
        {
            "apiVersion": "udop/v1",
            "kind": "Pipeline",
            "metadata": {"name": "daily"},
            "spec": {"tasks": [{"id": "a", "type": "python", "callable": "m:f"}]},
        },
    )
    start = datetime(2026, 3, 1, tzinfo=UTC)
    made = []
    for i in range(6):
        logical = start + timedelta(days=i // 2)  # two runs per logical date
        api.store.create_run(run_id=f"d{i}", pipeline="daily", pipeline_version=1, task_ids=["a"],
                             params={}, logical_date=logical)
        made.append((f"d{i}", logical))
    return made


def _ids(body: dict[str, Any]) -> list[str]:
    return [r["id"] for r in body["items"]]


def test_list_runs_filters_by_logical_date_on_the_server(api: Api) -> None:
    _seed(api)
    c = api.client("viewer")
    assert len(_ids(c.get("/runs").json())) == 6  # the credential is now cached: the fast path is live

    # a date is midnight UTC, as `udop runs list --logical-date` reads it
    body = c.get("/runs", params={"logical_date": "2026-03-02"}).json()
    assert _ids(body) == ["d3", "d2"]
    assert all(r["logical_date"].startswith("2026-03-02T00:00:00") for r in body["items"])
    # a datetime with an offset is the same instant in UTC
    assert _ids(c.get("/runs", params={"logical_date": "2026-03-03T01:00:00+01:00"}).json()) == ["d5", "d4"]
    assert _ids(c.get("/runs", params={"logical_date": "2026-03-09"}).json()) == []

    # paged with the cursor, the filter holds on every page
    first = c.get("/runs", params={"logical_date": "2026-03-01", "limit": 1}).json()
    assert _ids(first) == ["d1"]
    second = c.get("/runs", params={"logical_date": "2026-03-01", "limit": 1,
                                    "cursor": first["next_cursor"]}).json()
    assert _ids(second) == ["d0"]
    assert second["next_cursor"] is None

    bad = c.get("/runs", params={"logical_date": "last tuesday"})
    assert bad.status_code == 422
    assert "not an ISO date" in bad.json()["detail"]


def test_runs_record_how_they_were_started_and_list_filters_by_it(api: Api) -> None:
    text = api.definition("both", [api.task("a", "maybe_fail")])
    api.register(text)
    op = api.client("operator")
    from_api = op.post("/pipelines/both/runs").json()["run_id"]
    api.wait_for_run(from_api, {"succeeded"})
    # the same pipeline run in-process as `udop run` and a backfill run it (on the same store)
    pipeline = Pipeline.model_validate(yaml.safe_load(text))
    executor = LocalExecutor(api.store, workers=1)
    from_cli = executor.run(pipeline, trigger="cli").id
    from_backfill = executor.run(pipeline, trigger="backfill").id
    unsaid = executor.run(pipeline).id

    c = api.client("viewer")
    assert c.get("/runs").json()["items"][0]["id"] == unsaid  # warm the credential cache
    by_id = {r["id"]: r["trigger"] for r in c.get("/runs").json()["items"]}
    assert by_id == {from_api: "api", from_cli: "cli", from_backfill: "backfill", unsaid: None}
    assert c.get(f"/runs/{from_api}").json()["trigger"] == "api"
    for trigger, expected in (("api", [from_api]), ("cli", [from_cli]), ("backfill", [from_backfill]),
                              ("schedule", [])):
        assert _ids(c.get("/runs", params={"trigger": trigger}).json()) == expected, trigger
    both = c.get("/runs", params={"trigger": "cli", "pipeline": "both", "state": "succeeded"}).json()
    assert _ids(both) == [from_cli]
    assert c.get("/runs", params={"trigger": "carrier-pigeon"}).status_code == 422
