"""Task functions the core tests run. Copied into each test's folder under a unique module name.

They coordinate with the test through files in their own folder (counters, flags), so they behave
the same in a worker thread and in a `udop run` subprocess.
"""

import os
import threading
import time
from pathlib import Path

import pyarrow as pa

from udop.errors import FatalError

HERE = Path(__file__).parent
_barriers: dict[str, threading.Barrier] = {}
_lock = threading.Lock()


def _count(name: str) -> int:
    """Append to a counter file and return how many times this was called (this one included)."""
    with _lock:
        path = HERE / f"{name}.count"
        with path.open("a") as fh:
            fh.write("x")
        return len(path.read_text())


def noop(context, inputs, **args):
    return None


def record(context, inputs, name=None, **args):
    _count(name or context.task_id)
    return {"task": context.task_id, "inputs": sorted(inputs), "args": args}


def echo_args(context, inputs, **args):
    return args


def thread_uses(context, inputs, **args):
    """How many attempts the thread running this one has run (this one included)."""
    thread = threading.current_thread()
    thread.udop_test_uses = getattr(thread, "udop_test_uses", 0) + 1
    return {"uses": thread.udop_test_uses}


def numbers(context, inputs, n=10):
    _count(context.task_id)
    return pa.table({"n": pa.array(range(n), pa.int64())})


def double(context, inputs, source="numbers"):
    _count(context.task_id)
    table = inputs[source].to_arrow()
    return pa.table({"n": pa.compute.multiply(table["n"], 2)})


def fail_until(context, inputs, name, succeed_on):
    """Fail with a retryable error until called the `succeed_on`-th time."""
    calls = _count(name)
    if calls < succeed_on:
        raise ConnectionError(f"transient failure {calls}")
    return {"calls": calls}


def fail_fatal(context, inputs, **args):
    _count(context.task_id)
    raise FatalError("bad data: column 'x' missing")


def fail_unless_flag(context, inputs, flag="fixed"):
    _count(context.task_id)
    if not (HERE / flag).exists():
        raise FatalError(f"flag file {flag!r} is not there yet")
    return {"ok": True}


def rendezvous(context, inputs, parties=2, key="r"):
    """Succeeds only if `parties` tasks are inside it at the same time."""
    with _lock:
        barrier = _barriers.setdefault(key, threading.Barrier(parties, timeout=10))
    barrier.wait()
    return {"met": parties}


def sleep(context, inputs, seconds=10.0, marker=None):
    _count(context.task_id)
    if marker:
        (HERE / marker).write_text(str(os.getpid()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not context.cancelled:
        time.sleep(0.01)
    return {"slept": seconds}


def big_value(context, inputs):
    return {"blob": "x" * 100_000}


def sleep_once(context, inputs, seconds=60.0, marker="started"):
    """Sleep (cancellably) only on the first call; later calls return at once."""
    calls = _count(context.task_id)
    if calls == 1:
        (HERE / marker).write_text(str(os.getpid()))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not context.cancelled:
            time.sleep(0.01)
    return {"calls": calls}


def partitioned(context, inputs, keys=("a", "b", "c"), per_key=10):
    """Write a hive-partitioned dataset (k=a/, k=b/, ...) and hand back its manifest."""
    import pyarrow.parquet as pq

    from udop.tasks import Manifest

    table = pa.table({"k": [k for k in keys for _ in range(per_key)], "v": list(range(len(keys) * per_key))})
    pq.write_to_dataset(table, root_path=context.output_uri, partition_cols=["k"])
    return Manifest(uri=context.output_uri, rows=table.num_rows)


def count_item(context, inputs, source="parts"):
    _count(context.task_id)
    item = inputs[source]
    table = item.to_arrow()
    return pa.table(
        {"item": [Path(item.uri).name], "rows": [table.num_rows], "total": [sum(table["v"].to_pylist())]}
    )


def bad_setting(context, inputs, **args):
    from udop.errors import ConfigError

    _count(context.task_id)
    raise ConfigError("connection 'warehouse': unknown connector 'postgress'")


def stubborn_effect(context, inputs, seconds=3.0, name="effects"):
    """Ignore cancellation: the first attempt sleeps `seconds` in one call, then has a side effect.

    Later attempts have their side effect at once. Each effect appends the attempt number to a file,
    so a test sees whether a timed-out attempt's effect ever happened.
    """
    if context.attempt == 1:
        (HERE / "stubborn.started").write_text(str(os.getpid()))
        time.sleep(seconds)  # not interruptible by a cancel event
    with (HERE / f"{name}.log").open("a") as fh:
        fh.write(f"{context.attempt}\n")
    return {"attempt": context.attempt}


def returns(context, inputs, kind="object"):
    """Return a value of a type user code returns often (or an unstorable one)."""
    import datetime as dt
    import decimal

    import numpy as np
    import pandas as pd

    values = {
        "object": object,
        "numpy": lambda: {
            "sum": pd.Series([1, 2, 3]).sum(),
            "mean": np.float32(1.5),
            "flag": np.bool_(True),
            "when": pd.Timestamp("2026-11-30T05:00:00Z"),
            "day": dt.date(2026, 11, 30),
            "at": dt.datetime(2026, 11, 30, 5, 0, tzinfo=dt.UTC),
            "price": decimal.Decimal("12.30"),
            "arr": np.array([1, 2]),
        },
    }
    return values[kind]()


def wait_for_cancel(context, inputs, marker="started", seconds=60.0, until=None):
    """On its first call, run until told to stop (or until the file `until` appears); leave a file
    saying it saw the cancellation, then give up. Later calls (a resume) return at once."""
    if _count(context.task_id) > 1:
        return {"waited": 0}
    (HERE / marker).write_text(str(os.getpid()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not context.cancelled:
        if until and (HERE / until).exists():
            return {"waited": "until"}
        time.sleep(0.01)
    if context.cancelled:
        (HERE / f"{context.task_id}.saw-cancel").write_text("yes")
        raise FatalError("stopped")
    return {"waited": seconds}


def chatty(context, inputs, *, message="hello", lines=1, fail=False, secret=None):
    """Logs through `logging`, prints to stdout and stderr (observability tests)."""
    import logging
    import sys

    log = logging.getLogger("user.code")
    for i in range(lines):
        log.warning("%s %d from %s", message, i, context.task_id)
    print(f"printed {message}")
    print(f"to stderr {message}", file=sys.stderr)
    if secret:
        log.warning("the secret is %s", secret)
    if fail:
        raise ValueError(f"chatty failed: {message}")
    return {"said": message}
