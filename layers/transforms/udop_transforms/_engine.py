"""One DuckDB session per task attempt: settings (memory limit, spill folder, threads), the cancel hook,
inputs registered as views, and atomic Parquet output with its manifest."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from udop.errors import FatalError, TaskTimeout
from udop.sandbox import Policy, current
from udop.settings import get_settings
from udop.tasks.contract import Manifest, TaskContext
from udop.tasks.datasets import schema_fingerprint
from udop_transforms._readers import reader_sql
from udop_transforms._sql import ident, literal

__all__ = ["Column", "Session", "dataset_files", "fingerprint", "manifest_for", "publish_dir",
           "query_fingerprint", "scratch_dir"]

Column = tuple[str, str]  # (name, DuckDB type)


_shared_lock = threading.Lock()
#: one shared database per policy's allowed folders (None: trusted, unrestricted)
_shared_dbs: dict[tuple[str, ...] | None, duckdb.DuckDBPyConnection] = {}

#: connection options of a server-mode database: nothing may be installed or auto-loaded
_LOCKED_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
                  "allow_community_extensions": False, "allow_unsigned_extensions": False}


def _connect(policy: Policy) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(":memory:", config=dict(_LOCKED_CONFIG) if policy.is_server else {})


def _lock_down(con: duckdb.DuckDBPyConnection, policy: Policy, spill: str) -> None:
    """Server mode: files only below the policy's roots and the spill folder, no extension beyond
    the ones udop ships (they are linked in), and no way for SQL to change any of it back."""
    loaded = {r[0] for r in con.execute("SELECT extension_name FROM duckdb_extensions() WHERE loaded"
                                        ).fetchall()}
    extra = loaded - set(policy.extensions)
    if extra:  # a DuckDB build linking more than we vetted: refuse rather than run unvetted code
        raise FatalError(f"DuckDB has extensions loaded that a server does not allow: {sorted(extra)}")
    dirs = [*policy.allowed_directories(), os.path.realpath(spill).rstrip("/") + "/"]
    con.execute(f"SET allowed_directories = [{', '.join(literal(d) for d in dirs)}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _configure(con: duckdb.DuckDBPyConnection, spill: str, memory_limit: str | None,
               policy: Policy) -> None:
    settings = get_settings()
    con.execute(f"SET temp_directory = {literal(spill)}")
    limit = memory_limit or settings.duckdb_memory_limit
    if limit:
        con.execute(f"SET memory_limit = {literal(limit)}")
    if settings.duckdb_threads:
        con.execute(f"SET threads = {int(settings.duckdb_threads)}")
    # results without ORDER BY may come in any order; lets DuckDB stream and spill more freely
    con.execute("SET preserve_insertion_order = false")
    # a task reads each input's Parquet footer twice (DESCRIBE to compile, then the query); keep it
    con.execute("SET parquet_metadata_cache = true")
    if policy.is_server:
        _lock_down(con, policy, spill)


def _shared(policy: Policy) -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB per process (per set of allowed folders on a server): its thread pool,
    file caches and memory limit are shared by the tasks running in this process (each task gets its
    own connection, so its views are private)."""
    key = tuple(policy.allowed_directories()) if policy.is_server else None
    with _shared_lock:
        if key not in _shared_dbs:
            spill = tempfile.mkdtemp(prefix="udop-duckdb-")
            con = _connect(policy)
            _configure(con, spill, None, policy)
            atexit.register(shutil.rmtree, spill, True)
            _shared_dbs[key] = con
        return _shared_dbs[key]


class Session:
    """A DuckDB connection for one task: bounded memory, spilling to a temp folder, interruptible.

    Without a per-task ``memory_limit`` it is a connection to the process's shared database (limit
    ``UDOP_DUCKDB_MEMORY_LIMIT`` for all tasks together); with one, a database of its own.
    """

    def __init__(self, *, memory_limit: str | None = None, context: TaskContext | None = None) -> None:
        self._spill: str | None = None
        policy = context.policy if context is not None else current()
        if policy.is_server and context is not None:
            policy = policy.with_roots(context.data_root)  # its inputs and output live there
        if memory_limit:
            self._spill = tempfile.mkdtemp(prefix="udop-duckdb-")
            self.con = _connect(policy)
            _configure(self.con, self._spill, memory_limit, policy)
        else:
            shared = _shared(policy)
            with _shared_lock:
                self.con = shared.cursor()
        self._closed = threading.Event()
        #: what must outlive the connection's queries (e.g. source files staged for a view); closed last
        self.cleanup = ExitStack()
        #: inputs read as a subquery rather than a view (a fused transform's query and its parameters)
        self.deferred: dict[str, tuple[str, dict[str, Any]]] = {}
        #: set when the executor told the attempt to stop (timeout, cancel, Lambda deadline)
        self._cancel: threading.Event | None = context.cancel_event if context is not None else None
        if context is not None:
            if context.on_cancel is not None:
                # the executor calls its hooks when it tells the attempt to stop (the local executor)
                context.on_cancel(self.con.interrupt)
            else:
                # executors that only set cancel_event (the Lambda task runner near its deadline) stop
                # us too
                threading.Thread(target=self._watch, args=(context.cancel_event,), daemon=True,
                                 name=f"udop-cancel-{context.task_id}").start()

    def check_not_stopped(self) -> None:
        """Raise if the attempt was told to stop: called right before a target is published, since
        DuckDB's interrupt only stops a query already running (a stop that came before the COPY, or
        after it and before the rename, would otherwise publish the output of an attempt the executor
        already recorded as timed out or cancelled)."""
        if self._cancel is not None and self._cancel.is_set():
            raise TaskTimeout("the attempt was told to stop (timeout or cancel) before its output was "
                              "published; the target is unchanged")

    def _watch(self, cancel: threading.Event) -> None:
        while not self._closed.is_set():
            if cancel.wait(0.1):
                if not self._closed.is_set():
                    self.con.interrupt()
                return

    def usage(self) -> dict[str, Any]:
        """DuckDB's memory limit in effect and, for a session with a database of its own (a per-task
        ``memory_limit``), whether it spilled to disk: DuckDB writes to its spill folder only then.
        The shared database spills for every task of the process, so it cannot say whose spill it was."""
        ((limit,),) = self.con.execute("SELECT current_setting('memory_limit')").fetchall()
        out: dict[str, Any] = {"memory_limit": str(limit)}
        if self._spill is not None:
            out["spilled"] = any(Path(self._spill).iterdir())
        return out

    def close(self) -> None:
        self._closed.set()
        self.con.close()
        self.cleanup.close()
        if self._spill is not None:
            shutil.rmtree(self._spill, ignore_errors=True)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self, sql: str, params: dict[str, Any] | None = None) -> list[Column]:
        rows = self.con.execute(f"DESCRIBE {sql}", params or None).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def register_view(self, name: str, source_sql: str, *, widen_decimals: bool = False,
                      columns: list[Column] | None = None) -> list[Column]:
        """``CREATE VIEW name`` over a table function. With ``widen_decimals`` decimal columns become
        DECIMAL(38, s), so that decimal(15,2) * decimal(15,2) is computed in 38 digits instead of
        overflowing DuckDB's 18-digit fast path (used when a task's first run hit that overflow).
        ``columns``: what DESCRIBE of the source gives, when already known (not asked again)."""
        if columns is None:
            columns = self.describe(f"SELECT * FROM {source_sql}")
        select = "*"
        if widen_decimals:
            wide = {n: f"DECIMAL(38,{t.split(',')[1].rstrip(')')})" for n, t in columns
                    if t.startswith("DECIMAL(") and not t.startswith("DECIMAL(38,")}
            if wide:
                parts = [f"CAST({ident(n)} AS {t}) AS {ident(n)}" for n, t in wide.items()]
                select = f"* REPLACE ({', '.join(parts)})"
                columns = [(n, wide.get(n, t)) for n, t in columns]
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {ident(name)} AS SELECT {select} FROM {source_sql}")
        return columns

    def register_manifest(self, name: str, manifest: Manifest) -> list[Column]:
        return self.register_view(name, dataset_reader(manifest))

    def copy_parquet(self, sql: str, params: dict[str, Any], file: Path) -> int:
        row = self.con.execute(f"COPY ({sql}) TO {literal(str(file))} (FORMAT parquet, COMPRESSION zstd)",
                               params or None).fetchone()
        return int(row[0]) if row else 0


def dataset_reader(manifest: Manifest) -> str:
    """A DuckDB table function reading a task's output (a folder of Parquet, or a load's target)."""
    return reader_sql(manifest.format if manifest.format != "parquet" else "parquet",
                      _dataset_glob(manifest.uri, manifest.format))


def _dataset_glob(uri: str, fmt: str) -> str:
    path = Path(uri)
    if path.is_dir():
        ext = {"parquet": "parquet", "csv": "csv", "json": "json", "ndjson": "ndjson"}.get(fmt, fmt)
        return str(path / "**" / f"*.{ext}")
    return str(path)


def scratch_dir(final: Path) -> Path:
    """A fresh folder beside ``final`` (same file system, so the final rename is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    return tmp


def publish_dir(tmp: Path, final: Path) -> None:
    """Swap ``tmp`` in as ``final``; an older ``final`` is moved aside first and removed after."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def dataset_files(path: Path, suffix: str = ".parquet") -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob(f"*{suffix}") if p.is_file() and not p.name.startswith("."))


def fingerprint(schema: Any) -> str:
    """The core's schema fingerprint (one definition for every task type)."""
    return schema_fingerprint(schema)


#: DuckDB column type -> the Arrow type DuckDB's Arrow export gives it (``str()`` of it), for the types
#: whose export does not depend on a setting (a time zone, lossless conversion); tests compare each
#: with DuckDB's own export
ARROW_TYPES = {
    "BOOLEAN": "bool", "TINYINT": "int8", "SMALLINT": "int16", "INTEGER": "int32", "BIGINT": "int64",
    "UTINYINT": "uint8", "USMALLINT": "uint16", "UINTEGER": "uint32", "UBIGINT": "uint64",
    "FLOAT": "float", "DOUBLE": "double", "VARCHAR": "string", "BLOB": "binary", "DATE": "date32[day]",
    "TIME": "time64[us]", "TIMESTAMP": "timestamp[us]", "TIMESTAMP_S": "timestamp[s]",
    "TIMESTAMP_MS": "timestamp[ms]", "TIMESTAMP_NS": "timestamp[ns]",
}
_DECIMAL = re.compile(r"DECIMAL\((\d+),(\d+)\)")


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    type: str
    nullable: bool = True  # a query result's columns: DuckDB's Arrow export marks every one nullable


def _arrow_type(duck: str) -> str | None:
    if (m := _DECIMAL.fullmatch(duck)) is not None:
        return f"decimal128({m[1]}, {m[2]})"
    return ARROW_TYPES.get(duck)


def query_fingerprint(session: Session, sql: str, params: dict[str, Any] | None = None, *,
                      columns: list[Column] | None = None) -> str:
    """The schema fingerprint of a query's result, as of DuckDB's Arrow export of it. Computed from
    DESCRIBE (``columns``, if the caller has it) where every column's type has a fixed Arrow type, so
    that the run never imports pyarrow (with numpy, about a fifth of a second of a short run); anything
    else asks DuckDB for the Arrow schema."""
    if columns is None:
        columns = session.describe(sql, params)
    arrow = [_arrow_type(t) for _, t in columns]
    if all(a is not None for a in arrow):
        return fingerprint([_Field(n, str(a)) for (n, _), a in zip(columns, arrow, strict=True)])
    empty = session.con.sql(f"SELECT * FROM ({sql}) LIMIT 0", params=params or None)
    return fingerprint(empty.to_arrow_table().schema)


def manifest_for(uri: str, files: list[Path], rows: int, fmt: str = "parquet") -> Manifest:
    size = sum(f.stat().st_size for f in files)
    fp = None
    if files and fmt == "parquet":
        import pyarrow.parquet as pq  # only here: a run reading sources in place never needs pyarrow

        fp = fingerprint(pq.read_schema(files[0]))
    return Manifest(uri=uri, rows=rows, bytes=size, schema_fingerprint=fp, format=fmt, files=len(files))


def iter_chunks(seq: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
