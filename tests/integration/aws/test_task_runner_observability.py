"""The task runner on emulated AWS joins the run's trace and correlation id from its payload, and
reports the attempt under the metric names /metrics uses (EMF)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tests.integration.aws.test_task_runner import _invoke, _payload, deployed

from udop.observability import tracing

pytestmark = [pytest.mark.aws, pytest.mark.redis]
__all__ = ["deployed"]  # the fixture, shared with the runner's own tests


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.reset()


def test_the_runner_s_attempt_span_continues_the_trace_in_its_payload(
    deployed: Any, spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    from udop.aws.observability import logger

    aws, _, _ = deployed
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    payload = _payload(uuid.uuid4().hex, "numbers")
    payload["run"].update(traceparent=f"00-{trace_id}-{parent_id}-01", correlation_id="cid-aws-1")
    body, err = _invoke(aws, payload)
    assert err is None, body
    attempt = next(s for s in spans.get_finished_spans() if s.name == "attempt numbers#1")
    assert f"{attempt.context.trace_id:032x}" == trace_id
    assert attempt.parent is not None and f"{attempt.parent.span_id:016x}" == parent_id
    assert logger.get_correlation_id() == "cid-aws-1"
    out = capsys.readouterr().out
    blobs = _emf_blobs(out)
    tasks = [b for b in blobs if "udop_tasks" in b]
    assert tasks and tasks[0]["pipeline"] == "runner-test" and tasks[0]["state"] == "succeeded"
    assert any("udop_attempt_duration_seconds" in b for b in blobs)
    rows = [b["udop_rows_written"] for b in blobs if "udop_rows_written" in b]
    emf = [line for line in out.splitlines() if "_aws" in line]
    assert [float(v[0] if isinstance(v, list) else v) for v in rows] == [10.0], emf


def _emf_blobs(out: str) -> list[dict[str, Any]]:
    """The EMF metric blobs the runner printed. The test process is not a Lambda: other threads of it
    (moto's, a logging handler's) write to the same captured stdout, and one can land between a blob
    and its newline (Powertools prints the JSON, then the line end): each blob is decoded from where it
    starts, whatever follows it on its line."""
    decoder = json.JSONDecoder()
    blobs = []
    for found in re.finditer(r'\{\s*"_aws"', out):
        try:
            blob, _end = decoder.raw_decode(out, found.start())
        except json.JSONDecodeError:
            continue  # a blob cut by another thread's write would be one the assertions then miss
        blobs.append(blob)
    return blobs


def test_without_a_payload_id_the_execution_is_the_correlation_id(deployed: Any) -> None:
    from udop.aws.observability import logger

    aws, _, _ = deployed
    payload = _payload(uuid.uuid4().hex, "numbers")
    body, err = _invoke(aws, payload)
    assert err is None, body
    assert logger.get_correlation_id() == payload["execution"]
