"""OpenTelemetry: the span tree run -> task -> attempt (-> HTTP call), the W3C traceparent an HTTP
server receives, and no OpenTelemetry import at all when tracing is off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from udop.executor.local import LocalExecutor
from udop.observability import tracing
from udop.observability.context import bound
from udop.spec.loader import load_pipeline


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.reset()


def _run(project: Any, store: Any, path: Path) -> Any:
    executor = LocalExecutor(store, data_root=str(project.root / "data"),
                             services={"base_dir": str(project.root)})
    return executor.run(load_pipeline(path, import_callables=True))


def _by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in finished}


def test_a_run_is_one_trace_of_run_task_and_attempt_spans(
    project: Any, store: Any, spans: InMemorySpanExporter
) -> None:
    retry = {"max_attempts": 2, "base_delay": "10ms", "max_delay": "10ms"}
    path = project.pipeline([
        project.task("first", "noop"),
        project.task("flaky", "fail_until", depends_on=["first"], retry=retry,
                     args={"name": "flaky", "succeed_on": 2}),
    ])
    record = _run(project, store, path)
    got = _by_name(spans.get_finished_spans())
    run = got["run demo"]
    assert run.parent is None and run.attributes is not None and run.attributes["udop.run_id"] == record.id
    trace_id = run.context.trace_id
    for task in ("first", "flaky"):
        span = got[f"task {task}"]
        assert span.parent is not None and span.parent.span_id == run.context.span_id
        assert span.attributes is not None and span.attributes["udop.state"] == "succeeded"
    attempts = {n: s for n, s in got.items() if n.startswith("attempt flaky")}
    assert set(attempts) == {"attempt flaky#1", "attempt flaky#2"}
    for attempt in attempts.values():
        assert attempt.parent is not None and attempt.parent.span_id == got["task flaky"].context.span_id
    assert not attempts["attempt flaky#1"].status.is_ok and attempts["attempt flaky#2"].status.is_ok
    assert {s.context.trace_id for s in spans.get_finished_spans()} == {trace_id}


class _Echo(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        _Echo.seen.append({k.lower(): v for k, v in self.headers.items()})
        body = json.dumps([{"id": 1}]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def echo() -> Iterator[str]:
    _Echo.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/items"
    server.shutdown()
    server.server_close()
    thread.join()


def test_an_http_call_carries_the_traceparent_and_correlation_id_of_its_span(
    spans: InMemorySpanExporter, echo: str
) -> None:
    from udop.connectors import get_connector

    with bound(correlation_id="cid-77"), tracing.span("outer") as outer, \
            get_connector({"connector": "http", "url": echo}) as c:
        rows = [r for b in c.read() for r in b.to_pylist()]
    assert rows == [{"id": 1}]
    headers = _Echo.seen[0]
    assert headers["x-correlation-id"] == "cid-77"
    version, trace_id, parent_id, _flags = headers["traceparent"].split("-")
    assert version == "00" and int(trace_id, 16) == outer.get_span_context().trace_id
    http_span = _by_name(spans.get_finished_spans())["HTTP GET"]
    assert int(parent_id, 16) == http_span.context.span_id  # the server's span hangs below our HTTP span


def test_tracing_off_imports_no_opentelemetry(project: Any, tmp_path: Path) -> None:
    path = project.pipeline([project.task("a", "noop"), project.task("b", "noop", depends_on=["a"])])
    script = f"""
import sys
sys.path.insert(0, {str(project.root)!r})
from udop.executor.local import LocalExecutor
from udop.spec.loader import load_pipeline
from udop.store import open_store
from udop.observability.logs import configure
configure("json")
store = open_store("sqlite:///{tmp_path / 'off.db'}")
record = LocalExecutor(store, data_root={str(tmp_path / 'data')!r}).run(load_pipeline({str(path)!r}))
assert record.state.value == "succeeded", record
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "UDOP_OTEL"))}
    out = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
