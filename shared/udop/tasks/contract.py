"""The one task contract both executors call: ``run_task(context, task, inputs) -> TaskResult``.

Datasets move by reference: a task writes Parquet under
``<data-root>/runs/<pipeline>/<run_id>/<task_id>/`` and returns a ``Manifest``; executors pass
manifests (and small JSON values from ``python`` tasks), never rows.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from udop.errors import FatalError, PayloadTooLarge
from udop.sandbox import Policy, current, noting_secrets
from udop.tasks.datasets import Manifest

__all__ = ["MAX_VALUE_BYTES", "SNAPSHOT_FORMAT", "SOURCE_FILES", "VIEW_FORMAT", "VIEW_NAME", "CheckResult",
           "Manifest", "SourceFiles", "TaskContext", "TaskResult", "dataset_uri", "json_value"]

#: a python task's return value travels by value only up to this size (Step Functions carries
#: 256 KiB per state; a task with many parents must stay far below that)
MAX_VALUE_BYTES = 8 * 1024


#: ``Manifest.format`` of a source read in place: ``uri`` is a folder holding only ``_snapshot.json``
#: (the source files with their size and mtime or ETag, and the schema); ``rows``, ``bytes``,
#: ``files`` and ``schema_fingerprint`` describe the source files themselves
SNAPSHOT_FORMAT = "snapshot"
#: ``Manifest.format`` of a transform fused into its file load: ``uri`` is a folder holding only
#: ``VIEW_NAME`` (the task and the manifests of the inputs its query reads), ``rows`` what the load wrote
VIEW_FORMAT, VIEW_NAME = "view", "_view.json"


@dataclass
class SourceFiles:
    """Remote source files an attempt fetched to local disk (under its data root), by snapshot: given
    as ``services[SOURCE_FILES]`` by an executor whose attempt's data root is removed with it (the task
    runner's ``/tmp`` folder), so that a source read twice in one attempt is fetched once."""

    fetched: dict[str, list[str]] = field(default_factory=dict)


SOURCE_FILES = "source_files"


_PLAIN = (str, int, float, bool, type(None))


def json_value(value: Any) -> Any:
    """``value`` as plain JSON types, or a one-line ``FatalError`` naming what cannot be stored.

    What a user's function naturally returns is converted rather than refused: numpy and pandas
    scalars (``Series.sum()`` gives ``numpy.int64``), dates, datetimes and times (ISO text),
    decimals (text, so no digit is lost), tuples and sets (lists). NaN and infinities become null,
    as JSON has no such numbers.
    """
    if type(value) in _PLAIN:
        return None if type(value) is float and not math.isfinite(value) else value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str | int | float | bool) and k is not None:
                raise FatalError(f"a dict key of type {_type_name(k)} cannot be stored as JSON")
            out[k if isinstance(k, str) else json.dumps(k)] = json_value(v)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [json_value(v) for v in value]
    if isinstance(value, str | bool):  # subclasses (e.g. StrEnum members)
        return str(value) if isinstance(value, str) else bool(value)
    if isinstance(value, int | float):
        return json_value(int(value) if isinstance(value, int) else float(value))
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value) if value.is_finite() else None
    module = type(value).__module__.split(".")[0]
    if module in ("numpy", "pandas"):
        if module == "pandas" and type(value).__name__ in ("NaTType", "NAType"):
            return None
        if hasattr(value, "isoformat"):  # pandas.Timestamp
            return value.isoformat()
        if type(value).__name__ == "ndarray":
            return json_value(value.tolist())
        item = getattr(value, "item", None)
        if callable(item):  # a numpy scalar: int64, float32, bool_, datetime64, str_
            plain = item()
            if type(plain) is not type(value):
                return json_value(plain)
    raise FatalError(f"a value of type {_type_name(value)} cannot be stored as JSON")


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def dataset_uri(data_root: str, pipeline: str, run_id: str, task_id: str) -> str:
    """The deterministic location of a task's output, local path or ``s3://`` URI."""
    return f"{data_root.rstrip('/')}/runs/{pipeline}/{run_id}/{task_id}/"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one data-quality rule."""

    rule: str
    severity: str  # "error" | "warn"
    passed: bool
    failing_rows: int = 0
    sample: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "passed": self.passed,
            "failing_rows": self.failing_rows,
            "sample": self.sample,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckResult:
        return cls(
            rule=data["rule"],
            severity=data["severity"],
            passed=data["passed"],
            failing_rows=data.get("failing_rows", 0),
            sample=list(data.get("sample", [])),
            message=data.get("message", ""),
        )


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What a task hands back: an output dataset and/or a small JSON value, plus what it checked."""

    output: Manifest | None = None
    value: Any = None
    inputs: tuple[str, ...] = ()  # lineage: the URIs (or task ids) read
    checks: tuple[CheckResult, ...] = ()
    metrics: Mapping[str, Any] = field(default_factory=dict)
    #: lineage: datasets written outside the run (a load's table, queue, key space), named as
    #: ``udop.lineage`` names them; ``output`` stays the run's own dataset
    written: tuple[Manifest, ...] = ()
    #: column lineage: output column -> [[input dataset URI, input column], ...]
    columns: Mapping[str, list[list[str]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form; what the task runner returns to Step Functions and the store keeps.

        Raises ``FatalError`` when the value or metrics hold something JSON cannot carry (see
        ``json_value``) and ``PayloadTooLarge`` when the value is over ``MAX_VALUE_BYTES``.
        """
        try:
            value = json_value(self.value)
            metrics = json_value(dict(self.metrics))
        except FatalError as exc:
            raise FatalError(f"the task's result cannot be stored: {exc}; return JSON values "
                             "(numbers, text, lists, dicts), a table or None") from None
        body = {
            "output": self.output.to_dict() if self.output else None,
            "value": value,
            "inputs": list(self.inputs),
            "checks": [c.to_dict() for c in self.checks],
            "metrics": metrics,
        }
        if self.written:  # absent otherwise: results stored before lineage of loads look the same
            body["written"] = [m.to_dict() for m in self.written]
        if self.columns:
            body["column_lineage"] = {k: [list(s) for s in v] for k, v in self.columns.items()}
        size = len(json.dumps(value))
        if size > MAX_VALUE_BYTES:
            raise PayloadTooLarge(
                f"the task's return value is {size} bytes as JSON, over the {MAX_VALUE_BYTES}-byte limit "
                "for values passed between tasks; return a table (written as Parquet) instead"
            )
        return body

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskResult:
        out = data.get("output")
        return cls(
            output=Manifest.from_dict(out) if out else None,
            value=data.get("value"),
            inputs=tuple(data.get("inputs", ())),
            checks=tuple(CheckResult.from_dict(c) for c in data.get("checks", ())),
            metrics=dict(data.get("metrics", {})),
            written=tuple(Manifest.from_dict(m) for m in data.get("written", ())),
            columns=dict(data.get("column_lineage", {})),
        )


@dataclass
class TaskContext:
    """What a running task may know and use. Built by the executor for each attempt."""

    pipeline: Any  # udop.spec.models.Pipeline (Any: keeps this module import-light)
    task_id: str
    run_id: str
    attempt: int
    logical_date: datetime
    params: Mapping[str, Any]
    data_root: str
    #: set when the attempt timed out or the run was cancelled; long tasks should poll it
    cancel_event: threading.Event = field(default_factory=threading.Event)
    #: called with a zero-argument function to run when the attempt is cancelled (e.g. DuckDB interrupt)
    on_cancel: Callable[[Callable[[], None]], None] | None = None
    #: settings and services (state store, connection resolver) the executor makes available
    services: Mapping[str, Any] = field(default_factory=dict)
    #: set for one item of a ``foreach`` task: its output goes below the task's folder
    output_override: str | None = None
    #: what the task may touch: the executor's (trusted for ``udop run``, server for the API/runner)
    policy: Policy = field(default_factory=current)

    @property
    def pipeline_name(self) -> str:
        return str(self.pipeline.metadata.name)

    @property
    def task(self) -> Any:
        return self.pipeline.task(self.task_id)

    @property
    def output_uri(self) -> str:
        if self.output_override is not None:
            return self.output_override
        return dataset_uri(self.data_root, self.pipeline_name, self.run_id, self.task_id)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def render(self, value: Any) -> Any:
        """Replace ``${params.x}``, ``${run.id}``, ``${run.logical_date}``, ``${env.X}`` in strings,
        recursively through lists and dicts. Not for SQL text: SQL takes bound parameters."""
        from udop.spec.params import render

        return render(value, self.template_scope())

    def template_scope(self) -> dict[str, Mapping[str, Any]]:
        return {
            "params": self.params,
            "run": {
                "id": self.run_id,
                "logical_date": self.logical_date.date().isoformat(),
                "logical_ts": self.logical_date.isoformat(),
                "attempt": self.attempt,
                "pipeline": self.pipeline_name,
                "task": self.task_id,
            },
            # on a server: the allowlisted variables only; secret-named values read are masked after
            "env": noting_secrets(self.policy.environ()),
        }
