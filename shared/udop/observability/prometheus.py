"""Prometheus metrics of a server process (``GET /metrics`` on ``udop serve``).

One registry per process, fed by ``udop.observability.hooks``; the task runner on Lambda emits the
same names through Powertools Metrics (EMF) instead (``udop.aws.observability``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from udop.observability import hooks

__all__ = ["CONTENT_TYPE_LATEST", "PrometheusSink", "render", "sink"]

#: attempt durations from a quick SQL step to a long load
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class PrometheusSink:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter("udop_runs", "Runs ended, by pipeline and final state", ["pipeline", "state"],
                            registry=r)
        self.tasks = Counter("udop_tasks", "Tasks ended, by pipeline and final state", ["pipeline", "state"],
                             registry=r)
        self.attempts = Histogram("udop_attempt_duration_seconds", "Duration of task attempts",
                                  ["pipeline", "task", "state"], buckets=_BUCKETS, registry=r)
        self.rows_read = Counter("udop_rows_read", "Rows read by successful attempts (from upstream tasks)",
                                 ["pipeline", "task"], registry=r)
        self.rows_written = Counter("udop_rows_written", "Rows written by successful attempts",
                                    ["pipeline", "task"], registry=r)
        self.retries = Counter("udop_retries", "Attempts that failed and were retried", ["pipeline", "task"],
                               registry=r)
        self.backlog = Gauge("udop_runs_queued", "Runs accepted by this server and waiting for a slot",
                             registry=r)

    def run_finished(self, pipeline: str, state: str) -> None:
        self.runs.labels(pipeline, state).inc()

    def task_finished(self, pipeline: str, task: str, state: str) -> None:
        self.tasks.labels(pipeline, state).inc()

    def attempt_finished(self, pipeline: str, task: str, state: str, *, seconds: float,
                         rows_read: int | None, rows_written: int | None, retried: bool) -> None:
        self.attempts.labels(pipeline, task, state).observe(seconds)
        if rows_read:
            self.rows_read.labels(pipeline, task).inc(rows_read)
        if rows_written:
            self.rows_written.labels(pipeline, task).inc(rows_written)
        if retried:
            self.retries.labels(pipeline, task).inc()

    def watch_backlog(self, count: Callable[[], int]) -> None:
        """Read the queue length at scrape time (nothing to keep in step while runs come and go)."""
        self.backlog.set_function(lambda: float(count()))


_sink: list[PrometheusSink] = []
_lock = threading.Lock()


def sink() -> PrometheusSink:
    """The process's sink, registered with the executor hooks on first use."""
    with _lock:
        if not _sink:
            _sink.append(PrometheusSink())
            hooks.add_sink(_sink[0])
        return _sink[0]


def render() -> bytes:
    return generate_latest(sink().registry)
