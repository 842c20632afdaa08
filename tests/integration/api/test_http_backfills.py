"""POST /pipelines/{name}/backfills: an operator starts one run per logical date (sandboxed like any
API run); viewers list and inspect; cancel stops it."""

from __future__ import annotations

import time

from .conftest import Api


def test_an_operator_backfills_a_range_and_a_viewer_follows_it(api: Api) -> None:
    text = api.definition("bf", [api.task("a", "maybe_fail")])
    assert api.register(text).status_code == 201
    body = {"from": "2024-01-01", "to": "2024-01-03", "step": "1d", "max_parallel": 2}
    assert api.client("viewer").post("/pipelines/bf/backfills", json=body).status_code == 403
    started = api.client("operator").post("/pipelines/bf/backfills", json=body)
    assert started.status_code == 202, started.text
    backfill = started.json()
    assert started.headers["Location"] == f"/backfills/{backfill['id']}"
    assert [d["logical_date"] for d in backfill["dates"]] == [
        "2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z"]
    viewer = api.client("viewer")
    deadline = time.monotonic() + 30
    while (detail := viewer.get(f"/backfills/{backfill['id']}").json())["state"] == "running":
        assert time.monotonic() < deadline, detail
        time.sleep(0.05)
    assert detail["state"] == "succeeded" and detail["counts"] == {"succeeded": 3}
    runs = viewer.get("/runs", params={"pipeline": "bf"}).json()["items"]
    assert sorted(r["logical_date"] for r in runs) == [d["logical_date"] for d in backfill["dates"]]
    assert [b["id"] for b in viewer.get("/backfills").json()] == [backfill["id"]]
    # ended: cancelling it is a conflict; an unknown one is 404
    assert api.client("operator").post(f"/backfills/{backfill['id']}/cancel").status_code == 409
    assert api.client("operator").post("/backfills/nope/cancel").status_code == 404


def test_bad_backfill_requests_are_refused(api: Api) -> None:
    assert api.register(api.definition("bf", [api.task("a", "maybe_fail")])).status_code == 201
    op = api.client("operator")
    bad = op.post("/pipelines/bf/backfills", json={"from": "2024-01-03", "to": "2024-01-01"})
    assert bad.status_code == 422 and "is before --from" in bad.json()["detail"]
    missing = op.post("/pipelines/nope/backfills", json={"from": "2024-01-01", "to": "2024-01-01"})
    assert missing.status_code == 404
    # a task that stops when told: the run ends at the cancel (an attempt that ignores it is the
    # executor's stop grace, tested in test_http_pipelines_runs and the executor's own tests)
    gate = api.definition("gated", [api.task("a", "wait_for_gate_or_cancel")])
    assert api.register(gate).status_code == 201
    started = op.post("/pipelines/gated/backfills", json={"from": "2024-01-01", "to": "2024-01-05"}).json()
    cancelled = op.post(f"/backfills/{started['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    # its running run stops (cancelled), and no other date starts
    deadline = time.monotonic() + 30
    while (detail := op.get(f"/backfills/{started['id']}").json())["dates"][0]["state"] != "cancelled":
        assert time.monotonic() < deadline, detail
        time.sleep(0.05)
    assert detail["counts"] == {"cancelled": 1, "not started": 4}
