"""The in-memory and SQLite state stores pass the shared contract; SQLite also across processes."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from udop.errors import ConfigError
from udop.state import MemoryStateStore, open_state_store
from udop.state.sqlite import SQLiteStateStore
from udop.state.testing import StateStoreContract


class TestMemoryStateStore(StateStoreContract):
    @pytest.fixture
    def store(self) -> MemoryStateStore:
        return MemoryStateStore()


class TestSQLiteStateStore(StateStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLiteStateStore]:
        s = SQLiteStateStore(tmp_path / "state.db")
        yield s
        s.close()


def _bump(path: str, n: int) -> None:
    store = SQLiteStateStore(path)
    for _ in range(n):
        store.incr("shared")
    store.close()


def test_sqlite_state_is_shared_between_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_bump, args=(path, 40)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    store = SQLiteStateStore(path)
    assert store.get("shared") == "80"
    store.close()


def test_sqlite_state_survives_reopen(tmp_path: Path) -> None:
    store = SQLiteStateStore(tmp_path / "s.db")
    store.set("wm", "41")
    store.close()
    again = SQLiteStateStore(tmp_path / "s.db")
    assert again.get("wm") == "41"
    again.close()


def test_open_state_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_state_store("memory://"), MemoryStateStore)
    s = open_state_store(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(s, SQLiteStateStore)
    s.close()
    assert (tmp_path / "x.db").exists()
    with pytest.raises(ConfigError, match="UDOP_STATE_URL") as info:
        open_state_store("mongodb://user:hunter2@host/db")
    assert "hunter2" not in str(info.value)


def test_sqlite_sweeps_expired_values_on_open(tmp_path: Path) -> None:
    store = SQLiteStateStore(tmp_path / "s.db")
    store.set("short", "x", ttl=0.05)
    store.set("long", "y", ttl=3600)
    store.close()
    time.sleep(0.1)
    SQLiteStateStore(tmp_path / "s.db").close()
    import sqlite3

    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert [r[0] for r in conn.execute("SELECT key FROM udop_state")] == ["long"]
