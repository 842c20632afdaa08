"""Object storage connectors: ``s3`` (boto3; tested on moto), ``local`` (a folder), and ``gcs`` /
``azure`` through fsspec (optional extras, untested here). Formats: Parquet, CSV, JSON (an array of
objects) and NDJSON; hive-style ``key=value/`` partitions on read and write.

Reads go file by file (S3 objects are downloaded to a temporary file first, one at a time), so
memory stays bounded by a file's row group or block, not by the dataset. Writes stage every file
locally, then publish: ``overwrite`` replaces the folder (local: one rename; object stores: the new
files are uploaded first, then the old ones deleted), ``append`` adds files with fresh names.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from pydantic import ConfigDict, Field

from udop import faults
from udop.connectors import Connector, ConnectorSettings, LoadEntry
from udop.connectors.base import WriteMode
from udop.lineage.naming import Dataset, file_dataset, url_dataset
from udop_connectors._arrow import ColumnTypes, records_to_batch, schema_from_mapping

__all__ = ["AzureBlobConnector", "GCSConnector", "LocalConnector", "ObjectSettings", "S3Connector"]

Format = Literal["parquet", "csv", "json", "ndjson"]
_EXT = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
}
_PARTITION = re.compile(r"^([A-Za-z_][\w-]*)=(.*)$")


class ObjectSettings(ConnectorSettings):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="s3://bucket/prefix, a local folder or file; globs (*, **) allowed on read")
    format: Format | None = Field(None, description="default: from the file extension, else parquet")
    partition_by: list[str] = Field(default_factory=list, description="write key=value/ folders")
    hive_partitioning: bool = Field(True, description="read key=value/ folders as (string) columns")
    columns: ColumnTypes = Field(None, description="csv/json: column -> type, skips detection")
    delimiter: str = Field(",", min_length=1, max_length=1)
    header: bool = True
    max_rows_per_file: int = Field(1_000_000, ge=1)
    storage_options: dict[str, Any] = Field(default_factory=dict, description="gcs/azure: fsspec options")


class ObjectConnector(Connector):
    Settings: ClassVar[type[ConnectorSettings]] = ObjectSettings
    write_modes = ("append", "overwrite")
    scheme: ClassVar[str] = ""

    settings: ObjectSettings

    # -- storage primitives (overridden per store) ---------------------------------------------------
    def _list(self, root: str) -> list[str]:
        raise NotImplementedError

    def _fetch(self, name: str, dest: Path) -> None:
        raise NotImplementedError

    def _publish(self, staging: Path, root: str, mode: str) -> None:
        raise NotImplementedError

    # -- shared logic --------------------------------------------------------------------------------
    def _format(self, name: str) -> str:
        if self.settings.format:
            return self.settings.format
        return _EXT.get(Path(name).suffix.lower(), "parquet")

    def dataset(self) -> Dataset:
        path = self.settings.path
        if "://" in path:  # s3://bucket/prefix, gs://..., az://...: the bucket is the namespace
            return url_dataset(path)
        return file_dataset(path)

    def _root_and_pattern(self) -> tuple[str, str | None]:
        path = self.settings.path
        if any(ch in path for ch in "*?["):
            cut = min(path.index(ch) for ch in "*?[" if ch in path)
            root = path[: path.rfind("/", 0, cut) + 1]
            return root, path
        return path, None

    def files(self) -> list[str]:
        root, pattern = self._root_and_pattern()
        names = self._list(root)
        if pattern is not None:
            names = [
                n
                for n in names
                if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, pattern.replace("**/", ""))
            ]
        names = [n for n in names if not Path(n).name.startswith(("_", "."))]
        if not names:
            self.fail(f"no files at {self.settings.path}", retryable=False)
        return sorted(names)

    def _partition_values(self, name: str) -> dict[str, str]:
        """``key=value`` folders anywhere in the file's path (a glob may already have fixed some)."""
        if not self.settings.hive_partitioning:
            return {}
        values = {}
        for part in name.rsplit("://", maxsplit=1)[-1].split("/")[:-1]:
            m = _PARTITION.match(part)
            if m:
                values[m.group(1)] = m.group(2)
        return values

    def schema(self) -> pa.Schema | None:
        return schema_from_mapping(self.settings.columns)

    def read(self, *, since: Any = None) -> Iterator[pa.RecordBatch]:
        with tempfile.TemporaryDirectory(prefix="udop-objects-") as tmp:
            for i, name in enumerate(self.files()):
                local = Path(tmp) / f"{i}{Path(name).suffix}"
                self._fetch(name, local)
                extra = self._partition_values(name)
                for batch in self._read_file(local, self._format(name), name):
                    yield _with_constants(batch, extra) if extra else batch
                local.unlink()

    def _read_file(self, path: Path, fmt: str, name: str) -> Iterator[pa.RecordBatch]:
        s = self.settings
        typed = schema_from_mapping(s.columns)
        try:
            if fmt == "parquet":
                yield from pq.ParquetFile(path).iter_batches(batch_size=s.batch_size)
            elif fmt == "csv":
                stream = pacsv.open_csv(
                    path,
                    read_options=pacsv.ReadOptions(autogenerate_column_names=not s.header),
                    parse_options=pacsv.ParseOptions(delimiter=s.delimiter, newlines_in_values=True),
                    convert_options=pacsv.ConvertOptions(column_types={f.name: f.type for f in typed or []}),
                )
                yield from stream
            elif fmt == "ndjson":
                # JSON has no date type: temporal columns are parsed as text, then cast
                as_text = (
                    pa.schema(
                        [pa.field(f.name, pa.string()) if pa.types.is_temporal(f.type) else f for f in typed]
                    )
                    if typed
                    else None
                )
                stream = pajson.open_json(
                    path,
                    parse_options=pajson.ParseOptions(
                        explicit_schema=as_text, unexpected_field_behavior="ignore" if typed else "infer"
                    ),
                )
                for batch in stream:
                    yield batch.cast(typed) if typed is not None else batch
            else:
                with path.open("rb") as fh:
                    data = json.load(fh)
                if isinstance(data, dict):
                    data = [data]
                if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                    self.fail(
                        f"{name}: a JSON file must hold an object or an array of objects", retryable=False
                    )
                for start in range(0, len(data), s.batch_size):
                    yield records_to_batch(data[start : start + s.batch_size], typed)
        except (pa.ArrowInvalid, json.JSONDecodeError, UnicodeDecodeError) as exc:
            self.fail(f"{name} is not valid {fmt}: {' '.join(str(exc).split())[:300]}", retryable=False)

    def write(
        self, batches: Iterable[pa.RecordBatch], mode: WriteMode | None = None, keys: list[str] | None = None
    ) -> int:
        return self._write(batches, mode, keys, uuid.uuid4().hex[:8])

    keeps_ledger = True

    def _ledger_key(self, entry: LoadEntry) -> str:
        return f"udop:load-ledger:{self.name}:{entry.key}:{self.settings.path}"

    def loaded(self, entry: LoadEntry) -> int | None:
        if self.state is None:
            return None
        found = self.state.get(self._ledger_key(entry))
        return None if found is None else int(found)

    def write_once(
        self, batches: Iterable[pa.RecordBatch], mode: str, keys: list[str], entry: LoadEntry
    ) -> tuple[int, bool]:
        """Files named after the load (``part-<load key>-n``): a load repeated after a crash
        between its publish and its ledger record writes the same names again, replacing its own
        files, so the target holds its rows once either way."""
        found = self.loaded(entry)
        if found is not None:
            return found, True
        rows = self._write(batches, mode, keys, entry.key[:16])  # type: ignore[arg-type]
        if self.state is not None:
            self.state.set(self._ledger_key(entry), str(rows), ttl=15 * 86400.0)
        return rows, False

    def _staging(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="udop-objects-out-"))

    def _write(
        self, batches: Iterable[pa.RecordBatch], mode: WriteMode | None, keys: list[str] | None, token: str
    ) -> int:
        mode, _ = self.resolve_mode(mode, keys)
        fmt = self.settings.format or _EXT.get(Path(self.settings.path.rstrip("/")).suffix.lower(), "parquet")
        staging = self._staging()
        try:
            rows = _FileWriters(staging, fmt, self.settings, token=token).write_all(batches, self)
            faults.point("load-before-commit")
            self._publish(staging, self.settings.path.rstrip("/") + "/", mode)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return rows


def _with_constants(batch: pa.RecordBatch, values: dict[str, str]) -> pa.RecordBatch:
    arrays, names = list(batch.columns), list(batch.schema.names)
    for key, value in values.items():
        if key not in names:
            arrays.append(pa.array([value] * batch.num_rows, pa.string()))
            names.append(key)
    return pa.RecordBatch.from_arrays(arrays, names=names)


class _FileWriters:
    """One open writer per partition folder; a new file every ``max_rows_per_file`` rows."""

    def __init__(self, root: Path, fmt: str, settings: ObjectSettings, token: str) -> None:
        self.root, self.fmt, self.settings, self.token = root, fmt, settings, token
        self.open: dict[str, tuple[Any, Any, int]] = {}  # folder -> (writer, handle, rows)
        self.counts: dict[str, int] = {}

    def _new(self, folder: str, schema: pa.Schema) -> tuple[Any, Any, int]:
        n = self.counts.get(folder, 0)
        self.counts[folder] = n + 1
        ext = {"parquet": "parquet", "csv": "csv", "json": "json", "ndjson": "ndjson"}[self.fmt]
        path = self.root / folder / f"part-{self.token}-{n:05d}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.fmt == "parquet":
            return pq.ParquetWriter(path, schema, compression="zstd"), None, 0
        if self.fmt == "csv":
            binary = path.open("wb")
            return (
                pacsv.CSVWriter(
                    binary,
                    schema,
                    write_options=pacsv.WriteOptions(
                        include_header=self.settings.header, delimiter=self.settings.delimiter
                    ),
                ),
                binary,
                0,
            )
        handle = path.open("w", encoding="utf-8")
        if self.fmt == "json":
            handle.write("[")
        return None, handle, 0

    def _close(self, folder: str) -> None:
        writer, handle, _rows = self.open.pop(folder)
        if writer is not None:
            writer.close()
        if handle is not None:
            if self.fmt == "json":
                handle.write("]\n")
            handle.close()

    def _emit(self, folder: str, batch: pa.RecordBatch) -> None:
        if folder in self.open and self.open[folder][2] >= self.settings.max_rows_per_file:
            self._close(folder)
        if folder not in self.open:
            self.open[folder] = self._new(folder, batch.schema)
        writer, handle, rows = self.open[folder]
        if writer is not None:
            writer.write_batch(batch)
        else:
            lines = [json.dumps(r, default=str, ensure_ascii=False) for r in batch.to_pylist()]
            if self.fmt == "json":
                handle.write(("," if rows else "") + ",\n".join(lines))
            else:
                handle.write("".join(line + "\n" for line in lines))
        self.open[folder] = (writer, handle, rows + batch.num_rows)

    def write_all(self, batches: Iterable[pa.RecordBatch], connector: ObjectConnector) -> int:
        parts = self.settings.partition_by
        total = 0
        try:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                total += batch.num_rows
                if not parts:
                    self._emit("", batch)
                    continue
                missing = [p for p in parts if p not in batch.schema.names]
                if missing:
                    connector.fail(f"partition_by column(s) {missing} are not in the data", retryable=False)
                table = pa.Table.from_batches([batch])
                keys = table.select(parts).group_by(parts).aggregate([]).to_pylist()
                import pyarrow.compute as pc

                for key in keys:
                    mask = None
                    for p in parts:
                        value = key[p]
                        cond = pc.is_null(table[p]) if value is None else pc.equal(table[p], value)
                        mask = cond if mask is None else pc.and_(mask, cond)
                    chunk = table.filter(mask).drop_columns(parts)
                    folder = "/".join(f"{p}={'__null__' if key[p] is None else key[p]}" for p in parts)
                    for b in chunk.to_batches():
                        self._emit(folder, b)
        finally:
            for folder in list(self.open):
                self._close(folder)
        return total


def _staged_files(staging: Path) -> list[Path]:
    return sorted(p for p in staging.rglob("*") if p.is_file())


class LocalConnector(ObjectConnector):
    name = "local"
    path_options = ("path",)

    def _list(self, root: str) -> list[str]:
        base = Path(root)
        if base.is_file():
            return [root]
        if not base.exists():
            return []
        return [str(p) for p in base.rglob("*") if p.is_file()]

    def _root_and_pattern(self) -> tuple[str, str | None]:
        root, pattern = super()._root_and_pattern()
        if pattern is None and Path(root).is_dir() and not root.endswith("/"):
            root += "/"
        return root, pattern

    def _fetch(self, name: str, dest: Path) -> None:
        try:
            os.link(name, dest)
        except OSError:
            shutil.copyfile(name, dest)

    def _staging(self) -> Path:
        # beside the target, on its file system: publishing is then a rename (never a copy across
        # devices, which os.replace refuses), and made with the user's umask, not mkdtemp's 0700
        final = Path(self.settings.path.rstrip("/"))
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = final.with_name(f".{final.name}.udop-{uuid.uuid4().hex[:8]}")
        staging.mkdir()
        return staging

    def _publish(self, staging: Path, root: str, mode: str) -> None:
        final = Path(root.rstrip("/"))
        final.parent.mkdir(parents=True, exist_ok=True)
        if mode == "append" and final.exists():
            for f in _staged_files(staging):
                dest = final / f.relative_to(staging)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, dest)
            return
        # overwrite: swap the staged folder in with renames
        if final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)


class S3Connector(ObjectConnector):
    """S3 through boto3 (which reads AWS_ENDPOINT_URL itself: the same code serves AWS, LocalStack and
    moto)."""

    name = "s3"

    def __init__(self, settings: ConnectorSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3")
        return self._client

    def _split(self, uri: str) -> tuple[str, str]:
        if not uri.startswith("s3://"):
            self.fail(f"path {uri!r} must start with s3://", retryable=False)
        bucket, _, key = uri[5:].partition("/")
        return bucket, key

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import botocore.exceptions

        try:
            return fn(*args, **kwargs)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            retryable = status >= 500 or code in ("SlowDown", "RequestTimeout", "ThrottlingException")
            hint = {
                "NoSuchBucket": "the bucket does not exist",
                "AccessDenied": "access denied",
                "InvalidAccessKeyId": "the access key is not valid",
                "SignatureDoesNotMatch": "the secret key is wrong",
            }.get(code, code)
            self.fail(f"{what}: {hint}", retryable=retryable)
        except botocore.exceptions.NoCredentialsError:
            self.fail(f"{what}: no AWS credentials found", retryable=False)
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionError) as exc:
            self.fail(f"{what}: cannot reach S3 ({type(exc).__name__})", retryable=True)

    def _list(self, root: str) -> list[str]:
        bucket, prefix = self._split(root)
        paginator = self.client.get_paginator("list_objects_v2")
        names: list[str] = []

        def collect() -> None:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                names.extend(
                    f"s3://{bucket}/{o['Key']}"
                    for o in page.get("Contents", [])
                    if not o["Key"].endswith("/")
                )

        self._call(f"list s3://{bucket}/{prefix}", collect)
        return names

    def _fetch(self, name: str, dest: Path) -> None:
        bucket, key = self._split(name)
        self._call(f"read {name}", self.client.download_file, bucket, key, str(dest))

    def check(self) -> None:
        bucket, _ = self._split(self.settings.path)
        self._call(f"bucket {bucket}", self.client.head_bucket, Bucket=bucket)

    def _publish(self, staging: Path, root: str, mode: str) -> None:
        bucket, prefix = self._split(root)
        old = self._list(root) if mode == "overwrite" else []
        new = set()
        for f in _staged_files(staging):
            key = prefix + f.relative_to(staging).as_posix()
            self._call(f"write s3://{bucket}/{key}", self.client.upload_file, str(f), bucket, key)
            new.add(f"s3://{bucket}/{key}")
        stale = [self._split(n)[1] for n in old if n not in new]
        for i in range(0, len(stale), 1000):
            self._call(
                f"delete old files under s3://{bucket}/{prefix}",
                self.client.delete_objects,
                Bucket=bucket,
                Delete={"Objects": [{"Key": k} for k in stale[i : i + 1000]]},
            )


class _FsspecConnector(ObjectConnector):
    """GCS and Azure Blob through fsspec (``pip install gcsfs`` / ``adlfs``). Untested in udop's CI."""

    protocol: ClassVar[str] = ""
    package: ClassVar[str] = ""

    @property
    def fs(self) -> Any:
        try:
            import fsspec
        except ImportError:
            self.fail(
                f"needs the optional packages fsspec and {self.package} (pip install {self.package})",
                retryable=False,
            )
        return fsspec.filesystem(self.protocol, **self.settings.storage_options)

    def _list(self, root: str) -> list[str]:
        fs = self.fs
        try:
            found = fs.find(root) if fs.isdir(root) else ([root] if fs.exists(root) else [])
        except OSError as exc:
            self.fail(f"list {root}: {exc}", retryable=True)
        return [n if "://" in n else f"{self.protocol}://{n}" for n in found]

    def _fetch(self, name: str, dest: Path) -> None:
        self.fs.get(name, str(dest))

    def _publish(self, staging: Path, root: str, mode: str) -> None:
        fs = self.fs
        old = self._list(root) if mode == "overwrite" else []
        new = set()
        for f in _staged_files(staging):
            target = root + f.relative_to(staging).as_posix()
            fs.put(str(f), target)
            new.add(target)
        stale = [n for n in old if n not in new]
        if stale:
            fs.rm(stale)


class GCSConnector(_FsspecConnector):
    name = "gcs"
    protocol = "gs"
    package = "gcsfs"


class AzureBlobConnector(_FsspecConnector):
    name = "azure"
    protocol = "az"
    package = "adlfs"
