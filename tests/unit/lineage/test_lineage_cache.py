"""Column lineage is remembered by query: a run of the same SQL over the same input columns reads the
answer back instead of following the query with sqlglot again; anything else is computed afresh."""

from __future__ import annotations

import json
from pathlib import Path

from udop.lineage import cache as cache_module
from udop.lineage.cache import LineageCache, lineage_cache
from udop.lineage.columns import column_lineage

SQL = ("WITH s0 AS (SELECT region, amount * 2 AS twice FROM orders) "
       "SELECT region, sum(twice) AS total FROM s0 GROUP BY region")
COLUMNS = {"orders": ["id", "region", "amount"]}
EXPECTED = {"region": [("orders", "region")], "total": [("orders", "amount")]}


def test_the_answer_is_kept_under_udop_home_and_read_back(monkeypatch) -> None:
    assert column_lineage(SQL, COLUMNS) == EXPECTED
    folder = lineage_cache().folder
    assert folder is not None
    files = list(folder.rglob("*.json"))
    assert len(files) == 1
    # a new process (an empty memory cache) reads the file: the query is not followed again
    monkeypatch.setattr(cache_module, "_caches", {})
    monkeypatch.setattr("udop.lineage.columns._follow", lambda *a: {"never": []})
    assert column_lineage(SQL, COLUMNS) == EXPECTED


def test_other_input_columns_or_sql_are_other_entries(monkeypatch) -> None:
    cache = LineageCache(None)
    key = cache.key(SQL, COLUMNS, "duckdb")
    assert key != cache.key(SQL, {"orders": ["id", "region", "amount", "note"]}, "duckdb")
    assert key != cache.key(SQL + " ORDER BY region", COLUMNS, "duckdb")
    assert key != cache.key(SQL, COLUMNS, "postgres")
    monkeypatch.setattr(cache_module, "FORMAT", cache_module.FORMAT + 1)
    assert key != cache.key(SQL, COLUMNS, "duckdb")


def test_a_damaged_entry_is_computed_again(tmp_path: Path) -> None:
    cache = LineageCache(tmp_path)
    key = cache.key(SQL, COLUMNS, "duckdb")
    cache.put(key, EXPECTED)
    file = next(tmp_path.rglob("*.json"))
    assert {c: [tuple(s) for s in v] for c, v in json.loads(file.read_text()).items()} == EXPECTED
    file.write_text("{not json")
    assert LineageCache(tmp_path).get(key) is None


def test_an_unwritable_folder_keeps_the_memory_cache(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    cache = LineageCache(blocked / "cache")  # below a file: cannot be created
    cache.put("k" * 64, EXPECTED)
    assert cache.get("k" * 64) == EXPECTED
