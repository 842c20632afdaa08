"""A state store in one SQLite file: the embedded default, shared by the processes of one machine.

Each write runs in a ``BEGIN IMMEDIATE`` transaction, so read-check-write operations
(``set_if_absent``, ``compare_and_set``, ``incr``) are atomic across threads and processes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from udop.errors import StoreError
from udop.state.api import Lock

__all__ = ["SQLiteStateStore"]

T = TypeVar("T")

_SCHEMA = "CREATE TABLE IF NOT EXISTS udop_state (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL)"


class SQLiteStateStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            from udop.store.engine import create_private_file

            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            create_private_file(self.path)  # watermarks and task state: the owner's alone
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self._tx(lambda c: c.execute(_SCHEMA))
        # expired values are skipped on read; sweep them on open so the file does not only grow
        self._tx(lambda c: c.execute("DELETE FROM udop_state WHERE expires <= ?", (time.time(),)))

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise StoreError(f"state store {self.path}: cannot open ({exc})") from None
            self._local.conn = conn
            with self._guard:
                self._all.append(conn)
        return conn

    def _tx(self, body: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self.path}: {exc}") from None

    @staticmethod
    def _live(conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value, expires FROM udop_state WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        if row[1] is not None and row[1] <= time.time():
            conn.execute("DELETE FROM udop_state WHERE key = ?", (key,))
            return None
        return str(row[0])

    @staticmethod
    def _put(conn: sqlite3.Connection, key: str, value: str, ttl: float | None) -> None:
        expires = None if ttl is None else time.time() + ttl
        conn.execute(
            "INSERT INTO udop_state (key, value, expires) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires = excluded.expires",
            (key, value, expires),
        )

    def get(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value, expires FROM udop_state WHERE key = ?", (key,)).fetchone()
        if row is None or (row[1] is not None and row[1] <= time.time()):
            return None
        return str(row[0])

    def set(self, key: str, value: str, *, ttl: float | None = None) -> None:
        self._tx(lambda c: self._put(c, key, value, ttl))

    def set_if_absent(self, key: str, value: str, *, ttl: float | None = None) -> bool:
        def body(c: sqlite3.Connection) -> bool:
            if self._live(c, key) is not None:
                return False
            self._put(c, key, value, ttl)
            return True

        return self._tx(body)

    def compare_and_set(
        self, key: str, expected: str | None, value: str, *, ttl: float | None = None
    ) -> bool:
        def body(c: sqlite3.Connection) -> bool:
            if self._live(c, key) != expected:
                return False
            self._put(c, key, value, ttl)
            return True

        return self._tx(body)

    def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        def body(c: sqlite3.Connection) -> int:
            current = self._live(c, key)
            if current is None:
                self._put(c, key, str(amount), ttl)
                return amount
            try:
                new = int(current) + amount
            except ValueError:
                raise StoreError(f"state key {key!r} does not hold an integer") from None
            c.execute("UPDATE udop_state SET value = ? WHERE key = ?", (str(new), key))
            return new

        return self._tx(body)

    def delete(self, key: str) -> bool:
        def body(c: sqlite3.Connection) -> bool:
            present = self._live(c, key) is not None
            c.execute("DELETE FROM udop_state WHERE key = ?", (key,))
            return present

        return self._tx(body)

    def delete_if_equals(self, key: str, expected: str) -> bool:
        def body(c: sqlite3.Connection) -> bool:
            if self._live(c, key) != expected:
                return False
            c.execute("DELETE FROM udop_state WHERE key = ?", (key,))
            return True

        return self._tx(body)

    def lock(self, name: str, *, ttl: float = 60.0, wait: float = 0.0) -> Lock:
        return Lock(self, name, ttl=ttl, wait=wait)

    def close(self) -> None:
        with self._guard:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
