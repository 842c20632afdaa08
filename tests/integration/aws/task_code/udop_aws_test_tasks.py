"""Callables of the test pipelines' ``python`` tasks. Every call appends a line to
``<log_dir>/<task>.calls`` so tests can count how often a task really ran (on the same machine the
in-process Lambda and the test share a file system)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from udop.errors import FatalError, RetryableError


def _count(context: Any, log_dir: str) -> int:
    log = Path(log_dir) / f"{context.task_id}.calls"
    with log.open("a") as f:
        f.write(f"{context.run_id} attempt={context.attempt}\n")
    return len(log.read_text().splitlines())


def numbers(context: Any, inputs: dict[str, Any], *, n: int, log_dir: str) -> pa.Table:
    _count(context, log_dir)
    return pa.table({"id": list(range(1, n + 1)), "grp": [i % 3 for i in range(1, n + 1)]})


def scaled(context: Any, inputs: dict[str, Any], *, source: str, factor: int, log_dir: str) -> pa.Table:
    _count(context, log_dir)
    table = inputs[source].to_arrow()
    return table.append_column("value", pc.multiply(table["id"], factor))


def joined(context: Any, inputs: dict[str, Any], *, log_dir: str) -> pa.Table:
    """Sum of both scaled inputs per group, sorted by group."""
    _count(context, log_dir)
    a, b = (inputs[k].to_arrow() for k in sorted(inputs))
    both = pa.concat_tables([a.select(["grp", "value"]), b.select(["grp", "value"])])
    out = both.group_by("grp").aggregate([("value", "sum")]).sort_by("grp")
    return out.rename_columns(["grp", "total"])


def flaky(context: Any, inputs: dict[str, Any], *, fail_times: int, log_dir: str) -> dict[str, int]:
    """Fails with a retryable error on its first ``fail_times`` calls, then succeeds."""
    calls = _count(context, log_dir)
    if calls <= fail_times:
        raise RetryableError(f"transient failure number {calls}")
    return {"calls": calls}


def fails_while(context: Any, inputs: dict[str, Any], *, flag: str, log_dir: str) -> pa.Table:
    """Fails (not retryable) while the file ``flag`` exists: a fault the test removes later."""
    _count(context, log_dir)
    if Path(flag).exists():
        raise FatalError(f"bad input: fault flag {flag} is set")
    upstream = next(iter(inputs.values())).to_arrow()
    return upstream.filter(pc.greater(upstream["id"], 2))
