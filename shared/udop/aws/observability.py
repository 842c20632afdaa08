"""Powertools Logger, Metrics and Tracer, created once and imported by every handler.

Handlers put the decorators on; core code only logs through ``logger`` and adds metrics. The
service name comes from ``POWERTOOLS_SERVICE_NAME`` (set per function by the CDK app).
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics, Tracer

__all__ = ["logger", "metrics", "tracer"]

_SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "udop")

logger = Logger(service=_SERVICE)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "udop"), service=_SERVICE)
tracer = Tracer(service=_SERVICE)
