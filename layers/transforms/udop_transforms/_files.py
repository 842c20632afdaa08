"""File connectors: read CSV, Parquet, JSON and NDJSON (globs, hive partitions) and write them atomically.

Writes go to a file or folder beside the target and are renamed into place, so a load that fails
leaves the previous target untouched.
"""

from __future__ import annotations

import csv
import glob
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from udop import faults
from udop.sandbox import OUTPUT_MARKER
from udop.spec.data_tasks import FILE_EXTENSIONS
from udop_transforms._engine import Session, dataset_files, publish_dir, scratch_dir
from udop_transforms._readers import bool_sql, reader_sql
from udop_transforms._sql import ident, literal

__all__ = ["FILE_EXTENSIONS", "diagnose_csv", "reader_sql", "write_target"]



def matching_files(path: str) -> list[str]:
    if any(ch in path for ch in "*?["):
        return sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
    p = Path(path)
    if p.is_dir():
        return [str(f) for f in sorted(p.rglob("*")) if f.is_file() and not f.name.startswith(".")]
    return [path] if p.is_file() else []


#: rows per file scanned up front: DuckDB's dialect sniffer samples about this many, and a ragged row
#: inside its sample can make it pick a wrong dialect (or drop the row) instead of failing
SNIFF_ROWS = 20_480


def diagnose_csv(files: list[str], delimiter: str = ",", limit_rows: int = 1_000_000,
                 max_files: int | None = None) -> str | None:
    """Find the first ragged row (a field count unlike the header's) for a one-line error."""
    for name in files[:max_files]:
        with open(name, newline="", encoding="utf-8", errors="replace") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            width = None
            for number, row in enumerate(reader, start=1):
                if number > limit_rows:
                    break
                if width is None:
                    width = len(row)
                elif row and len(row) != width:
                    return (f"{name} line {reader.line_num}: {len(row)} fields where the header has {width} "
                            "(a ragged row)")
    return None


def _single_file(path: str, connector: str) -> bool:
    return path.lower().endswith(FILE_EXTENSIONS[connector])


def _copy_options(connector: str, target: Any, partition_by: list[str] | None = None) -> str:
    if connector == "parquet":
        opts = ["FORMAT parquet", "COMPRESSION zstd"]
    elif connector == "csv":
        delim = target.delimiter or ","
        header = True if target.header is None else target.header
        opts = ["FORMAT csv", f"DELIMITER {literal(delim)}", f"HEADER {bool_sql(header)}"]
    elif connector == "json":
        opts = ["FORMAT json", "ARRAY true"]
    else:
        opts = ["FORMAT json"]
    if partition_by:
        opts.append(f"PARTITION_BY ({', '.join(map(ident, partition_by))})")
        opts.append(f"FILENAME_PATTERN {literal('part-' + uuid.uuid4().hex[:12] + '-{i}')}")
    return ", ".join(opts)


def _file_marker(file: Path) -> Path:
    return file.parent / f".{file.name}{OUTPUT_MARKER}"


def _refuse_foreign(final: Path, single: bool) -> None:
    """A server replaces or extends only what udop wrote: a file or folder with udop's marker beside
    it. Anything else at the target stays as it is."""
    if not final.exists() and not final.is_symlink():
        return
    if final.is_symlink():
        raise ValueError(f"{str(final)!r} is a symbolic link; a server does not write through links")
    ours = _file_marker(final).is_file() and final.is_dir() != single
    if not ours:
        raise ValueError(f"{str(final)!r} exists and was not written by udop; a server does not replace "
                         "or add to files it did not write (choose a new path)")


def write_target(session: Session, sql: str, params: dict[str, Any], target: Any,
                 path: str, *, foreign_ok: bool = True, token: str | None = None) -> tuple[int, list[Path]]:
    """Write the query's rows to a file target; returns (rows, files now at the target).

    Every target udop writes is marked (``.<name>.udop-output`` beside the file or folder, so readers
    of the data never see it); without ``foreign_ok`` (server mode) an existing target lacking the
    mark is refused. ``token`` names an appended file after its load, so a load repeated after a
    crash replaces its own file instead of adding a second copy.
    """
    connector = target.connector
    final = Path(path)
    ext = FILE_EXTENSIONS[connector][0]
    if not foreign_ok:
        _refuse_foreign(final, _single_file(path, connector))
    if _single_file(path, connector):
        if target.partition_by:
            raise ValueError(f"partition_by needs a folder target, not the file name {path!r}")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}{final.suffix}"
        query = sql
        if target.mode == "append" and final.exists():
            query = (f"SELECT * FROM {reader_sql(connector, str(final))} "
                     f"UNION ALL BY NAME SELECT * FROM ({sql})")
        try:
            copy = f"COPY ({query}) TO {literal(str(tmp))} ({_copy_options(connector, target)})"
            written = session.con.execute(copy, params or None).fetchone()
            session.check_not_stopped()
            _file_marker(final).touch()
            faults.point("load-before-commit")
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return (int(written[0]) if written else 0), [final]

    tmp_dir = scratch_dir(final)
    try:
        name = token or uuid.uuid4().hex[:12]
        copy_to = tmp_dir if target.partition_by else tmp_dir / f"part-{name}{ext}"
        options = _copy_options(connector, target, target.partition_by)
        row = session.con.execute(f"COPY ({sql}) TO {literal(str(copy_to))} ({options})",
                                  params or None).fetchone()
        rows = int(row[0]) if row else 0
        session.check_not_stopped()
        _file_marker(final).touch()
        faults.point("load-before-commit")
        if target.mode == "overwrite" or not final.exists():
            publish_dir(tmp_dir, final)
        else:
            # append: every new file moves in whole (a reader never sees half a file)
            for file in dataset_files(tmp_dir, ext):
                dest = final / file.relative_to(tmp_dir)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(file, dest)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return rows, dataset_files(final, ext)
