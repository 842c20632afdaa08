"""Where a batch that keeps failing goes: its messages as read, to any load target, once per batch."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from udop.spec.data_tasks import TargetSpec
from udop.spec.models import Pipeline
from udop.tasks.datasets import Manifest, read_arrow

__all__ = ["write_dead_letter"]


def write_dead_letter(
    pipeline: Pipeline, run_id: str, manifest: Manifest, target: TargetSpec, services: Mapping[str, Any]
) -> int:
    """Write the batch at ``manifest`` to ``target``; returns the rows. A file target gets one file per
    batch named after its run (written again, not twice, when repeated); a connector that keeps a load
    ledger records the batch as load ``dead-letter`` of the run, so a repeat writes nothing."""
    table = read_arrow(manifest)
    base = services.get("base_dir")
    if target.connector in ("parquet", "csv", "json", "ndjson"):
        assert target.path is not None
        folder = Path(target.path) if os.path.isabs(target.path) or not base else Path(base) / target.path
        folder.mkdir(parents=True, exist_ok=True)
        suffix = "json" if target.connector in ("json", "ndjson") else target.connector
        final = folder / f"dead-letter-{run_id}.{suffix}"
        staging = folder / f".{final.name}.tmp"
        if target.connector == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, staging)
        elif target.connector == "csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, staging)
        else:
            import json

            with staging.open("w") as out:
                for row in table.to_pylist():
                    out.write(json.dumps(row, default=str) + "\n")
        os.replace(staging, final)
        return int(table.num_rows)
    from udop.connectors import LoadEntry, get_connector

    connector = get_connector(
        target.model_dump(exclude_unset=True), connections=pipeline.spec.connections, base_dir=base
    )
    entry = LoadEntry(pipeline=pipeline.name, run_id=run_id, task_id="dead-letter", input=manifest.uri)
    with connector:
        mode, keys = connector.resolve_mode(None, None)
        rows, _found = connector.write_once(iter(table.to_batches()), mode, keys, entry)
    return rows
