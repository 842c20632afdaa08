"""Run-events Lambda: EventBridge "Step Functions Execution Status Change" events update the run and
task records in the metadata store (``udop runs list/show`` then show AWS runs). The work is
``udop.aws.events.record_status_event``. It is also the starter of S3 triggers: an upload under a
pipeline's ``trigger: files: {path: s3://...}`` starts one execution per object version
(``udop.schedule.s3events.start_from_s3_event``), and a succeeded run of a pipeline named in another's
``trigger: after:`` starts that one once (``udop.schedule.afterevents.start_from_after_event``)."""

from __future__ import annotations

from typing import Any

import boto3

from udop.aws.events import record_status_event
from udop.aws.observability import logger, metrics, tracer
from udop.aws.secrets import url_with_secret
from udop.aws.settings import EventsSettings, load_settings
from udop.schedule.afterevents import AFTER_MARKER, start_from_after_event
from udop.schedule.s3events import MARKER, start_from_s3_event
from udop.schedule.sfn_parent import is_parent_machine, record_parent_event
from udop.store import open_store

SETTINGS = load_settings(EventsSettings)
SFN = boto3.client("stepfunctions")
S3 = boto3.client("s3")
STORE = open_store(url_with_secret(SETTINGS.database_url, SETTINGS.database_secret_arn))


@logger.inject_lambda_context(correlation_id_path="detail.executionArn", clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if MARKER in event:  # an S3 upload under a pipeline's trigger path (udop.schedule.s3events)
        metrics.add_metric(name="S3TriggerEvents", unit="Count", value=1)
        return start_from_s3_event(event, SFN)
    if AFTER_MARKER in event:  # an upstream run succeeded (udop.schedule.afterevents)
        metrics.add_metric(name="AfterTriggerEvents", unit="Count", value=1)
        return start_from_after_event(event, SFN)
    metrics.add_metric(name="ExecutionStatusEvents", unit="Count", value=1)
    if is_parent_machine(str((event.get("detail") or {}).get("stateMachineArn") or "")):
        # a backfill's parent execution (udop.schedule.sfn_parent): its state is the backfill's
        backfill = record_parent_event(event, STORE, SFN)
        if backfill is None:
            return {"backfill_id": None}
        return {"backfill_id": backfill.id, "state": backfill.state}
    run = record_status_event(event, store=STORE, sfn=SFN, s3=S3, data_bucket=SETTINGS.data_bucket)
    if run is None:
        return {"run_id": None}
    return {"run_id": run.id, "state": str(run.state)}
