"""THE table: every scenario with the run record each executor must write (see ``executors.view``).

A scenario is a pipeline (``{log_dir}`` and ``{flag}`` filled in by the test), optionally a fault
flag set before the run and cleared before a resume, and the expected record. A difference between
executors that cannot be removed is written in ``differences`` (executor -> the fields it changes),
with its reason in docs/executors.md; today there is none in the records themselves (the one timing
difference, Step Functions' 1 s minimum retry interval, is asserted in test_differences.py).
Retry delays are tiny locally (50 ms); on Step Functions they round up to 1 s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from udop.tasks.datasets import schema_fingerprint

ID = schema_fingerprint(pa.schema([("id", pa.int64())]))
TWICE = schema_fingerprint(pa.schema([("id", pa.int64()), ("twice", pa.int64())]))
#: a Parquet target's columns: DuckDB's writer marks those it found free of nulls as required
TWICE_REQUIRED = schema_fingerprint(pa.schema([pa.field("id", pa.int64(), nullable=False),
                                               pa.field("twice", pa.int64(), nullable=False)]))
CALLS = schema_fingerprint(pa.schema([("calls", pa.int64())]))
FAST = "retry: {max_attempts: 3, base_delay: 50ms, backoff_rate: 1.0, jitter: none}"
OK = ("succeeded", None)


@dataclass(frozen=True)
class Scenario:
    name: str
    tasks: str  # the YAML list under spec.tasks
    expected: dict[str, Any]
    defaults: str = FAST
    flag: bool = False  # a fault flag set for the run (tasks read it as {flag})
    resumed: dict[str, Any] | None = None  # the record after the flag is cleared and the run resumed
    cancel_at: str | None = None  # cancel the run (the executor's own way) once this task has started
    differences: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: executor -> why this scenario does not apply to it (a feature it does not have, documented)
    not_on: dict[str, str] = field(default_factory=dict)

    def yaml(self, log_dir: str, flag: str) -> str:
        tasks = self.tasks.replace("{log_dir}", log_dir).replace("{flag}", flag)
        return (f"apiVersion: udop/v1\nkind: Pipeline\nmetadata: {{name: {self.name.replace('_', '-')}}}\n"
                f"spec:\n  defaults: {{{self.defaults}}}\n  tasks:\n{tasks}")


def task(state: str, attempts: list[tuple[str, str | None]], rows: int | None = None, schema: str | None = None,
         lineage: list[str] | None = None) -> dict[str, Any]:
    return {"state": state, "attempts": attempts, "rows": rows, "schema": schema, "lineage": lineage or []}


def _t(line: str) -> str:
    return f"    - {line}\n"


ROWS = _t('{id: a, type: python, callable: "udop_conformance_tasks:rows", args: {n: 5, log_dir: "{log_dir}"}}')
DOUBLED = _t('{id: b, type: python, callable: "udop_conformance_tasks:doubled", depends_on: [a], '
             'args: {source: a, log_dir: "{log_dir}"}}')
A_OK = task("succeeded", [OK], 5, ID)
B_OK = task("succeeded", [OK], 5, TWICE, ["dataset:a"])
FAILED_FATAL = ("failed", "udop.FatalError")
CANCELLED = ("abandoned", "Cancelled")

SCENARIOS = [
    Scenario("success", ROWS + DOUBLED,
             {"state": "succeeded", "tasks": {"a": A_OK, "b": B_OK}, "checks": []}),
    Scenario("flaky_value_error",
             _t('{id: f, type: python, callable: "udop_conformance_tasks:flaky", '
                'args: {fail_times: 2, log_dir: "{log_dir}"}}'),
             {"state": "succeeded", "checks": [], "tasks": {"f": task(
                 "succeeded", [("failed", "ValueError"), ("failed", "ValueError"), OK], 1, CALLS)}}),
    Scenario("fatal_error",
             ROWS + _t('{id: x, type: python, callable: "udop_conformance_tasks:fatal", depends_on: [a], '
                       'args: {log_dir: "{log_dir}"}}'),
             {"state": "failed", "checks": [], "tasks": {"a": A_OK, "x": task("failed", [FAILED_FATAL])}}),
    Scenario("timeout",
             _t('{id: s, type: python, callable: "udop_conformance_tasks:slow", timeout: 1s, '
                'retry: {max_attempts: 2}, args: {seconds: 60, log_dir: "{log_dir}"}}'),
             {"state": "failed", "checks": [], "tasks": {"s": task(
                 "failed", [("timed_out", "udop.TaskTimeout"), ("timed_out", "udop.TaskTimeout")])}}),
    Scenario("data_quality_error",
             _t('{id: q, type: python, callable: "udop_conformance_tasks:bad_quality", '
                'args: {log_dir: "{log_dir}"}}'),
             {"state": "failed", "tasks": {"q": task("failed", [("failed", "udop.DataQualityError")])},
              "checks": [("q", "not_null(id)", False, 2), ("q", "unique(id)", True, 0)]}),
    Scenario("upstream_failed_and_independent_branch",
             ROWS + DOUBLED
             + _t('{id: x, type: python, callable: "udop_conformance_tasks:fatal", args: {log_dir: "{log_dir}"}}')
             + _t('{id: after_x, type: python, callable: "udop_conformance_tasks:doubled", depends_on: [x], '
                  'args: {source: x, log_dir: "{log_dir}"}}'),
             {"state": "failed", "checks": [], "tasks": {
                 "a": A_OK, "b": B_OK, "x": task("failed", [FAILED_FATAL]),
                 "after_x": task("upstream_failed", [])}}),
    Scenario("task_retry_overrides_defaults",
             # defaults allow one attempt and set the delay; the task's max_attempts alone is merged
             # over them; retry_on narrows what is retried to the names listed
             _t('{id: f, type: python, callable: "udop_conformance_tasks:flaky", retry: {max_attempts: 3}, '
                'args: {fail_times: 2, log_dir: "{log_dir}"}}')
             + _t('{id: g, type: python, callable: "udop_conformance_tasks:flaky", '
                  'retry: {max_attempts: 3, retry_on: [udop.ConnectionFailed]}, '
                  'args: {fail_times: 1, log_dir: "{log_dir}"}}'),
             {"state": "failed", "checks": [], "tasks": {
                 "f": task("succeeded", [("failed", "ValueError"), ("failed", "ValueError"), OK], 1, CALLS),
                 "g": task("failed", [("failed", "ValueError")])}},
             defaults="retry: {max_attempts: 1, base_delay: 50ms, backoff_rate: 1.0, jitter: none}"),
    Scenario("resume_after_failure",
             ROWS + _t('{id: w, type: python, callable: "udop_aws_test_tasks:fails_while", depends_on: [a], '
                       'args: {flag: "{flag}", log_dir: "{log_dir}"}}'),
             {"state": "failed", "checks": [], "tasks": {"a": A_OK, "w": task("failed", [FAILED_FATAL])}},
             flag=True,
             resumed={"state": "succeeded", "checks": [], "tasks": {
                 "a": A_OK, "w": task("succeeded", [FAILED_FATAL, OK], 3, ID, ["dataset:a"])}}),
    Scenario("cancel",
             # LocalExecutor.request_stop / Step Functions StopExecution while w works; resumed after
             ROWS + _t('{id: w, type: python, callable: "udop_conformance_tasks:waits", depends_on: [a], '
                       'args: {flag: "{flag}", log_dir: "{log_dir}"}}')
             + _t('{id: after, type: python, callable: "udop_conformance_tasks:doubled", depends_on: [w], '
                  'args: {source: w, log_dir: "{log_dir}"}}'),
             {"state": "cancelled", "checks": [], "tasks": {
                 "a": A_OK, "w": task("cancelled", [CANCELLED]), "after": task("cancelled", [])}},
             flag=True, cancel_at="w",
             resumed={"state": "succeeded", "checks": [], "tasks": {
                 "a": A_OK, "w": task("succeeded", [CANCELLED, OK], 1, ID, ["dataset:a"]),
                 "after": task("succeeded", [OK], 1, TWICE, ["dataset:w"])}}),
    Scenario("fused_transform_and_file_load",
             # the transform runs inside its load's query (locally and on Celery: one attempt of the
             # transform computes both; on Step Functions: one Task state); each task keeps its own record
             ROWS + _t('{id: t, type: transform, depends_on: [a], steps: [{derive: {twice: "id * 2"}}]}')
             + _t('{id: l, type: load, depends_on: [t], target: {connector: parquet, '
                  'path: "{log_dir}/out.parquet"}}'),
             {"state": "succeeded", "checks": [], "tasks": {
                 "a": A_OK, "t": task("succeeded", [OK], 5, TWICE, ["dataset:a"]),
                 "l": task("succeeded", [OK], 5, TWICE_REQUIRED, ["dataset:t"])}}),
    Scenario("foreach_with_one_failing_item",
             _t('{id: parts, type: python, callable: "udop_foreach_tasks:parts"}')
             + _t('{id: each, type: python, callable: "udop_foreach_tasks:per_item", depends_on: [parts], '
                  'foreach: {input: parts, over: partitions}, args: {log_dir: "{log_dir}", fail_key: b}}')
             + _t('{id: after, type: python, callable: "udop_conformance_tasks:doubled", depends_on: [each], '
                  'args: {source: each, log_dir: "{log_dir}"}}'),
             {"state": "failed", "checks": [], "tasks": {
                 "parts": task("succeeded", [OK], 60, None),
                 "each": task("failed", [FAILED_FATAL]),
                 "after": task("upstream_failed", [])}}),
]
