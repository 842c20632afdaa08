"""Backfills on Step Functions (``udop backfill --executor stepfunctions``): client-side fan-out.

The process that runs ``udop backfill`` starts one execution of the deployed state machine per
logical date, at most ``max_parallel`` at a time, and follows each to its end (mirroring it into the
metadata store as ``udop run --executor stepfunctions`` does); there is no parent execution on AWS,
so the backfill advances only while this process runs. It is the same unit as a local backfill
(``udop backfills list/show/cancel/resume``): a cancel (from any process) stops its running
executions; a resume redrives failed and cancelled executions from their failed states and starts
the dates that have no run.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any

from udop.errors import UdopError
from udop.schedule.backfill import BackfillRunner
from udop.schedule.store import BackfillRecord
from udop.spec.models import Pipeline
from udop.store.sql import SqlMetadataStore

__all__ = ["StepFunctionsBackfillRunner"]

log = logging.getLogger(__name__)


class _Execution:
    """What the backfill's cancel watcher stops: one execution (its ARN known once started)."""

    def __init__(self, sfn: Any) -> None:
        self.sfn = sfn
        self.arn: str | None = None
        self.stopped: str | None = None
        self._lock = threading.Lock()

    def started(self, arn: str) -> None:
        with self._lock:
            self.arn = arn
            reason = self.stopped
        if reason is not None:  # cancelled while it was being started
            self._stop(reason)

    def request_stop(self, reason: str) -> None:
        with self._lock:
            self.stopped = reason
            arn = self.arn
        if arn is not None:
            self._stop(reason)

    def _stop(self, reason: str) -> None:
        assert self.arn is not None
        try:
            self.sfn.stop_execution(executionArn=self.arn, error="udop.Cancelled", cause=reason)
        except Exception as exc:  # ended meanwhile, or AWS unreachable: the run says what it became
            log.warning("stopping %s: %s", self.arn, exc)


class StepFunctionsBackfillRunner(BackfillRunner):
    """``BackfillRunner`` whose dates run as executions of the deployed state machine."""

    def __init__(self, store: SqlMetadataStore, pipeline: Pipeline, *, sfn: Any, poll: float | None = None,
                 watch_seconds: float = 1.0) -> None:
        super().__init__(store, pipeline, watch_seconds=watch_seconds)
        self.sfn = sfn
        self.poll = poll

    def _one(self, record: BackfillRecord, logical: datetime) -> None:
        from udop.aws.runs import follow_run, redrive_run, start_run
        from udop.executor.local import new_run_id

        if self._cancelled.is_set():
            return
        execution = _Execution(self.sfn)
        with self._lock:
            if self._cancelled.is_set():
                return
            self._active[logical] = execution
        run_id = record.dates.get(logical)
        state = record.run_states.get(run_id) if run_id is not None else None
        try:
            if run_id is not None and state in ("failed", "cancelled"):
                execution_arn, sm_arn = redrive_run(run_id, store=self.store, sfn=self.sfn)
            else:
                run_id = new_run_id()
                self.ticks.attach_run(record.id, logical, run_id)
                run_id, execution_arn, sm_arn = start_run(self.pipeline, record.params, store=self.store,
                                                          sfn=self.sfn, run_id=run_id, logical_date=logical)
            execution.started(execution_arn)
            follow_run(run_id, sm_arn, execution_arn, store=self.store, sfn=self.sfn, poll=self.poll)
        except UdopError as exc:
            log.error("backfill %s, %s: %s", record.id, logical.isoformat(), exc)
        finally:
            with self._lock:
                self._active.pop(logical, None)
