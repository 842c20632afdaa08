"""Powertools Logger, Metrics and Tracer, created once and imported by every handler.

Handlers put the decorators on; core code only logs through ``logger`` and adds metrics. The
service name comes from ``POWERTOOLS_SERVICE_NAME`` (set per function by the CDK app).
"""

from __future__ import annotations

import json
import sys

from aws_lambda_powertools import Logger, Metrics, Tracer

from udop.settings import ProcessSettings, load_settings

__all__ = ["emit_metric", "logger", "metrics", "tracer"]

_PROCESS = load_settings(ProcessSettings)
_SERVICE = _PROCESS.powertools_service_name

logger = Logger(service=_SERVICE)
metrics = Metrics(namespace=_PROCESS.powertools_metrics_namespace, service=_SERVICE)
tracer = Tracer(service=_SERVICE)


def emit_metric(name: str, unit: str, value: float, dimensions: dict[str, str]) -> None:
    """One EMF metric with its own dimensions, named as on ``/metrics`` (``udop_tasks``, ...).

    Written as one line straight to the process's stdout (the function's log stream), past an
    attempt's capture: a metric holds no task data, and the capture masks what it passes on (on a
    server, the PII detectors too), which took a 13-digit epoch-milliseconds ``Timestamp`` passing the
    card checksum for a card number and left a line CloudWatch cannot read (the metric lost)."""
    from aws_lambda_powertools.metrics import MetricUnit
    from aws_lambda_powertools.metrics.base import SingleMetric

    metric = SingleMetric(namespace=metrics.namespace)
    metric.add_metric(name=name, unit=MetricUnit(unit), value=value)
    for key, dim in dimensions.items():
        metric.add_dimension(name=key, value=dim)
    blob = json.dumps(metric.serialize_metric_set(), separators=(",", ":"))
    out = sys.stdout
    getattr(out, "real", out).write(blob + "\n")  # one write: no other thread's text inside the line
