"""Stream runner Lambda: runs each delivery of a stream pipeline's event source mapping (SQS, Kinesis,
Kafka) as one micro-batch, in-process, and reports the batch's failures (``batchItemFailures``).

Thin on purpose: settings, clients and observability at cold start; the work is
``udop.aws.streams.run_stream_event`` with the connectors layer's event readers.
"""

from __future__ import annotations

from typing import Any

import boto3

from udop.aws.observability import logger, metrics, tracer
from udop.aws.secrets import url_with_secret
from udop.aws.settings import StreamRunnerSettings, load_settings
from udop.aws.streams import run_stream_event
from udop.sandbox import server_policy
from udop.store import open_store
from udop_connectors.aws_streams import lambda_decoder, lambda_event_source

SETTINGS = load_settings(StreamRunnerSettings)
S3 = boto3.client("s3")
STORE = open_store(url_with_secret(SETTINGS.database_url, SETTINGS.database_secret_arn))
POLICY = server_policy(data_root=SETTINGS.tmp_dir, code_dir=SETTINGS.code_dir)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    metrics.add_metric(name="StreamBatches", unit="Count", value=1)
    response = run_stream_event(event, bucket=SETTINGS.definitions_bucket, s3=S3, store=STORE, policy=POLICY,
                                data_root=f"{SETTINGS.tmp_dir.rstrip('/')}/udop-streams",
                                source_of=lambda_event_source, decode=lambda_decoder,
                                code_dir=SETTINGS.code_dir, data_bucket=SETTINGS.data_bucket)
    if response["batchItemFailures"]:
        metrics.add_metric(name="StreamBatchesFailed", unit="Count", value=1)
    return response
