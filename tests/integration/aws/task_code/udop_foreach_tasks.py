"""Callables of the foreach test pipeline (tests/integration/aws/test_foreach_e2e.py).

``parts`` writes a hive-partitioned dataset: ``k=<key>/part-<j>.parquet`` with ``FILES_PER_KEY`` files
of ``ROWS_PER_FILE`` rows each, ``v`` numbering the rows across the dataset, plus a ``_SUCCESS``
marker that is not data. Every call of ``per_item`` is logged so tests can count the real runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from udop.tasks.contract import Manifest

KEYS = ("a", "b", "c")
FILES_PER_KEY = 2
ROWS_PER_FILE = 10


def values(key_index: int, file_index: int) -> list[int]:
    start = (key_index * FILES_PER_KEY + file_index) * ROWS_PER_FILE
    return list(range(start, start + ROWS_PER_FILE))


def parts(context: Any, inputs: dict[str, Any]) -> Manifest:
    root = Path(context.output_uri)
    for ki, key in enumerate(KEYS):
        folder = root / f"k={key}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(FILES_PER_KEY):
            vs = values(ki, j)
            pq.write_table(pa.table({"key": [key] * len(vs), "v": vs}), folder / f"part-{j}.parquet")
    (root / "_SUCCESS").write_text("")
    return Manifest(
        uri=context.output_uri,
        rows=len(KEYS) * FILES_PER_KEY * ROWS_PER_FILE,
        files=len(KEYS) * FILES_PER_KEY,
    )


def per_item(
    context: Any, inputs: dict[str, Any], *, log_dir: str, fail_key: str = "", flag: str = ""
) -> pa.Table:
    """One row per item: its keys, row count, sum and smallest value of ``v``. Fails (not
    retryable) on the item holding key ``fail_key`` (while the file ``flag`` exists, if given)."""
    from udop.errors import FatalError

    with (Path(log_dir) / "per_item.calls").open("a") as f:
        f.write(f"{context.run_id} {inputs['parts'].uri}\n")
    table = inputs["parts"].to_arrow()
    if fail_key and fail_key in table["key"].to_pylist() and (not flag or Path(flag).exists()):
        raise FatalError(f"bad item: key {fail_key}")
    return pa.table(
        {
            "keys": [",".join(sorted(set(table["key"].to_pylist())))],
            "rows": [table.num_rows],
            "total": [sum(table["v"].to_pylist())],
            "first": [min(table["v"].to_pylist())],
        }
    )


def summary(context: Any, inputs: dict[str, Any]) -> pa.Table:
    """The combined output of ``per_item`` read as one dataset: items, rows and the grand total."""
    table = inputs["per_item"].to_arrow()
    return pa.table(
        {
            "items": [table.num_rows],
            "rows": [sum(table["rows"].to_pylist())],
            "total": [sum(table["total"].to_pylist())],
        }
    )


def relabel(context: Any, inputs: dict[str, Any], *, source: str) -> pa.Table:
    """A second foreach over a foreach task's output: each of its item files, with a mark."""
    table = inputs[source].to_arrow()
    return table.append_column("seen", pa.array([True] * table.num_rows))
