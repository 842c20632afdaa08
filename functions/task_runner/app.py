"""Task runner Lambda: runs one task of a pipeline for a Step Functions Task state.

Thin on purpose: settings, clients and observability at cold start; the work is
``udop.aws.runner.run_payload``. Errors leave with the names the compiled Retry/Catch match.
"""

from __future__ import annotations

from typing import Any

import boto3

from udop.aws.errors import for_state_machine
from udop.aws.observability import logger, metrics, tracer
from udop.aws.runner import run_payload
from udop.aws.secrets import url_with_secret
from udop.aws.settings import RunnerSettings, load_settings
from udop.state import open_state_store

SETTINGS = load_settings(RunnerSettings)
S3 = boto3.client("s3")
STATE = open_state_store(url_with_secret(SETTINGS.state_url, SETTINGS.state_secret_arn))


@logger.inject_lambda_context(correlation_id_path="execution", clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    metrics.add_metric(name="TaskInvocations", unit="Count", value=1)
    try:
        return run_payload(event, settings=SETTINGS, s3=S3, state=STATE,
                           remaining_ms=context.get_remaining_time_in_millis())
    except Exception as exc:
        named = for_state_machine(exc)
        logger.exception("task failed", extra={"error_type": type(named).__name__})
        metrics.add_metric(name="TaskFailed", unit="Count", value=1)
        if named is exc:
            raise
        raise named from exc
