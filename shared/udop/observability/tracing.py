"""OpenTelemetry spans run -> task -> attempt (-> connector calls, DuckDB queries), exported over
OTLP/HTTP when ``UDOP_OTEL_ENDPOINT`` or the standard ``OTEL_EXPORTER_OTLP_*`` variables are set.

Off by default and free when off: ``enabled()`` is a cached boolean, and no OpenTelemetry module is
imported unless tracing is on (the ``udop[otel]`` extra). ``use_provider`` installs a provider
directly (tests: the SDK's in-memory exporter).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from udop.settings import ProcessSettings, load_settings

__all__ = ["attempt_span", "enabled", "end_task_span", "extract", "inject", "outgoing_headers", "remote_span",
           "reset", "run_span", "span", "use_provider"]

_state: dict[str, Any] = {}  # "on": bool once decided, "tracer": the tracer
_lock = threading.Lock()
_task_spans: dict[tuple[str, str], Any] = {}  # (run id, task id) -> open span


def _configured() -> bool:
    process = load_settings(ProcessSettings)
    return bool(process.otel_endpoint or process.otlp_endpoint)


def enabled() -> bool:
    on = _state.get("on")
    if on is None:
        with _lock:
            if "on" not in _state:
                _state["on"] = _configured() and _setup_from_environment()
        on = _state["on"]
    return bool(on)


def _setup_from_environment() -> bool:
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        import logging

        logging.getLogger("udop.observability").warning(
            "tracing is configured but OpenTelemetry is not installed (pip install 'udop[otel]'); no spans")
        return False
    process = load_settings(ProcessSettings)
    endpoint = process.otel_endpoint
    exporter = (OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces") if endpoint
                else OTLPSpanExporter())
    service = process.otel_service_name or "udop"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _state["tracer"] = provider.get_tracer("udop")
    return True


def use_provider(provider: Any) -> None:
    """Trace into ``provider`` (an SDK TracerProvider) from now on, whatever the environment says."""
    with _lock:
        _state["on"] = True
        _state["tracer"] = provider.get_tracer("udop")


def reset() -> None:
    """Forget the decision (tests; a process that changed its environment)."""
    with _lock:
        _state.clear()
        _task_spans.clear()


def _tracer() -> Any:
    return _state["tracer"]


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """A child span of the current one (or a no-op when tracing is off): connector calls, queries."""
    if not enabled():
        yield None
        return
    with _tracer().start_as_current_span(name, attributes=dict(attributes or {})) as current:
        yield current


@contextmanager
def remote_span(name: str, traceparent: str | None, attributes: Mapping[str, Any]) -> Iterator[Any]:
    """A span whose parent is a W3C ``traceparent`` from another process (the task runner's attempt
    below the run that started the execution); a no-op when tracing is off."""
    if not enabled():
        yield None
        return
    parent = extract(traceparent)
    with _tracer().start_as_current_span(name, context=parent, attributes=dict(attributes)) as current:
        yield current


@contextmanager
def run_span(run: Any) -> Iterator[Any]:
    from opentelemetry import context as otel_context

    parent = extract(getattr(run, "traceparent", None))
    with _tracer().start_as_current_span(
        f"run {run.pipeline.name}", context=parent,
        attributes={"udop.run_id": run.run_id, "udop.pipeline": run.pipeline.name},
    ) as current:
        run.trace_context = otel_context.get_current()
        try:
            yield current
        finally:
            for key in [k for k in _task_spans if k[0] == run.run_id]:
                _task_spans.pop(key).end()
            if getattr(run, "final_state", None):
                current.set_attribute("udop.state", run.final_state)


def _task_span(run: Any, task: str) -> Any:
    key = (run.run_id, task)
    found = _task_spans.get(key)
    if found is None:
        found = _tracer().start_span(f"task {task}", context=getattr(run, "trace_context", None),
                                     attributes={"udop.run_id": run.run_id, "udop.task_id": task})
        _task_spans[key] = found
    return found


def end_task_span(run: Any, task: str, state: str) -> None:
    found = _task_spans.pop((run.run_id, task), None)
    if found is not None:
        found.set_attribute("udop.state", state)
        found.end()


@contextmanager
def attempt_span(run: Any, task: str, attempt: int) -> Iterator[Any]:
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    with _lock:
        parent = _task_span(run, task)
    with _tracer().start_as_current_span(
        f"attempt {task}#{attempt}", context=trace.set_span_in_context(parent),
        attributes={"udop.run_id": run.run_id, "udop.task_id": task, "udop.attempt": attempt},
    ) as current:
        try:
            yield current
        except BaseException as exc:
            current.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            from udop.observability.context import current as log_context

            capture = log_context().capture
            if capture is not None:
                capture.write_line(f"udop: attempt failed: {type(exc).__name__}: {exc}")
            raise


def outgoing_headers() -> dict[str, str]:
    """Headers for an outgoing HTTP call: ``X-Correlation-Id`` and, when tracing, ``traceparent``."""
    from udop.observability.context import correlation_id

    headers: dict[str, str] = {}
    cid = correlation_id()
    if cid:
        headers["X-Correlation-Id"] = cid
    if enabled():
        inject(headers)
    return headers


def inject(carrier: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add the current span's W3C ``traceparent`` to ``carrier`` (HTTP headers, a payload)."""
    if enabled():
        from opentelemetry.propagate import inject as otel_inject

        otel_inject(carrier)
    return carrier


def extract(traceparent: str | None) -> Any:
    """The context a W3C ``traceparent`` names (None when absent or tracing is off)."""
    if not traceparent or not enabled():
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})
