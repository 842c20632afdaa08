"""Callables of the conformance suite's pipelines (tests/conformance): plain user code, importable by
the LocalExecutor and by the task runner (``UDOP_CODE_DIR``). Calls are counted under ``log_dir``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from udop_aws_test_tasks import _count

from udop.errors import DataQualityError, FatalError
from udop.tasks.contract import CheckResult


def rows(context: Any, inputs: dict[str, Any], *, n: int, log_dir: str) -> pa.Table:
    _count(context, log_dir)
    return pa.table({"id": pa.array(range(1, n + 1), pa.int64())})


def doubled(context: Any, inputs: dict[str, Any], *, source: str, log_dir: str) -> pa.Table:
    _count(context, log_dir)
    table = inputs[source].to_arrow()
    return pa.table({"id": table["id"], "twice": pc.multiply(table["id"], 2)})


def flaky(context: Any, inputs: dict[str, Any], *, fail_times: int, log_dir: str) -> pa.Table:
    """A foreign exception (not udop's) on its first ``fail_times`` calls: retried on every executor."""
    calls = _count(context, log_dir)
    if calls <= fail_times:
        raise ValueError(f"flaky failure number {calls}")
    return pa.table({"calls": [calls]})


def fatal(context: Any, inputs: dict[str, Any], *, log_dir: str) -> None:
    _count(context, log_dir)
    raise FatalError("the input cannot be parsed; another attempt would not help")


def bad_quality(context: Any, inputs: dict[str, Any], *, log_dir: str) -> None:
    _count(context, log_dir)
    checks = (CheckResult(rule="not_null(id)", severity="error", passed=False, failing_rows=2,
                          message="2 rows with a null id"),
              CheckResult(rule="unique(id)", severity="error", passed=True))
    err = DataQualityError("1 of 2 data-quality rules failed: not_null(id)")
    err.checks = checks  # type: ignore[attr-defined]  # as udop_transforms' validate task does
    raise err


def slow(context: Any, inputs: dict[str, Any], *, seconds: float, log_dir: str) -> dict[str, bool]:
    """Runs ``seconds`` unless told to stop (its timeout is shorter)."""
    _count(context, log_dir)
    until = time.monotonic() + seconds
    while time.monotonic() < until and not context.cancelled:
        time.sleep(0.02)
    return {"stopped": bool(context.cancelled)}


def waits(context: Any, inputs: dict[str, Any], *, flag: str, log_dir: str, seconds: float = 30) -> pa.Table:
    """Works while the fault flag is set, until told to stop: the run is cancelled meanwhile."""
    _count(context, log_dir)
    until = time.monotonic() + seconds
    while time.monotonic() < until and Path(flag).exists() and not context.cancelled:
        time.sleep(0.02)
    return pa.table({"id": pa.array([1], pa.int64())})
