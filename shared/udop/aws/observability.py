"""Powertools Logger, Metrics and Tracer, created once and imported by every handler.

Handlers put the decorators on; core code only logs through ``logger`` and adds metrics. The
service name comes from ``POWERTOOLS_SERVICE_NAME`` (set per function by the CDK app).
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

from udop.settings import ProcessSettings, load_settings

__all__ = ["emit_metric", "logger", "metrics", "tracer"]

_PROCESS = load_settings(ProcessSettings)
_SERVICE = _PROCESS.powertools_service_name

logger = Logger(service=_SERVICE)
metrics = Metrics(namespace=_PROCESS.powertools_metrics_namespace, service=_SERVICE)
tracer = Tracer(service=_SERVICE)


def emit_metric(name: str, unit: str, value: float, dimensions: dict[str, str]) -> None:
    """One EMF metric with its own dimensions, named as on ``/metrics`` (``udop_tasks``, ...)."""
    from aws_lambda_powertools.metrics import MetricUnit, single_metric

    with single_metric(name=name, unit=MetricUnit(unit), value=value, namespace=metrics.namespace) as metric:
        for key, dim in dimensions.items():
            metric.add_dimension(name=key, value=dim)
