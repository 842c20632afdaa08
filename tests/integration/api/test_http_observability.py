"""Over HTTP: correlation ids from the request into a run's log lines, a task's logs served (masked),
and /metrics read back with Prometheus' own text parser."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.integration.api.conftest import Api

from udop.observability.logs import configure
from udop.sandbox import MASK


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure("json", level=logging.INFO, stream=stream)
    yield stream
    root.handlers[:] = before[0]
    root.setLevel(before[1])


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_request_s_correlation_id_follows_its_run_into_the_task_s_log_lines(
    api: Api, console: io.StringIO
) -> None:
    api.register(api.definition("talker", [api.task("talk", "chatty", args={"message": "hi"})]))
    r = api.client("operator").post("/pipelines/talker/runs", headers={"X-Correlation-Id": "corr-abc-123"})
    assert r.status_code == 202 and r.headers["x-correlation-id"] == "corr-abc-123"
    run_id = r.json()["run_id"]
    assert api.wait_for_run(run_id, {"succeeded", "failed"})["state"] == "succeeded"
    mine = [json.loads(x) for x in console.getvalue().splitlines() if '"user.code"' in x]
    assert [(x["correlation_id"], x["run_id"], x["task_id"], x["attempt"]) for x in mine] == [
        ("corr-abc-123", run_id, "talk", 1)
    ]
    # no id given: the server makes one and says which
    other = api.client("viewer").get("/health")
    assert len(other.headers["x-correlation-id"]) == 32


def test_a_task_s_logs_are_served_to_viewers_with_secrets_masked(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    from udop.sandbox import redactor

    secret = f"tok-{uuid.uuid4().hex}"
    redactor.add_secret(secret)
    retry = {"max_attempts": 2, "base_delay": "10ms", "max_delay": "10ms"}
    api.register(api.definition("leaky", [api.task("leak", "chatty", retry=retry,
                                                   args={"message": secret, "fail": True})]))
    run_id = api.client("operator").post("/pipelines/leaky/runs").json()["run_id"]
    assert api.wait_for_run(run_id, {"succeeded", "failed"})["state"] == "failed"
    viewer = api.client("viewer")
    r = viewer.get(f"/runs/{run_id}/tasks/leak/logs")
    assert r.status_code == 200, r.text
    assert "==> leak attempt 1 <==" in r.text and "==> leak attempt 2 <==" in r.text
    assert f"said {MASK} in leak" in r.text and f"stdout: printed {MASK}" in r.text
    assert "udop: attempt failed: ValueError" in r.text
    assert secret not in r.text
    assert secret not in capsys.readouterr().out  # what the task printed reached the server's stdout masked
    second = viewer.get(f"/runs/{run_id}/tasks/leak/logs", params={"attempt": 2}).text
    assert "attempt 1 <==" not in second and "attempt 2 <==" in second
    assert viewer.get(f"/runs/{run_id}/tasks/nope/logs").status_code == 404
    assert api.client(None).get(f"/runs/{run_id}/tasks/leak/logs").status_code == 401
    # the run says how much each attempt logged (kept with the attempt), not where on the server
    (task,) = viewer.get(f"/runs/{run_id}").json()["tasks"]
    logs = [a["log"] for a in task["attempts"]]
    assert [(x["kind"], x["truncated"]) for x in logs] == [("file", False), ("file", False)]
    assert all(x["bytes"] > 0 and "path" not in x for x in logs)


def test_metrics_count_runs_tasks_attempts_rows_and_retries(api: Api) -> None:
    name = f"m{uuid.uuid4().hex[:8]}"
    api.register(api.definition(name, [
        api.task("numbers", "numbers", args={"n": 7}),
        api.task("total", "total", depends_on=["numbers"]),
    ]))
    bad = f"{name}-bad"
    retry = {"max_attempts": 3, "base_delay": "10ms", "max_delay": "10ms"}
    api.register(api.definition(bad, [api.task("boom", "chatty", retry=retry, args={"fail": True})]))
    operator = api.client("operator")
    good_run = operator.post(f"/pipelines/{name}/runs").json()["run_id"]
    bad_run = operator.post(f"/pipelines/{bad}/runs").json()["run_id"]
    assert api.wait_for_run(good_run, {"succeeded", "failed"})["state"] == "succeeded"
    assert api.wait_for_run(bad_run, {"succeeded", "failed"})["state"] == "failed"

    assert api.client(None).get("/metrics").status_code == 401
    r = api.client("viewer").get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = _samples(r.text)

    def value(metric: str, **labels: str) -> float:
        return got.get((metric, tuple(sorted(labels.items()))), 0.0)

    assert value("udop_runs_total", pipeline=name, state="succeeded") == 1
    assert value("udop_runs_total", pipeline=bad, state="failed") == 1
    assert value("udop_tasks_total", pipeline=name, state="succeeded") == 2
    assert value("udop_tasks_total", pipeline=bad, state="failed") == 1
    assert value("udop_retries_total", pipeline=bad, task="boom") == 2
    assert value("udop_attempt_duration_seconds_count", pipeline=bad, task="boom", state="failed") == 3
    assert value("udop_attempt_duration_seconds_count", pipeline=name, task="numbers", state="succeeded") == 1
    assert value("udop_rows_written_total", pipeline=name, task="numbers") == 7
    assert value("udop_rows_read_total", pipeline=name, task="total") == 7
    assert ("udop_runs_queued", ()) in got
