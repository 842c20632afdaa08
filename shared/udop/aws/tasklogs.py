"""The task runner's log lines on Lambda: JSON with the attempt's ids, and a pointer per attempt.

Inside an attempt, what user code logs through ``logging`` and prints to stdout/stderr comes out on
the function's stdout (its CloudWatch stream) as JSON lines carrying run, pipeline, task, attempt,
logical date, correlation id and the Lambda request id, formatted like ``udop --log-format json``
(``udop.observability.logs``). The Lambda runtime's own root handler (plain text) is replaced.

Where the lines went (log group, stream, request id) is written next to the task's results in the
data bucket; the run-events function reads it into the attempt's record in the metadata store
(``AttemptRecord.log``), which ``udop logs``, ``udop runs show`` and the API show.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from udop.observability.context import bound, current

__all__ = ["attempt_logging", "log_pointer_key", "read_log_pointer"]

class _Stdout:
    """The process's real stdout, looked up at each write (a test harness may swap sys.stdout)."""

    def write(self, text: str) -> int:
        out = sys.stdout
        return int(getattr(out, "real", out).write(text))

    def flush(self) -> None:
        out = sys.stdout
        getattr(out, "real", out).flush()


_STDOUT = _Stdout()


def log_pointer_key(pipeline: str, run_id: str, task_id: str, execution: str, retry: int) -> str:
    """The S3 key (data bucket) of one invocation's log pointer: by execution name and retry count,
    which the run-events function also reads from the execution history."""
    name = execution.rsplit(":", 1)[-1] or "_"
    return f"results/{pipeline}/{run_id}/_logs/{task_id}/{name}.{int(retry)}.json"


def _configure_once() -> None:
    """JSON lines on stdout from the root logger, unless that is already so (checked per invocation:
    something in the process, a CLI in tests, may have configured logging differently since)."""
    from udop.observability.logs import JsonFormatter, configure

    root = logging.getLogger()
    if any(getattr(h, "stream", None) is _STDOUT and isinstance(h.formatter, JsonFormatter)
           for h in root.handlers) and root.level <= logging.INFO:
        return
    for handler in list(root.handlers):  # the runtime's plain-text handler (LambdaLoggerHandler)
        if type(handler).__name__.startswith("Lambda"):
            root.removeHandler(handler)
    configure("json", level=logging.INFO, stream=_STDOUT)  # type: ignore[arg-type]


@contextmanager
def attempt_logging(event: Mapping[str, Any], *, s3: Any = None, bucket: str | None = None,
                    request_id: str | None = None) -> Iterator[dict[str, Any] | None]:
    """For the block: JSON lines with the attempt's ids for the task's logging and printed output, and
    (with ``s3``) the log pointer written for the run-events function. Yields the pointer."""
    from udop.observability.cloudwatch import pointer
    from udop.observability.tasklogs import StreamCapture, install_capture

    _configure_once()
    install_capture()
    _annotate_xray(event)
    where = pointer(request_id)
    if where is not None and s3 is not None and bucket and _records_attempt(event):
        run = event.get("run") if isinstance(event.get("run"), Mapping) else {}
        key = log_pointer_key(str(event.get("pipeline")), str((run or {}).get("run_id") or ""),
                              str(event.get("task_id")), str(event.get("execution") or ""),
                              int(event.get("attempt") or 0))
        try:
            from udop.aws.s3 import put_json

            put_json(s3, bucket, key, where)
        except Exception as exc:  # the pointer is a convenience: never fail the task for it
            logging.getLogger("udop.aws").warning("cannot record the attempt's log pointer: %s", exc)
    with bound(request_id=request_id):
        capture = StreamCapture(_STDOUT, current().fields())
        with bound(capture=capture):
            yield where


def _annotate_xray(event: Mapping[str, Any]) -> None:
    """The run's W3C trace id as an annotation of the invocation's X-Ray trace (searchable there as
    ``annotation.w3c_trace_id``), so an OpenTelemetry trace and the X-Ray one can be found together."""
    run = event.get("run")
    traceparent = run.get("traceparent") if isinstance(run, Mapping) else None
    parts = str(traceparent or "").split("-")
    if len(parts) != 4 or len(parts[1]) != 32:
        return
    try:
        from udop.aws.observability import tracer

        tracer.put_annotation(key="w3c_trace_id", value=parts[1])
    except Exception as exc:  # no segment (tracing off): nothing to annotate
        logging.getLogger("udop.aws").debug("no X-Ray annotation: %s", exc)


def _records_attempt(event: Mapping[str, Any]) -> bool:
    """A foreach item's invocation or its listing is not an attempt of the task; the rest are."""
    return (event.get("item") is None and not event.get("list") and bool(event.get("task_id"))
            and bool(event.get("pipeline")))


def read_log_pointer(s3: Any, bucket: str, pipeline: str, run_id: str, task_id: str, *, execution: str,
                     retry: int) -> dict[str, Any] | None:
    """The pointer one invocation wrote, or None (not written, not readable)."""
    from udop.aws.s3 import get_json

    try:
        body = get_json(s3, bucket, log_pointer_key(pipeline, run_id, task_id, execution, retry))
    except Exception:
        return None
    return dict(body) if isinstance(body, dict) and body.get("kind") == "cloudwatch" else None
