"""``POST /runs/{id}/tasks/{task}/retry``: an ended run runs again from a task, that task and everything
downstream of it, on the same executor path as resume; audited; refused while the run is live."""

from __future__ import annotations

from typing import Any

from .conftest import Api


def _tasks(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["task_id"]: t for t in body["tasks"]}


def test_retry_from_a_task_reruns_it_and_its_descendants_only(api: Api) -> None:
    # first -> second -> third, and first -> side (a sibling branch the retry must not touch)
    api.register(api.definition("chain", [
        api.task("first", "numbers"),
        api.task("second", "maybe_fail", depends_on=["first"]),
        api.task("third", "maybe_fail", depends_on=["second"]),
        api.task("side", "maybe_fail", depends_on=["first"]),
    ]))
    op = api.client("operator", sub="olga")
    run_id = op.post("/pipelines/chain/runs").json()["run_id"]
    before = _tasks(api.wait_for_run(run_id, {"succeeded", "failed"}))
    assert {t: b["state"] for t, b in before.items()} == dict.fromkeys(before, "succeeded")

    r = op.post(f"/runs/{run_id}/tasks/second/retry")
    assert r.status_code == 202, r.text
    assert r.json()["run_id"] == run_id
    after = api.wait_for_run(run_id, {"succeeded", "failed"})
    assert after["state"] == "succeeded", after
    tasks = _tasks(after)
    for unchanged in ("first", "side"):
        assert tasks[unchanged]["attempts"] == before[unchanged]["attempts"], unchanged
    for again in ("second", "third"):
        # the earlier attempt is kept; a second one ran and succeeded
        assert [a["number"] for a in tasks[again]["attempts"]] == [1, 2], again
        assert tasks[again]["attempts"][0] == before[again]["attempts"][0]
        assert tasks[again]["state"] == "succeeded"

    row = next(r for r in reversed(api.audit_rows()) if r["path"].endswith("/retry"))
    assert (row["actor"], row["status"], row["outcome"]) == ("olga", 202, "success")
    assert "retried from task second (2 tasks reset)" in (row["detail"] or "")

    # a viewer may not; an unknown task or run is a 404
    assert api.client("viewer").post(f"/runs/{run_id}/tasks/second/retry").status_code == 403
    assert op.post(f"/runs/{run_id}/tasks/nope/retry").status_code == 404
    assert op.post("/runs/no-such-run/tasks/second/retry").status_code == 404


def test_retry_of_a_failed_task_and_refused_while_the_run_is_running(api: Api) -> None:
    api.register(api.definition("gated", [
        api.task("wait", "wait_for_gate"),
        api.task("flaky", "maybe_fail", depends_on=["wait"]),
    ]))
    op = api.client("operator")
    api.tasks.fail["on"] = True
    run_id = op.post("/pipelines/gated/runs").json()["run_id"]
    api.wait_for_run(run_id, {"running"})
    live = op.post(f"/runs/{run_id}/tasks/flaky/retry")
    assert live.status_code == 409
    assert "running" in live.json()["detail"]

    api.tasks.gate.set()
    failed = api.wait_for_run(run_id, {"succeeded", "failed"})
    assert failed["state"] == "failed"
    api.tasks.fail["on"] = False
    assert op.post(f"/runs/{run_id}/tasks/flaky/retry").status_code == 202
    done = api.wait_for_run(run_id, {"succeeded", "failed"})
    assert done["state"] == "succeeded", done
    tasks = _tasks(done)
    assert len(tasks["wait"]["attempts"]) == 1  # upstream of the retried task: not run again
    assert [a["state"] for a in tasks["flaky"]["attempts"]] == ["failed", "succeeded"]
