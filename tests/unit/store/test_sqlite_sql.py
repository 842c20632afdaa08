"""The SQL text a run on SQLite sends to sqlite3 is kept as plain strings (``udop.store.sqlite_sql``) so
that the run need not import SQLAlchemy; these hold it to what SQLAlchemy compiles from the Core
statements today, so the two cannot drift apart."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from udop.store import sql, sqlite_sql
from udop.store.statements import compiled
from udop.store.tables import runs

ROOT = Path(__file__).resolve().parents[3]


def test_every_string_is_what_sqlalchemy_compiles_today() -> None:
    today = compiled()
    kept = sqlite_sql.SQL
    assert sorted(kept) == sorted(today), "run scripts/generate_sqlite_sql.py"
    for name, (text, params) in today.items():
        assert kept[name] == (text, params), f"{name} drifted: run scripts/generate_sqlite_sql.py"


def test_the_generator_writes_the_module_as_it_is() -> None:
    # what the script renders (before formatting) holds the same statements as the module in the tree
    spec = importlib.util.spec_from_file_location("generate_sqlite_sql", ROOT / "scripts" / "generate_sqlite_sql.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    namespace: dict[str, object] = {}
    exec(compile(generator.render(), "sqlite_sql", "exec"), namespace)
    assert namespace["SQL"] == sqlite_sql.SQL


def test_run_rows_are_unpacked_in_the_tables_column_order() -> None:
    assert tuple(runs.c.keys()) == sql._RUN_COLUMNS


def test_the_sql_modules_of_the_sqlite_path_import_no_sqlalchemy() -> None:
    code = ("import sys\n"
            "import udop.store, udop.store.sql, udop.store.sqlite_reads, udop.store.schema\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy')\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
