"""Alerts sent at the end of a LocalExecutor run to a real HTTP receiver; the anomaly check."""

from __future__ import annotations

from typing import Any

import pytest

from udop.alerts import band
from udop.executor.local import LocalExecutor
from udop.sandbox import MASK
from udop.spec.loader import load_pipeline
from udop.states import RunState


def _run(obs: Any, store: Any, path: Any, **kwargs: Any) -> Any:
    pipeline = load_pipeline(path, import_callables=True)
    executor = LocalExecutor(store, workers=2, data_root=str(obs.root / "data"),
                             services={"base_dir": str(obs.root)}, **kwargs)
    return store.get_run(executor.run(pipeline).id)


def test_on_failure_posts_a_slack_payload_with_the_link_and_the_redacted_error(obs, store, receiver, monkeypatch):
    monkeypatch.setenv("UDOP_TEST_HOOK", receiver.url)
    monkeypatch.setenv("UDOP_PUBLIC_URL", "https://udop.example.net/")
    monkeypatch.setenv("UDOP_MASK_PII", "on")
    from udop.masking import apply_setting

    apply_setting(server=False)
    path = obs.pipeline(
        [{"id": "load", "type": "python", "callable": "boom", "args": {"who": "ann@example.com"}}],
        alerts={"on_failure": [{"webhook": {"env": "UDOP_TEST_HOOK"}}],
                "on_success": [{"webhook": receiver.url}]},
    )
    run = _run(obs, store, path)
    assert run.state == RunState.FAILED
    assert len(receiver.payloads) == 1, "a failed run notifies on_failure only"
    body = receiver.payloads[0]
    assert body["text"].startswith(f"udop: run {run.id} of alerting failed at task load")
    assert body["udop"]["event"] == "failure"
    assert body["udop"]["task"] == "load"
    assert body["udop"]["link"] == f"https://udop.example.net/runs/{run.id}"
    assert "could not load customer" in body["udop"]["error"]
    assert b"ann@example.com" not in receiver.raw[0]
    assert MASK in body["udop"]["error"]


def test_on_success_is_sent_and_a_failing_receiver_does_not_fail_the_run(obs, store, receiver, caplog):
    receiver.status = 500
    path = obs.pipeline([{"id": "r", "type": "python", "callable": "rows"}],
                        alerts={"on_success": [{"webhook": receiver.url}],
                                "on_failure": [{"webhook": receiver.url}]})
    run = _run(obs, store, path)
    assert run.state == RunState.SUCCEEDED
    assert [p["udop"]["event"] for p in receiver.payloads] == ["success"]
    assert f"udop runs show {run.id}" in receiver.payloads[0]["text"]
    assert any("alert success" in r.getMessage() and "not sent" in r.getMessage() for r in caplog.records)


def test_sla_breach_is_reported(obs, store, receiver):
    path = obs.pipeline([{"id": "r", "type": "python", "callable": "rows", "args": {"sleep": 0.3}}],
                        alerts={"sla": {"max_duration": "100ms", "notify": [{"webhook": receiver.url}]}})
    _run(obs, store, path)
    assert [p["udop"]["event"] for p in receiver.payloads] == ["sla"]
    assert "over its SLA of 0.1s" in receiver.payloads[0]["text"]


def test_within_sla_nothing_is_sent(obs, store, receiver):
    path = obs.pipeline([{"id": "r", "type": "python", "callable": "rows"}],
                        alerts={"sla": {"max_duration": "1h", "notify": [{"webhook": receiver.url}]}})
    _run(obs, store, path)
    assert receiver.payloads == []


def test_an_alert_target_is_validated():
    from pydantic import ValidationError

    from udop.spec.models import AlertTarget

    with pytest.raises(ValidationError, match="exactly one of"):
        AlertTarget()
    with pytest.raises(ValidationError, match="http"):
        AlertTarget(webhook="ftp://x")
    with pytest.raises(ValidationError):
        AlertTarget(sns="not-an-arn")


def test_band_is_median_plus_minus_k_mad():
    low, high = band([10, 11, 9, 10, 10, 100], k=3)  # one outlier does not widen it
    assert low == pytest.approx(10 - 3 * 1.4826 * 0.5)
    assert high == pytest.approx(10 + 3 * 1.4826 * 0.5)
    low, high = band([1000, 1000, 1000], k=5)  # steady history: at least 1% of the median
    assert (low, high) == (pytest.approx(950), pytest.approx(1050))


def test_a_task_whose_rows_leave_the_band_is_flagged_recorded_and_notified(obs, store, receiver):
    alerts = {"anomaly": {"last": 10, "min_runs": 3, "k": 4, "metrics": ["rows"],
                          "notify": [{"webhook": receiver.url}]}}
    for n in (100, 101, 99, 100):
        path = obs.pipeline([{"id": "r", "type": "python", "callable": "rows", "args": {"n": n}}], alerts=alerts)
        run = _run(obs, store, path)
    normal = [c for c in store.get_checks(run.id) if c.rule == "anomaly:rows"]
    assert len(normal) == 1 and normal[0].passed, "the fourth run is within its band"
    assert receiver.payloads == []

    path = obs.pipeline([{"id": "r", "type": "python", "callable": "rows", "args": {"n": 3}}], alerts=alerts)
    run = _run(obs, store, path)
    assert run.state == RunState.SUCCEEDED, "an anomaly is a warning, not a failure"
    flagged = [c for c in store.get_checks(run.id) if c.rule == "anomaly:rows"]
    assert len(flagged) == 1 and not flagged[0].passed and flagged[0].severity == "warn"
    assert "rows 3 rows is outside the band" in flagged[0].message
    assert [p["udop"]["event"] for p in receiver.payloads] == ["anomaly"]
    assert receiver.payloads[0]["udop"]["task"] == "r"


def test_no_verdict_before_min_runs(obs, store):
    alerts = {"anomaly": {"min_runs": 3, "metrics": ["rows"]}}
    path = obs.pipeline([{"id": "r", "type": "python", "callable": "rows"}], alerts=alerts)
    run = _run(obs, store, path)
    assert [c for c in store.get_checks(run.id) if c.rule.startswith("anomaly")] == []
