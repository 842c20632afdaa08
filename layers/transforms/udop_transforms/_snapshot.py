"""Sources read in place: an extract of Parquet files records a snapshot of them instead of a copy.

The snapshot (``_snapshot.json`` in the extract's output folder) lists the files with their size and
modification time (on S3: size and ETag) and the schema. Tasks downstream read the files themselves, so
DuckDB pushes projections and filters into the source scan; before reading they check that the files
are still the ones recorded, so a resume or a retry never reads other data than its run's extract saw.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from udop.errors import FatalError, RetryableError
from udop.tasks.contract import SNAPSHOT_FORMAT, SOURCE_FILES, Manifest, SourceFiles, TaskContext
from udop_transforms._engine import publish_dir, scratch_dir
from udop_transforms._files import matching_files

__all__ = ["SNAPSHOT_FORMAT", "SNAPSHOT_NAME", "Snapshot", "SourceFile", "list_s3", "read_snapshot",
           "s3_client", "s3_footers", "s3_pattern", "stat_local", "verified_files", "write_snapshot"]

SNAPSHOT_NAME = "_snapshot.json"


@dataclass(frozen=True)
class SourceFile:
    path: str  # absolute local path or s3:// URI
    size: int
    mtime_ns: int | None = None  # local files
    etag: str | None = None  # S3 objects


@dataclass(frozen=True)
class Snapshot:
    task: str
    connector: str
    path: str  # the source path or glob as rendered, for messages and ``resnapshot``
    files: tuple[SourceFile, ...]
    rows: int
    schema_fingerprint: str | None
    hive_partitioning: bool | None = None
    union_by_name: bool = False
    #: hive partition values stay text (the ``s3`` connector's reading), not typed by DuckDB
    hive_strings: bool = False
    on_change: str = "fail"

    def to_json(self) -> str:
        body = asdict(self)
        body["files"] = [{k: v for k, v in asdict(f).items() if v is not None} for f in self.files]
        return json.dumps({"version": 1, **body}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        body = json.loads(text)
        body.pop("version", None)
        body["files"] = tuple(SourceFile(**f) for f in body["files"])
        return cls(**body)


def stat_local(files: list[str]) -> tuple[SourceFile, ...]:
    out = []
    for name in files:
        st = os.stat(name)
        out.append(SourceFile(path=os.path.abspath(name), size=st.st_size, mtime_ns=st.st_mtime_ns))
    return tuple(out)


def s3_pattern(path: str) -> tuple[str, str, str | None]:
    """``s3://bucket/prefix/*.parquet`` -> (bucket, listing prefix, glob on the key or None)."""
    bucket, _, key = path.removeprefix("s3://").partition("/")
    if any(ch in key for ch in "*?["):
        cut = min(key.index(ch) for ch in "*?[" if ch in key)
        return bucket, key[: key.rfind("/", 0, cut) + 1], key
    return bucket, key, None


def list_s3(s3: Any, path: str) -> tuple[SourceFile, ...]:
    """The objects a source path names (a key, a prefix, or a glob), as the ``s3`` connector lists
    them: hidden names (``_``, ``.``) left out."""
    bucket, prefix, pattern = s3_pattern(path)
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith("/") or key.rsplit("/", 1)[-1].startswith(("_", ".")):
                continue
            if pattern is not None and not (fnmatch.fnmatchcase(key, pattern)
                                            or fnmatch.fnmatchcase(key, pattern.replace("**/", ""))):
                continue
            found.append(SourceFile(path=f"s3://{bucket}/{key}", size=int(obj["Size"]),
                                    etag=str(obj["ETag"])))
    return tuple(sorted(found, key=lambda f: f.path))


def s3_footers(s3: Any, files: tuple[SourceFile, ...], hive: bool) -> tuple[int, Any]:
    """(rows, Arrow schema) of S3 Parquet objects from their footers alone: two ranged reads per
    object, nothing downloaded whole. Hive ``key=value/`` folders add text columns, as the ``s3``
    connector reads them."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, schema = 0, None
    for f in files:
        bucket, _, key = f.path.removeprefix("s3://").partition("/")
        tail = s3.get_object(Bucket=bucket, Key=key, Range="bytes=-8", IfMatch=f.etag)["Body"].read()
        if len(tail) != 8 or tail[4:] != b"PAR1":
            raise FatalError(f"{f.path} is not a Parquet file")
        length = int.from_bytes(tail[:4], "little")
        footer = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=-{length + 8}",
                               IfMatch=f.etag)["Body"].read()
        meta = pq.read_metadata(io.BytesIO(b"PAR1" + footer))
        rows += meta.num_rows
        if schema is None:
            schema = meta.schema.to_arrow_schema()
            if hive:
                for part in key.split("/")[:-1]:
                    name, eq, _ = part.partition("=")
                    if eq and name and name not in schema.names:
                        schema = schema.append(pa.field(name, pa.string()))
    return rows, schema


def write_snapshot(snapshot: Snapshot, output_uri: str) -> Manifest:
    """The snapshot as the extract's output: one small file in its folder, published atomically."""
    final = Path(output_uri)
    tmp = scratch_dir(final)
    try:
        (tmp / SNAPSHOT_NAME).write_text(snapshot.to_json())
        publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Manifest(uri=output_uri, rows=snapshot.rows, bytes=sum(f.size for f in snapshot.files),
                    schema_fingerprint=snapshot.schema_fingerprint, format=SNAPSHOT_FORMAT,
                    files=len(snapshot.files))


def read_snapshot(manifest: Manifest) -> Snapshot:
    path = Path(manifest.uri) / SNAPSHOT_NAME
    try:
        return Snapshot.from_json(path.read_text())
    except FileNotFoundError:
        raise FatalError(f"the snapshot {path} does not exist (was the run's folder removed?)") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise FatalError(f"the snapshot {path} is not readable ({exc}); run the pipeline again") from None


def _when(ns: int | None) -> str:
    return "?" if ns is None else datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _local_change(f: SourceFile) -> str | None:
    try:
        st = os.stat(f.path)
    except FileNotFoundError:
        return f"{f.path} was removed"
    if st.st_size != f.size or st.st_mtime_ns != f.mtime_ns:
        return (f"{f.path} was modified (size {f.size} -> {st.st_size} bytes, modified "
                f"{_when(f.mtime_ns)} -> {_when(st.st_mtime_ns)} UTC)")
    return None


def s3_client(context: TaskContext) -> Any:
    client = context.services.get("s3_client") if context.services else None
    if client is None:
        import boto3

        client = boto3.client("s3")
    return client


def _changed(task_id: str, dep: str, snap: Snapshot, what: str) -> FatalError:
    return FatalError(
        f"task {task_id!r}: input {dep!r}: the source changed after extract {snap.task!r} recorded it: "
        f"{what}; run the pipeline again (a resume or a retry reads what its run's extract recorded), or "
        f"give {snap.task!r} `on_source_change: resnapshot` (read the files as they are now) or "
        "`materialize: true` (keep a copy)")


@contextmanager
def verified_files(context: TaskContext, task_id: str, dep: str, snap: Snapshot) -> Iterator[list[str]]:
    """Local paths to read for ``snap``, after checking that the source still holds what it recorded.

    S3 objects are downloaded (``IfMatch`` their recorded ETag, so a changed object fails instead of
    being read) into a temporary folder that is removed on exit. With ``on_change: resnapshot`` the
    source is listed again and read as it is now."""
    files = snap.files
    remote = bool(files) and files[0].path.startswith("s3://")
    if snap.on_change == "resnapshot":
        files = list_s3(s3_client(context), snap.path) if remote else stat_local(matching_files(snap.path))
        if not files:
            raise FatalError(f"task {task_id!r}: input {dep!r}: no file matches {snap.path!r} any more")
    elif not remote:
        for f in files:
            if (what := _local_change(f)) is not None:
                raise _changed(task_id, dep, snap, what)
    if not remote:
        yield [f.path for f in files]
        return
    # under the task's data root: a server's DuckDB may read only below its allowed folders
    root = Path(context.data_root)
    root.mkdir(parents=True, exist_ok=True)
    kept = (context.services or {}).get(SOURCE_FILES)
    if isinstance(kept, SourceFiles):
        # the caller keeps what this attempt fetched until the attempt ends: a source read twice in
        # one attempt (a fused transform's schema, then its load's query) is fetched once
        key = json.dumps([[f.path, f.etag] for f in files])
        if key not in kept.fetched:
            dest = Path(tempfile.mkdtemp(prefix="udop-source-", dir=root))
            kept.fetched[key] = _download(context, task_id, dep, replace(snap, files=files), dest)
        yield kept.fetched[key]
        return
    tmp = tempfile.mkdtemp(prefix="udop-source-", dir=root)
    try:
        yield _download(context, task_id, dep, replace(snap, files=files), Path(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(context: TaskContext, task_id: str, dep: str, snap: Snapshot, dest: Path) -> list[str]:
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = s3_client(context)
    local = []
    for f in snap.files:
        bucket, _, key = f.path.removeprefix("s3://").partition("/")
        # the object's relative key keeps key=value/ folders, which hive partitioning reads
        target = dest / bucket / key
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            extra = {"IfMatch": f.etag} if f.etag and snap.on_change == "fail" else {}
            body = s3.get_object(Bucket=bucket, Key=key, **extra)["Body"]
            with target.open("wb") as fh:
                shutil.copyfileobj(body, fh, 1 << 20)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412"):
                raise _changed(task_id, dep, snap, f"{f.path} was replaced (its ETag is no longer "
                                                   f"{f.etag})") from None
            if code in ("NoSuchKey", "404"):
                raise _changed(task_id, dep, snap, f"{f.path} was removed") from None
            raise RetryableError(f"task {task_id!r}: input {dep!r}: reading {f.path}: {code}") from None
        except BotoCoreError as exc:
            raise RetryableError(f"task {task_id!r}: input {dep!r}: reading {f.path}: {exc}") from None
        local.append(str(target))
    return local
