"""What the executors report to metrics and traces, in one place.

Metrics go to the registered sinks (none by default: ``udop run`` keeps no counters; ``udop serve``
registers Prometheus, the task runner Powertools' EMF metrics). Spans are made only when tracing is
on (``udop.observability.tracing``); off, every call here is a list check or a shared null context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from udop.observability import tracing
from udop.observability.context import current

__all__ = ["MetricsSink", "add_sink", "attempt_finished", "attempt_span", "remove_sink", "run_finished",
           "run_span", "task_ended"]

_NULL: AbstractContextManager[None] = contextlib.nullcontext()


class MetricsSink(Protocol):
    def run_finished(self, pipeline: str, state: str) -> None: ...
    def task_finished(self, pipeline: str, task: str, state: str) -> None: ...
    def attempt_finished(self, pipeline: str, task: str, state: str, *, seconds: float,
                         rows_read: int | None, rows_written: int | None, retried: bool) -> None: ...


_sinks: list[MetricsSink] = []


def add_sink(sink: MetricsSink) -> None:
    if sink not in _sinks:
        _sinks.append(sink)


def remove_sink(sink: MetricsSink) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


def run_finished(pipeline: str, state: str) -> None:
    for sink in _sinks:
        sink.run_finished(pipeline, state)


def task_ended(run: Any, task: str, state: str) -> None:
    """A task reached a final state: count it, and end its span."""
    for sink in _sinks:
        sink.task_finished(run.pipeline.name, task, state)
    if tracing.enabled():
        tracing.end_task_span(run, task, state)


def attempt_finished(pipeline: str, task: str, state: str, seconds: float, *, rows_read: int | None = None,
                     rows_written: int | None = None, retried: bool = False) -> None:
    for sink in _sinks:
        sink.attempt_finished(pipeline, task, state, seconds=seconds, rows_read=rows_read,
                              rows_written=rows_written, retried=retried)


def run_span(run: Any) -> AbstractContextManager[Any]:
    if not tracing.enabled():
        return _NULL
    return tracing.run_span(run)


def attempt_span(run: Any, task: str, attempt: int) -> AbstractContextManager[Any]:
    if not tracing.enabled():
        return _note_failure()
    return tracing.attempt_span(run, task, attempt)


@contextmanager
def _note_failure() -> Iterator[None]:
    """The attempt's error ends its own log too, so the log alone tells what happened."""
    try:
        yield
    except BaseException as exc:
        capture = current().capture
        if capture is not None:
            capture.write_line(f"udop: attempt failed: {type(exc).__name__}: {exc}")
        raise
