"""Callables of the Celery executor's tests: plain user code, imported by the workers from this folder."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa


def rows(context: Any, inputs: dict[str, Any], *, n: int) -> pa.Table:
    return pa.table({"id": pa.array(range(1, n + 1), pa.int64())})


def held(context: Any, inputs: dict[str, Any], *, marks: str, source: str) -> pa.Table:
    """Passes its input on once ``<marks>/release`` exists; ``started-<attempt>`` and ``done-<attempt>``
    tell the test what ran."""
    folder = Path(marks)
    (folder / f"started-{context.attempt}").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not (folder / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    (folder / f"done-{context.attempt}").write_text(str(os.getpid()))
    return inputs[source].to_arrow()


def where(context: Any, inputs: dict[str, Any]) -> dict[str, str | None]:
    """Which worker computed the attempt (the tests start each worker with its own UDOP_TEST_WORKER)."""
    return {"worker": os.environ.get("UDOP_TEST_WORKER")}


def hungry(context: Any, inputs: dict[str, Any], *, mb: int) -> int:
    block = bytearray(mb * 1024 * 1024)
    return len(block)


def dies(context: Any, inputs: dict[str, Any], *, marks: str) -> None:
    """Its process dies at once, every time (as one killed for its memory would)."""
    import signal

    with open(Path(marks) / "deliveries", "a") as out:
        out.write("x")
    os.kill(os.getpid(), signal.SIGKILL)
