"""A cache of column lineage by query: ``udop run`` runs a pipeline's same SQL again and again, and
following a query with sqlglot (about half a second with its import) costs more than many queries.

Kept in memory and, where the folder is writable, in small JSON files under ``<UDOP_HOME>/cache/``
(a read-only home, as on Lambda, keeps the memory cache only). The key is a hash of the SQL, the
input relations' columns, the dialect and the sqlglot version, so an upgrade or a changed input never
reads an old answer. A damaged or unreadable entry is recomputed, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["LineageCache", "lineage_cache"]

ColumnLineage = dict[str, list[tuple[str, str]]]

#: raised when the cached form or the way lineage is followed changes
FORMAT = 1
#: entries kept in memory (a long-lived server or a warm Lambda sees a bounded set of queries)
MEMORY_ENTRIES = 512


def _sqlglot_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sqlglot")
    except PackageNotFoundError:
        return "none"


class LineageCache:
    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._memory: dict[str, ColumnLineage] = {}
        self._lock = threading.Lock()
        self._version: str | None = None

    def key(self, sql: str, columns: Mapping[str, Sequence[str]], dialect: str) -> str:
        if self._version is None:
            self._version = _sqlglot_version()
        relations = sorted((k, list(v)) for k, v in columns.items())
        body = json.dumps([FORMAT, self._version, dialect, sql, relations], separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()

    def _file(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> ColumnLineage | None:
        with self._lock:
            hit = self._memory.get(key)
        if hit is not None:
            return {c: list(s) for c, s in hit.items()}
        file = self._file(key)
        if file is None:
            return None
        try:
            body = json.loads(file.read_text())
            found = {str(c): [(str(r), str(n)) for r, n in sources] for c, sources in body.items()}
        except (OSError, ValueError, TypeError, AttributeError):
            return None
        self._remember(key, found)
        return {c: list(s) for c, s in found.items()}

    def put(self, key: str, value: ColumnLineage) -> None:
        self._remember(key, value)
        file = self._file(key)
        if file is None:
            return
        tmp = file.parent / f".{file.name}.{uuid.uuid4().hex[:8]}"
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(value, separators=(",", ":")))
            os.replace(tmp, file)  # whole or not at all: a concurrent reader never sees half a file
        except OSError:  # a read-only home: the memory cache is enough
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    def _remember(self, key: str, value: ColumnLineage) -> None:
        with self._lock:
            if len(self._memory) >= MEMORY_ENTRIES:
                self._memory.pop(next(iter(self._memory)))
            self._memory[key] = {c: list(s) for c, s in value.items()}


_caches: dict[Path | None, LineageCache] = {}
_caches_lock = threading.Lock()


def lineage_cache() -> LineageCache:
    """The cache in the current settings' home (one per home, kept for the process)."""
    from udop.errors import ConfigError
    from udop.settings import get_settings

    try:
        folder: Path | None = Path(get_settings().home).absolute() / "cache" / "column-lineage"
    except ConfigError:
        folder = None
    with _caches_lock:
        if folder not in _caches:
            _caches[folder] = LineageCache(folder)
        return _caches[folder]
