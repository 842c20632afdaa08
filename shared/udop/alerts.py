"""Alerts: a pipeline's ``spec.alerts`` notifications, and the anomaly check that feeds them.

At the end of a run (``notify_run_end``, called by the LocalExecutor for ``udop run`` and the API
launcher, and by the run-events function on AWS) the run is matched against ``on_failure``,
``on_success``, ``sla.max_duration`` and the anomaly checks recorded with it; each match is sent to
its targets: a webhook (Slack-compatible JSON: ``text`` plus a ``udop`` object with the details) or
an SNS topic. Every text passes through the redactor first. A notification that cannot be sent is
logged; it never changes the run's outcome.

The anomaly check (``anomaly_check``) runs when a task succeeds: its rows and duration are compared
with the band ``median ± k·scale`` of its last N successful runs, where scale is the median absolute
deviation (times 1.4826, so it estimates a standard deviation for normal data) but at least 1% of the
median, so a perfectly steady history does not flag a one-row change. The verdict is stored as a
``warn`` check result of the task (rule ``anomaly:rows`` / ``anomaly:duration``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field

from udop.sandbox import redactor
from udop.settings import UdopSettings, load_settings
from udop.states import RunState, TaskState

__all__ = [
    "AlertSettings",
    "Notification",
    "anomaly_check",
    "band",
    "notify_run_end",
    "notify_stored_run",
    "send",
    "with_anomaly_checks",
]

log = logging.getLogger("udop.alerts")

#: MAD -> standard deviation for normally distributed data
_MAD_SCALE = 1.4826


class AlertSettings(UdopSettings):
    public_url: str | None = Field(
        None,
        description="the API's base URL, for the run link in alerts "
        "(without it the link is the `udop runs show` command)",
    )
    alert_timeout: float = Field(5.0, gt=0, le=60, description="seconds one webhook or SNS call may take")


@dataclass(frozen=True)
class Notification:
    event: str  # "failure" | "success" | "sla" | "anomaly"
    pipeline: str
    run_id: str
    state: str
    link: str
    text: str
    task: str | None = None
    error: str | None = None

    def payload(self) -> dict[str, Any]:
        """Slack's incoming webhooks read ``text``; other receivers get the fields under ``udop``."""
        return {
            "text": self.text,
            "udop": {
                "event": self.event,
                "pipeline": self.pipeline,
                "run_id": self.run_id,
                "state": self.state,
                "link": self.link,
                "task": self.task,
                "error": self.error,
            },
        }


# ------------------------------------------------------------------------------------------ anomaly


def band(history: Sequence[float], k: float) -> tuple[float, float]:
    """``median ± k·scale`` of ``history`` (see the module text)."""
    median = statistics.median(history)
    mad = statistics.median(abs(v - median) for v in history)
    scale = max(_MAD_SCALE * mad, 0.01 * abs(median), 1e-9)
    return median - k * scale, median + k * scale


def anomaly_check(
    store: Any, pipeline: Any, run_id: str, task_id: str, result: dict[str, Any], *,
    metrics: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """The anomaly check results (check-result dicts) for ``task_id`` of ``run_id``, which just
    succeeded with ``result``; none when the pipeline asks for no anomaly check or history is short.
    ``metrics`` narrows the definition's metrics (the AWS path checks rows only: its stored task
    times are when the run-events function recorded them, not when the task ran)."""
    alerts = getattr(pipeline.spec, "alerts", None)
    spec = alerts.anomaly if alerts is not None else None
    if spec is None:
        return []
    current = store.get_run(run_id)
    task = next((t for t in current.tasks if t.task_id == task_id), None) if current else None
    now_value: dict[str, float | None] = {
        "rows": _rows(result),
        "duration": (datetime.now(UTC) - task.started_at).total_seconds()
        if task and task.started_at
        else None,
    }
    history: dict[str, list[float]] = {"rows": [], "duration": []}
    for past in store.list_runs(pipeline=pipeline.name, state=RunState.SUCCEEDED, limit=spec.last):
        if past.id == run_id:
            continue
        full = store.get_run(past.id)
        old = next((t for t in full.tasks if t.task_id == task_id), None) if full else None
        if old is None or old.state != TaskState.SUCCEEDED:
            continue
        rows = _rows(old.result or {})
        if rows is not None:
            history["rows"].append(float(rows))
        if old.started_at and old.ended_at:
            history["duration"].append((old.ended_at - old.started_at).total_seconds())
    out = []
    for metric in spec.metrics:
        if metrics is not None and metric not in metrics:
            continue
        value, past_values = now_value[metric], history[metric]
        if value is None or len(past_values) < spec.min_runs:
            continue
        low, high = band(past_values, spec.k)
        inside = low <= value <= high
        unit = "s" if metric == "duration" else " rows"
        out.append(
            {
                "rule": f"anomaly:{metric}",
                "severity": "warn",
                "passed": inside,
                "failing_rows": 0,
                "sample": [],
                "message": (
                    f"{metric} {value:g}{unit} is {'within' if inside else 'outside'} the band "
                    f"{max(low, 0):g}..{high:g}{unit} of the last {len(past_values)} successful runs "
                    f"(median ± {spec.k:g}·MAD)"
                ),
            }
        )
    return out


def with_anomaly_checks(
    store: Any, pipeline: Any, run_id: str, task_id: str, result: dict[str, Any], *,
    metrics: Iterable[str] | None = None,
) -> dict[str, Any]:
    """``result`` with the task's anomaly checks added to its checks (stored with the attempt). A
    failure to compute them is logged and leaves ``result`` as it was: it must not fail the task."""
    try:
        found = anomaly_check(store, pipeline, run_id, task_id, result, metrics=metrics)
    except Exception as exc:
        log.error(
            "anomaly check of task %s in run %s skipped: %s", task_id, run_id, redactor.redact(str(exc))
        )
        return result
    return {**result, "checks": [*(result.get("checks") or []), *found]} if found else result


def _rows(result: dict[str, Any]) -> float | None:
    output = result.get("output") or {}
    rows = output.get("rows") if isinstance(output, dict) else None
    return float(rows) if isinstance(rows, int | float) else None


# ------------------------------------------------------------------------------------------ sending


def notify_run_end(
    store: Any, pipeline: Any, run_id: str, *, resolve: Callable[[Any], str] | None = None
) -> list[Notification]:
    """Send the notifications the run's end calls for; returns what was sent (or tried). Never raises."""
    try:
        alerts = getattr(pipeline.spec, "alerts", None)
        if alerts is None:
            return []
        run = store.get_run(run_id)
        if run is None:
            return []
        checks = store.get_checks(run_id)
        return _notify(alerts, run, checks, resolve)
    except Exception as exc:  # an alert is best effort: the run's outcome is already recorded
        log.error("alerts for run %s not sent: %s", run_id, redactor.redact(str(exc)))
        return []


def notify_stored_run(store: Any, run_id: str) -> list[Notification]:
    """``notify_run_end`` for a run whose definition is only in the store (the AWS run-events path:
    the run ended in Step Functions). Never raises."""
    try:
        pipeline = stored_pipeline_with_alerts(store, store.get_run(run_id))
        if pipeline is None:
            return []
    except Exception as exc:
        log.error("alerts for run %s not sent: %s", run_id, redactor.redact(str(exc)))
        return []
    return notify_run_end(store, pipeline, run_id)


def stored_pipeline_with_alerts(store: Any, run: Any) -> Any:
    """The run's pipeline (the version it ran, from the store) when it has ``spec.alerts``, else None."""
    record = store.get_pipeline(run.pipeline) if run else None
    versions = record.versions if record else []
    version = next((v for v in versions if v.version == run.pipeline_version), None)
    alerts = ((version.definition if version else {}).get("spec") or {}).get("alerts")
    if not alerts or version is None:
        return None
    from udop.spec.models import Pipeline

    return Pipeline.model_validate(version.definition)


def _notify(
    alerts: Any, run: Any, checks: Iterable[Any], resolve: Callable[[Any], str] | None
) -> list[Notification]:
    settings = load_settings(AlertSettings)
    link = (
        f"{settings.public_url.rstrip('/')}/runs/{run.id}"
        if settings.public_url
        else f"udop runs show {run.id}"
    )
    state = run.state.value if hasattr(run.state, "value") else str(run.state)
    sent: list[tuple[Notification, list[Any]]] = []

    def note(
        event: str, targets: list[Any], text: str, task: str | None = None, error: str | None = None
    ) -> None:
        if targets:
            sent.append(
                (
                    Notification(
                        event,
                        run.pipeline,
                        run.id,
                        state,
                        link,
                        redactor.redact(text),
                        task,
                        redactor.redact(error) if error else None,
                    ),
                    targets,
                )
            )

    if run.state == RunState.FAILED:
        failed = next((t for t in run.tasks if t.state == TaskState.FAILED), None)
        error = (failed.error_message if failed else None) or run.error
        where = f" at task {failed.task_id}" if failed else ""
        note(
            "failure",
            alerts.on_failure,
            f"udop: run {run.id} of {run.pipeline} failed{where}: {error} ({link})",
            failed.task_id if failed else None,
            error,
        )
    elif run.state == RunState.SUCCEEDED:
        note("success", alerts.on_success, f"udop: run {run.id} of {run.pipeline} succeeded ({link})")
    if alerts.sla is not None and run.started_at and run.ended_at:
        took = (run.ended_at - run.started_at).total_seconds()
        if took > alerts.sla.max_duration:
            note(
                "sla",
                alerts.sla.notify,
                f"udop: run {run.id} of {run.pipeline} took {took:.1f}s, over its "
                f"SLA of {alerts.sla.max_duration:g}s ({link})",
            )
    if alerts.anomaly is not None:
        for check in checks:
            if check.rule.startswith("anomaly:") and not check.passed:
                note(
                    "anomaly",
                    alerts.anomaly.notify or alerts.on_failure,
                    f"udop: anomaly in run {run.id} of {run.pipeline}, task {check.task_id}: {check.message} "
                    f"({link})",
                    check.task_id,
                    check.message,
                )
    for notification, targets in sent:
        for target in targets:
            try:
                send(notification, target, resolve=resolve, timeout=settings.alert_timeout)
            except Exception as exc:
                log.error(
                    "alert %s for run %s not sent to %s: %s",
                    notification.event,
                    run.id,
                    _describe(target),
                    redactor.redact(str(exc)),
                )
    return [n for n, _ in sent]


def _describe(target: Any) -> str:
    if target.sns:
        return f"SNS topic {target.sns}"
    return "webhook " + (
        f"from {next(iter(target.webhook))} reference" if isinstance(target.webhook, dict) else "URL"
    )


def _resolve_reference(value: Any) -> str:
    from udop.connectors.secrets import SecretRef

    return SecretRef.parse(value).get_secret_value()


def send(
    notification: Notification,
    target: Any,
    *,
    resolve: Callable[[Any], str] | None = None,
    timeout: float = 5.0,
) -> None:
    body = notification.payload()
    if target.sns:
        import boto3

        region = str(target.sns).split(":")[3]
        boto3.client("sns", region_name=region).publish(
            TopicArn=target.sns,
            Subject=f"udop {notification.event}: {notification.pipeline}"[:100],
            Message=json.dumps(body),
        )
        return
    url = (
        target.webhook if isinstance(target.webhook, str) else (resolve or _resolve_reference)(target.webhook)
    )
    _refuse_metadata_host(url)
    import httpx

    response = httpx.post(url, json=body, timeout=timeout, follow_redirects=False)
    response.raise_for_status()


def _refuse_metadata_host(url: str) -> None:
    """Cloud metadata endpoints (link-local addresses) hand out credentials: no alert goes there."""
    host = urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return  # httpx reports the unresolvable host itself
    for address in addresses:
        if ipaddress.ip_address(str(address).split("%")[0]).is_link_local:
            raise ValueError(f"webhook host {host!r} is a link-local (cloud metadata) address; refused")
