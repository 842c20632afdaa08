"""Pipelines and runs over real HTTP: register, version, validate, trigger, inspect, cancel, resume."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from udop.states import AttemptState, RunState, TaskState
from udop.tasks.contract import CheckResult, Manifest, TaskResult

from .conftest import Api


def test_health_answers_without_credentials_and_checks_the_store(api: Api) -> None:
    r = api.client(None).get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "store": "ok", "executor": "local"}


def test_openapi_and_docs_are_served(api: Api) -> None:
    c = api.client(None)
    spec = c.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in (
        "/pipelines",
        "/pipelines/{name}",
        "/pipelines/{name}/runs",
        "/runs",
        "/runs/{run_id}",
        "/runs/{run_id}/cancel",
        "/runs/{run_id}/resume",
        "/runs/{run_id}/lineage",
        "/runs/{run_id}/checks",
        "/health",
        "/audit",
        "/api-keys",
    ):
        assert path in spec["paths"], path
    assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])
    assert "swagger" in c.get("/docs").text.lower()


def test_register_versions_only_on_change_and_get_lists_every_version(api: Api) -> None:
    first = api.definition("sales", [api.task("a", "maybe_fail")])
    r = api.register(first)
    assert r.status_code == 201
    assert r.json()["version"] == 1
    assert r.json()["created"] is True

    again = api.register(first)  # the same definition: no new version
    assert again.status_code == 200
    assert again.json() == {**r.json(), "created": False}

    # JSON bodies are accepted too; a changed definition is version 2
    changed = {
        "apiVersion": "udop/v1",
        "kind": "Pipeline",
        "metadata": {"name": "sales"},
        "spec": {"tasks": [api.task("a", "maybe_fail"), api.task("b", "maybe_fail", depends_on=["a"])]},
    }
    r2 = api.client("operator").post("/pipelines", json=changed)
    assert r2.status_code == 201
    assert r2.json()["version"] == 2

    viewer = api.client("viewer")
    detail = viewer.get("/pipelines/sales").json()
    assert detail["latest_version"] == 2
    assert [v["version"] for v in detail["versions"]] == [1, 2]
    assert [t["id"] for t in detail["versions"][1]["definition"]["spec"]["tasks"]] == ["a", "b"]
    assert [p["name"] for p in viewer.get("/pipelines").json()] == ["sales"]


def test_an_invalid_definition_is_422_with_every_error_and_its_path(api: Api) -> None:
    text = "\n".join(
        [
            "apiVersion: udop/v1",
            "kind: Pipeline",
            "metadata: {name: broken}",
            "spec:",
            "  tasks:",
            f"    - {{id: a, type: python, callable: '{api.module}:maybe_fail', retries: 3}}",
            "    - {id: b, type: no_such_type}",
        ]
    )
    r = api.register(text)
    assert r.status_code == 422
    errors = r.json()["errors"]
    by_path = {e["path"]: e for e in errors}
    assert "spec.tasks[0].retries" in by_path, errors
    assert "unknown key" in by_path["spec.tasks[0].retries"]["message"]
    assert "spec.tasks[1].type" in by_path, errors
    assert by_path["spec.tasks[1].type"]["line"] == 7
    assert api.client("viewer").get("/pipelines/broken").status_code == 404  # nothing was stored

    not_yaml = api.register("apiVersion: [unclosed")
    assert not_yaml.status_code == 422
    assert not_yaml.json()["errors"]

    # the DAG is checked too: an unknown dependency is named with its path
    dangling = api.register(api.definition("dangling", [api.task("a", "maybe_fail", depends_on=["nope"])]))
    assert dangling.status_code == 422
    assert [e["path"] for e in dangling.json()["errors"]] == ["spec.tasks[0].depends_on[0]"]


def test_delete_needs_admin_and_removes_the_pipeline(api: Api) -> None:
    api.register(api.definition("old", [api.task("a", "maybe_fail")]))
    assert api.client("operator").delete("/pipelines/old").status_code == 403
    assert api.client("admin").delete("/pipelines/old").status_code == 204
    assert api.client("viewer").get("/pipelines/old").status_code == 404
    assert api.client("admin").delete("/pipelines/old").status_code == 404


def test_trigger_answers_202_before_the_run_ends_and_the_run_then_succeeds(api: Api) -> None:
    api.register(
        api.definition(
            "gated",
            [api.task("wait", "wait_for_gate"), api.task("after", "maybe_fail", depends_on=["wait"])],
            params={"day": {"type": "str", "default": "mon"}},
        )
    )
    r = api.client("operator").post("/pipelines/gated/runs", json={"params": {"day": "tue"}})
    assert r.status_code == 202
    run_id = r.json()["run_id"]
    assert r.headers["location"] == f"/runs/{run_id}"

    # The task is still blocked at the gate: the answer came without waiting for the run.
    running = api.client("viewer").get(f"/runs/{run_id}").json()
    assert running["state"] in {"pending", "running"}
    assert running["params"] == {"day": "tue"}

    api.tasks.gate.set()
    done = api.wait_for_run(run_id, {"succeeded", "failed"})
    assert done["state"] == "succeeded", done
    tasks = {t["task_id"]: t for t in done["tasks"]}
    assert tasks["wait"]["state"] == "succeeded"
    assert tasks["after"]["state"] == "succeeded"
    assert [a["state"] for a in tasks["wait"]["attempts"]] == ["succeeded"]
    assert tasks["wait"]["result"]["value"] == {"waited": True}


def test_trigger_rejects_unknown_params_and_unknown_pipelines(api: Api) -> None:
    api.register(
        api.definition("p", [api.task("a", "maybe_fail")], params={"n": {"type": "int", "default": 1}})
    )
    op = api.client("operator")
    bad = op.post("/pipelines/p/runs", json={"params": {"m": 2}})
    assert bad.status_code == 422
    assert "unknown parameter 'm'" in bad.json()["detail"]
    wrong_type = op.post("/pipelines/p/runs", json={"params": {"n": "many"}})
    assert wrong_type.status_code == 422
    assert op.post("/pipelines/nope/runs", json={}).status_code == 404
    assert api.client("viewer").get("/runs").json()["items"] == []  # nothing was started


def test_a_failed_run_shows_its_error_and_resume_reruns_only_what_failed(api: Api) -> None:
    api.register(
        api.definition(
            "flaky", [api.task("first", "numbers"), api.task("second", "maybe_fail", depends_on=["first"])]
        )
    )
    api.tasks.fail["on"] = True
    run_id = api.client("operator").post("/pipelines/flaky/runs").json()["run_id"]
    failed = api.wait_for_run(run_id, {"succeeded", "failed"})
    assert failed["state"] == "failed"
    second = next(t for t in failed["tasks"] if t["task_id"] == "second")
    assert second["state"] == "failed"
    assert second["attempts"][-1]["error_type"] == "udop.FatalError"
    assert "told to fail" in second["attempts"][-1]["error_message"]
    first_attempts = next(t for t in failed["tasks"] if t["task_id"] == "first")["attempts"]

    api.tasks.fail["on"] = False
    r = api.client("operator").post(f"/runs/{run_id}/resume")
    assert r.status_code == 202
    done = api.wait_for_run(run_id, {"succeeded", "failed"})
    assert done["state"] == "succeeded", done
    tasks = {t["task_id"]: t for t in done["tasks"]}
    assert tasks["first"]["attempts"] == first_attempts  # not run again
    assert [a["state"] for a in tasks["second"]["attempts"]][-1] == "succeeded"

    # resuming a run that succeeded is a conflict, not a new execution
    assert api.client("operator").post(f"/runs/{run_id}/resume").status_code == 409


def test_cancel_stops_a_running_run(api_factory: Callable[..., Api]) -> None:
    # the task ignores its cancel: the cancel waits the stop grace, made short here (default 10 s)
    api = api_factory(stop_grace=0.5)
    api.register(
        api.definition(
            "slow", [api.task("wait", "wait_for_gate"), api.task("later", "maybe_fail", depends_on=["wait"])]
        )
    )
    run_id = api.client("operator").post("/pipelines/slow/runs").json()["run_id"]
    api.wait_for_run(run_id, {"running"})
    r = api.client("operator").post(f"/runs/{run_id}/cancel")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "cancelled"
    assert "cancelled by operator-user" in body["error"]
    assert {t["task_id"]: t["state"] for t in body["tasks"]}["later"] == "cancelled"
    api.tasks.gate.set()
    # it stays cancelled: the late task result does not revive it
    assert api.tasks.left.wait(10), "the task never returned its late result"
    time.sleep(0.2)  # time for a (wrongly) accepted late result to reach the store
    assert api.client("viewer").get(f"/runs/{run_id}").json()["state"] == "cancelled"
    assert api.client("operator").post(f"/runs/{run_id}/cancel").status_code == 409
    assert api.client("operator").post("/runs/no-such-run/cancel").status_code == 404


def test_stopping_the_server_cancels_its_runs_and_another_server_resumes_them(
    api_factory: Callable[..., Api],
) -> None:
    # the task ignores its cancel: stopping waits the stop grace, made short here (default 10 s)
    first = api_factory(stop_grace=0.5)
    first.register(first.definition("long", [first.task("wait", "wait_for_gate")]))
    run_id = first.client("operator").post("/pipelines/long/runs").json()["run_id"]
    first.wait_for_run(run_id, {"running"})
    first.stop()
    stopped = first.store.get_run(run_id)
    assert stopped.state == RunState.CANCELLED
    assert "the server stopped" in (stopped.error or "")

    first.tasks.gate.set()
    second = api_factory()  # the same metadata database
    assert second.client("operator").post(f"/runs/{run_id}/resume").status_code == 202
    assert second.wait_for_run(run_id, {"succeeded", "failed"})["state"] == "succeeded"


def _seed_runs(api: Api) -> list[tuple[str, str, str]]:
    """Runs created straight in the store: (id, pipeline, state), in creation order."""
    for name in ("alpha", "beta"):
        api.store.register_pipeline(
            name,
            json.loads(
                json.dumps(
                    {
                        "apiVersion": "udop/v1",
                        "kind": "Pipeline",
                        "metadata": {"name": name},
                        "spec": {"tasks": [{"id": "a", "type": "python", "callable": "m:f"}]},
                    }
                )
            ),
        )
    made = []
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(7):
        name = "alpha" if i % 3 else "beta"
        run_id = f"run-{i:02d}"
        api.store.create_run(
            run_id=run_id,
            pipeline=name,
            pipeline_version=1,
            task_ids=["a"],
            params={"i": i},
            logical_date=start + timedelta(days=i),
        )
        state = "pending"
        if i % 2:
            api.store.set_run_state(run_id, RunState.RUNNING)
            api.store.set_run_state(run_id, RunState.FAILED, error="boom")
            state = "failed"
        made.append((run_id, name, state))
    return made


def _all_pages(api: Api, **query: object) -> tuple[list[str], int]:
    c = api.client("viewer")
    ids: list[str] = []
    pages = 0
    cursor = None
    while True:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        body = c.get("/runs", params=params).json()
        pages += 1
        ids += [r["id"] for r in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids, pages


def test_list_runs_filters_and_pages_with_a_cursor(api: Api) -> None:
    made = _seed_runs(api)
    newest_first = [m[0] for m in reversed(made)]

    ids, pages = _all_pages(api, limit=3)
    assert ids == newest_first
    assert pages == 3

    alpha, _ = _all_pages(api, pipeline="alpha", limit=2)
    assert alpha == [m[0] for m in reversed(made) if m[1] == "alpha"]

    failed, _ = _all_pages(api, state="failed", limit=10)
    assert failed == [m[0] for m in reversed(made) if m[2] == "failed"]

    both, _ = _all_pages(api, pipeline="alpha", state="failed", limit=1)
    assert both == [m[0] for m in reversed(made) if m[1] == "alpha" and m[2] == "failed"]

    c = api.client("viewer")
    assert c.get("/runs", params={"cursor": "not-a-cursor!"}).status_code == 400
    assert c.get("/runs", params={"state": "exploded"}).status_code == 422
    assert c.get("/runs", params={"limit": 0}).status_code == 422


def test_lineage_and_quality_results_of_a_run(api: Api) -> None:
    api.store.register_pipeline(
        "q",
        {
            "apiVersion": "udop/v1",
            "kind": "Pipeline",
            "metadata": {"name": "q"},
            "spec": {"tasks": [{"id": "load", "type": "python", "callable": "m:f"}]},
        },
    )
    api.store.create_run(
        run_id="r-q",
        pipeline="q",
        pipeline_version=1,
        task_ids=["load"],
        params={},
        logical_date=datetime(2026, 1, 1, tzinfo=UTC),
    )
    api.store.set_run_state("r-q", RunState.RUNNING)
    api.store.start_attempt("r-q", "load", 1)
    result = TaskResult(
        output=Manifest(uri="/data/runs/q/r-q/load/", rows=42, bytes=1000, schema_fingerprint="abc"),
        inputs=("s3://bucket/in.csv",),
        checks=(
            CheckResult(rule="not_null(id)", severity="error", passed=True),
            CheckResult(
                rule="row_count >= 100", severity="warn", passed=False, failing_rows=58, message="42 rows"
            ),
        ),
    )
    api.store.finish_attempt(
        "r-q",
        "load",
        1,
        attempt_state=AttemptState.SUCCEEDED,
        task_state=TaskState.SUCCEEDED,
        result=result.to_dict(),
    )
    c = api.client("viewer")
    lineage = c.get("/runs/r-q/lineage").json()
    assert len(lineage) == 1
    assert lineage[0]["task_id"] == "load"
    assert lineage[0]["rows"] == 42
    assert lineage[0]["output_uri"] == "/data/runs/q/r-q/load/"
    assert lineage[0]["inputs"] == ["s3://bucket/in.csv"]
    checks = {ch["rule"]: ch for ch in c.get("/runs/r-q/checks").json()}
    assert checks["not_null(id)"]["passed"] is True
    assert checks["row_count >= 100"]["passed"] is False
    assert checks["row_count >= 100"]["failing_rows"] == 58
    assert c.get("/runs/nope/lineage").status_code == 404
    assert c.get("/runs/nope/checks").status_code == 404


def test_an_oversized_definition_is_refused_with_413(api: Api) -> None:
    from udop.spec.loader import MAX_DEFINITION_BYTES

    r = api.register("#" * (MAX_DEFINITION_BYTES + 1))
    assert r.status_code == 413
    assert str(MAX_DEFINITION_BYTES) in r.json()["detail"]


def test_lineage_and_checks_of_a_real_extract_and_validate_run(api: Api, tmp_path: Path) -> None:
    csv = tmp_path / "people.csv"
    csv.write_text("id,name\n1,ann\n2,\n3,cy\n")  # one missing name
    doc = {
        "apiVersion": "udop/v1",
        "kind": "Pipeline",
        "metadata": {"name": "people"},
        "spec": {
            "tasks": [
                {"id": "people", "type": "extract", "source": {"connector": "csv", "path": str(csv)}},
                {
                    "id": "checks",
                    "type": "validate",
                    "depends_on": ["people"],
                    "rules": [
                        {"row_count": {"min": 1}},
                        {"not_null": ["name"], "severity": "warn"},
                    ],
                },
            ]
        },
    }
    assert api.client("operator").post("/pipelines", json=doc).status_code == 201
    run_id = api.client("operator").post("/pipelines/people/runs").json()["run_id"]
    assert api.wait_for_run(run_id, {"succeeded", "failed"})["state"] == "succeeded"

    c = api.client("viewer")
    lineage = {entry["task_id"]: entry for entry in c.get(f"/runs/{run_id}/lineage").json()}
    assert lineage["people"]["rows"] == 3
    assert str(csv) in " ".join(lineage["people"]["inputs"])
    assert lineage["people"]["output_uri"].rstrip("/").endswith(f"runs/people/{run_id}/people")
    checks = c.get(f"/runs/{run_id}/checks").json()
    by_severity = {ch["severity"]: ch for ch in checks}
    assert by_severity["error"]["passed"] is True  # row_count >= 1
    warn = by_severity["warn"]  # not_null(name): one row fails, a warning does not fail the run
    assert warn["passed"] is False
    assert warn["failing_rows"] == 1
