"""``foreach`` tasks: run a task once per file or partition of one input, then present the items'
outputs as one dataset.

Item ``i`` sees its input narrowed to one file (``over: files``) or one partition folder
(``over: partitions``) and writes below the task's folder, at ``<task uri>/item-<i:05d>/``; readers of
the task's output read the folder recursively, so downstream tasks see all items as one dataset.
The local executor runs the items of one attempt on a small thread pool; on AWS each item is one
iteration of a Map state (see docs/compiler.md), calling ``run_item`` with the same layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from udop.errors import FatalError
from udop.tasks.contract import Manifest, TaskContext, TaskResult

__all__ = ["DATA_SUFFIXES", "combine", "is_skipped", "item_uri", "list_items", "run_foreach", "run_item"]

DATA_SUFFIXES = (".parquet", ".csv", ".json", ".ndjson", ".jsonl")


def _is_data(path: Path) -> bool:
    return (
        path.is_file()
        and path.suffix in DATA_SUFFIXES
        and not any(part.startswith(("_", ".")) for part in path.parts[-1:])
    )


def is_skipped(relative: str, over: str) -> bool:
    """Whether an item path relative to the input's folder (an S3 key below its prefix on AWS) is not
    an item :func:`list_items` would give: hidden or ``_``-prefixed parts (``_partitions.json``, a
    Distributed Map's ``_map/`` results), and for ``files`` anything that is not a data file."""
    parts = [p for p in relative.split("/") if p]
    if any(part.startswith((".", "_")) for part in parts):
        return True
    return over == "files" and not (parts and Path(parts[-1]).suffix in DATA_SUFFIXES)


def list_items(manifest: Manifest, over: str) -> list[str]:
    """The items of a local dataset, sorted: data files, or the leaf folders that hold data files."""
    root = Path(manifest.uri.rstrip("/"))
    if root.is_file():
        return [str(root)]
    if not root.is_dir():
        raise FatalError(f"foreach input {manifest.uri} does not exist")
    files = sorted(
        p
        for p in root.rglob("*")
        if _is_data(p) and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
    )
    if over == "files":
        return [str(p) for p in files]
    folders = sorted({str(p.parent) for p in files if p.parent != root})
    return folders or [str(root)]


def item_uri(context: TaskContext, index: int) -> str:
    return f"{context.output_uri.rstrip('/')}/item-{index:05d}/"


def run_item(
    context: TaskContext, task: Any, inputs: Mapping[str, TaskResult], item: str, index: int
) -> TaskResult:
    """Run ``task`` for one item: its ``foreach.input`` narrowed to ``item``, output below the task."""
    from udop.tasks.registry import run_task

    source = inputs[task.foreach.input]
    assert source.output is not None
    narrowed = dict(inputs)
    narrowed[task.foreach.input] = dataclasses.replace(
        source, output=dataclasses.replace(source.output, uri=item, rows=None, bytes=None, files=1)
    )
    item_context = dataclasses.replace(context, output_override=item_uri(context, index))
    return run_task(item_context, task, narrowed)


def run_foreach(
    context: TaskContext, task: Any, inputs: Mapping[str, TaskResult], *, workers: int
) -> TaskResult:
    """Run every item (at most ``max_concurrency`` or ``workers`` at a time) and combine the results."""
    source = inputs.get(task.foreach.input)
    if source is None or source.output is None:
        raise FatalError(f"task {task.id!r}: foreach input {task.foreach.input!r} wrote no dataset")
    items = list_items(source.output, task.foreach.over)
    limit = task.foreach.max_concurrency or workers
    with ThreadPoolExecutor(
        max(1, min(limit, len(items) or 1)), thread_name_prefix=f"udop-{task.id}"
    ) as pool:
        results = list(
            pool.map(lambda pair: run_item(context, task, inputs, pair[1], pair[0]), enumerate(items))
        )
    return combine(context.output_uri, source.output.uri, results)


def combine(output_uri: str, source_uri: str, results: list[TaskResult]) -> TaskResult:
    """One result for a foreach task from its items' results (in item order): the task folder as one
    dataset, rows and files summed, checks concatenated, metrics ``{"items": n}``. The task runner's
    finalize step (AWS) combines the recorded item results with this too."""
    outputs = [r.output for r in results if r.output is not None]
    rows = [o.rows for o in outputs]
    output = (
        Manifest(
            uri=output_uri,
            format=outputs[0].format if outputs else "parquet",
            rows=sum(r for r in rows if r is not None) if outputs and None not in rows else None,
            bytes=sum(o.bytes or 0 for o in outputs) if outputs else 0,
            schema_fingerprint=outputs[0].schema_fingerprint if outputs else None,
            files=sum(o.files for o in outputs),
        )
        if outputs
        else None
    )
    return TaskResult(
        output=output,
        inputs=(source_uri,),
        checks=tuple(c for r in results for c in r.checks),
        metrics={"items": len(results)},
    )
