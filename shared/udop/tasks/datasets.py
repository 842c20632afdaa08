"""Write and read task outputs: Parquet folders at deterministic locations, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from udop.tasks.contract import Manifest

__all__ = ["publish_dir", "read_arrow", "schema_fingerprint", "write_parquet"]


def schema_fingerprint(schema: Any) -> str:
    """A stable hash of an Arrow schema: field names, types and nullability, in order (no metadata).

    The one definition every task type uses, so equal schemas get equal fingerprints in manifests
    whatever wrote them.
    """
    canon = [[f.name, str(f.type), bool(f.nullable)] for f in schema]
    return "sha256:" + hashlib.sha256(json.dumps(canon).encode()).hexdigest()


def publish_dir(staging: Path, final: Path) -> None:
    """Replace ``final`` with ``staging`` so readers see the old folder or the new one, never half.

    The old folder is renamed aside first and removed after the new one is in place.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def write_parquet(data: Any, uri: str) -> Manifest:
    """Write a pyarrow Table / RecordBatch / RecordBatchReader to ``<uri>/part-0.parquet`` atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    final = Path(uri)
    staging = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        rows = 0
        with pq.ParquetWriter(staging / "part-0.parquet", data.schema) as writer:
            batches = data.to_batches() if isinstance(data, pa.Table) else data
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
        size = sum(p.stat().st_size for p in staging.iterdir())
        publish_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Manifest(
        uri=str(final) + "/", rows=rows, bytes=size, schema_fingerprint=schema_fingerprint(data.schema)
    )


def read_arrow(manifest: Manifest) -> Any:
    import pyarrow.dataset as ds

    return ds.dataset(manifest.uri.rstrip("/"), format=manifest.format).to_table()
