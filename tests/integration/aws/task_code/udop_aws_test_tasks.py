"""Callables of the test pipelines' ``python`` tasks.

Every call is logged under ``log_dir`` — a folder (moto: the in-process Lambda shares this machine's
files) or an ``s3://`` prefix (LocalStack: the Lambda runs in a container) — so that tests can count
how often a task really ran. Fault flags work the same way.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from udop.errors import FatalError, RetryableError


def _s3() -> Any:
    import boto3

    return boto3.client("s3")


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def count_calls(log_dir: str, task: str, run_id: str) -> int:
    if log_dir.startswith("s3://"):
        bucket, key = _split(f"{log_dir.rstrip('/')}/{task}/{run_id}/")
        return int(_s3().list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0))
    log = Path(log_dir) / f"{task}.calls"
    return log.read_text().count(run_id) if log.exists() else 0


def set_flag(flag: str, on: bool) -> None:
    if flag.startswith("s3://"):
        bucket, key = _split(flag)
        if on:
            _s3().put_object(Bucket=bucket, Key=key, Body=b"set")
        else:
            _s3().delete_object(Bucket=bucket, Key=key)
    elif on:
        Path(flag).write_text("set")
    else:
        Path(flag).unlink(missing_ok=True)


def _flag_set(flag: str) -> bool:
    if flag.startswith("s3://"):
        bucket, key = _split(flag)
        return int(_s3().list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0)) > 0
    return Path(flag).exists()


def _count(context: Any, log_dir: str) -> int:
    """Log this call; returns how many calls of this task this run has made so far."""
    if log_dir.startswith("s3://"):
        bucket, key = _split(f"{log_dir.rstrip('/')}/{context.task_id}/{context.run_id}/{uuid.uuid4().hex}")
        _s3().put_object(Bucket=bucket, Key=key, Body=f"attempt={context.attempt}".encode())
    else:
        with (Path(log_dir) / f"{context.task_id}.calls").open("a") as f:
            f.write(f"{context.run_id} attempt={context.attempt}\n")
    return count_calls(log_dir, context.task_id, context.run_id)


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
    if _flag_set(flag):
        raise FatalError(f"bad input: fault flag {flag} is set")
    upstream = next(iter(inputs.values())).to_arrow()
    return upstream.filter(pc.greater(upstream["id"], 2))


def sleepy(context: Any, inputs: dict[str, Any], *, log_dir: str) -> dict[str, bool]:
    """Runs until it is cancelled (as a long task polling ``cancel_event`` does), at most 30 s."""
    _count(context, log_dir)
    stopped = context.cancel_event.wait(30)
    return {"stopped": stopped}


def held(context: Any, inputs: dict[str, Any], *, flag: str, log_dir: str) -> dict[str, bool]:
    """Waits (at most 60 s) while the flag is set: keeps a branch busy until the test lets it go."""
    import time

    _count(context, log_dir)
    deadline = time.monotonic() + 60
    while _flag_set(flag) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"released": not _flag_set(flag)}


def chatty(context: Any, inputs: dict[str, Any], *, message: str, fail_times: int = 0,
           log_dir: str) -> dict[str, int]:
    """Logs through `logging` and prints (observability tests); fails its first ``fail_times`` calls."""
    import logging

    calls = _count(context, log_dir)
    logging.getLogger("user.code").warning("%s from %s call %d", message, context.task_id, calls)
    print(f"printed {message} call {calls}")
    if calls <= fail_times:
        raise RetryableError(f"chatty failure number {calls}")
    return {"calls": calls}
