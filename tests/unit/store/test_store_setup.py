"""Opening the metadata store: URLs, errors a user sees, SQLite settings, schema revisions, lifecycle sets."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

from udop.errors import StoreError, TransitionError
from udop.settings import get_settings
from udop.states import AttemptState, RunState, TaskState, check_transition
from udop.store import migrate, open_store
from udop.store.engine import mask_url, parse_url, sqlite_timestamp
from udop.store.schema import HEAD, MIGRATIONS, REVISIONS
from udop.store.sql import content_hash, predecessors
from udop.store.tables import UTCDateTime

# --- lifecycle sets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [RunState, TaskState, AttemptState])
def test_predecessor_sets_follow_check_transition(kind: type) -> None:
    for target in kind:
        expected = set()
        for current in kind:
            try:
                check_transition(current, target)
                expected.add(current.value)
            except TransitionError:
                pass
        assert set(predecessors(target)) == expected, target


def test_predecessors_of_equal_values_in_different_lifecycles_differ() -> None:
    # RunState.RUNNING == TaskState.RUNNING == "running": a cache keyed on the value alone would mix them
    assert "retrying" in predecessors(TaskState.RUNNING)
    assert "retrying" not in predecessors(RunState.RUNNING)
    assert "running" in predecessors(RunState.RUNNING)  # resumed after the process died


# --- content hash -----------------------------------------------------------------------------------------


def test_content_hash_ignores_key_order_but_not_content() -> None:
    a = {"spec": {"tasks": [{"id": "x", "type": "python"}]}, "metadata": {"name": "é"}}
    b = {"metadata": {"name": "é"}, "spec": {"tasks": [{"type": "python", "id": "x"}]}}
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash({**a, "metadata": {"name": "e"}})
    assert content_hash([1, 2]) != content_hash([2, 1])  # list order is meaning


# --- URLs and errors ---------------------------------------------------------------------------------------


def test_mask_url_hides_the_password() -> None:
    assert mask_url("postgresql://u:pa55@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert "pa55" not in mask_url("not a url://u:pa55@h")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("mysql://root@localhost/x", "only sqlite:// and postgresql:// are supported"),
        ("::::", "is not a valid URL"),
    ],
)
def test_unusable_urls_are_one_line_errors(url: str, fragment: str) -> None:
    with pytest.raises(StoreError, match=fragment) as info:
        open_store(url)
    assert "\n" not in str(info.value)


def test_postgres_urls_use_psycopg3() -> None:
    assert parse_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert parse_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert parse_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"


def test_unreachable_database_is_a_one_line_error_without_the_password() -> None:
    with pytest.raises(StoreError) as info:
        open_store("postgresql://udop:s3cret-pw@127.0.0.1:1/meta")
    message = str(info.value)
    assert "s3cret-pw" not in message
    assert "\n" not in message
    assert "postgresql+psycopg://udop:***@127.0.0.1:1/meta" in message


def test_an_explicit_sqlite_path_in_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path / 'nope' / 'meta.db'}")
    assert not (tmp_path / "nope").exists()


def test_the_default_store_lives_under_udop_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "deep" / ".udop"
    monkeypatch.setenv("UDOP_HOME", str(home))
    get_settings.cache_clear()
    store = open_store()
    try:
        store.register_pipeline("p", {"a": 1})
    finally:
        store.close()
    assert (home / "udop.db").is_file()
    with sqlite3.connect(home / "udop.db") as conn:
        assert conn.execute("SELECT name FROM pipelines").fetchall() == [("p",)]


def test_the_default_url_passed_explicitly_also_creates_udop_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API server and the CLI pass settings.resolved_database_url on: same as no URL."""
    home = tmp_path / "fresh" / ".udop"
    monkeypatch.setenv("UDOP_HOME", str(home))
    get_settings.cache_clear()
    open_store(get_settings().resolved_database_url).close()
    assert (home / "udop.db").is_file()


# --- SQLite settings ------------------------------------------------------------------------------------


def test_every_sqlite_connection_gets_the_concurrency_settings(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    try:
        seen = []

        def read_pragmas() -> None:
            with store.engine.connect() as conn:
                seen.append(
                    tuple(
                        conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                        for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
                    )
                )

        threads = [threading.Thread(target=read_pragmas) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        store.close()
    # synchronous: 1 is NORMAL
    assert seen == [("wal", 30000, 1, 1)] * 3


def test_in_memory_store_serves_several_threads() -> None:
    store = open_store("sqlite://")
    try:
        version = store.register_pipeline("p", {"a": 1}).version

        def one(n: int) -> None:
            store.create_run(
                run_id=f"r{n}",
                pipeline="p",
                pipeline_version=version,
                task_ids=["a"],
                params={},
                logical_date=datetime.now(UTC),
            )
            store.set_run_state(f"r{n}", RunState.RUNNING)

        threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r.id for r in store.list_runs(state=RunState.RUNNING)) == [f"r{n}" for n in range(8)]
    finally:
        store.close()


def test_values_that_are_not_json_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    try:
        store.register_pipeline("p", {"a": 1})
        with pytest.raises(StoreError, match=r"run 'r1'.*JSON"):
            store.create_run(
                run_id="r1",
                pipeline="p",
                pipeline_version=1,
                task_ids=["a"],
                params={"x": object()},
                logical_date=datetime.now(UTC),
            )
        assert store.get_run("r1") is None
    finally:
        store.close()


# --- schema revisions -------------------------------------------------------------------------------------


def test_revision_list_matches_the_migration_scripts() -> None:
    script = ScriptDirectory(str(MIGRATIONS))
    walked = [rev.revision for rev in script.walk_revisions()]  # newest first
    assert list(reversed(walked)) == list(REVISIONS)
    assert script.get_current_head() == HEAD


def test_a_database_from_a_newer_udop_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    assert migrate(f"sqlite:///{path}") == HEAD
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreError, match=r"revision '9999'.*upgrade udop"):
        open_store(f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("9999",)]


def test_opening_an_up_to_date_database_does_not_load_alembic(tmp_path: Path) -> None:
    """Every `udop run` opens the store: when nothing is due it costs one SELECT, not an Alembic import."""
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    migrate(url)
    code = (
        "import sys, json; from udop.store import open_store; s = open_store(sys.argv[1]); "
        "print(json.dumps(['alembic' in sys.modules, s.list_pipelines() == []]))"
    )
    env = {**os.environ, "UDOP_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code, url], capture_output=True, text=True, check=True, env=env
    )
    assert json.loads(out.stdout) == [False, True]


# --- timestamps -------------------------------------------------------------------------------------------


def test_timestamps_are_stored_as_utc() -> None:
    t = UTCDateTime()
    paris = datetime(2026, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert t.process_bind_param(paris, sqlite.dialect()) == datetime(2026, 6, 1, 12, 0)
    assert t.process_bind_param(paris, postgresql.dialect()) == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    # naive values are taken to be UTC already
    assert t.process_bind_param(datetime(2026, 6, 1, 12, 0), sqlite.dialect()) == datetime(2026, 6, 1, 12, 0)
    assert t.process_result_value(datetime(2026, 6, 1, 12, 0), sqlite.dialect()) == datetime(
        2026, 6, 1, 12, 0, tzinfo=UTC
    )
    assert t.process_result_value(paris, postgresql.dialect()).tzinfo is UTC  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 6, 1, 12, 0, tzinfo=UTC),  # no microseconds: still written with six digits
        datetime(2026, 6, 1, 14, 0, 0, 1, tzinfo=timezone(timedelta(hours=2))),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-11))),
    ],
)
def test_hot_path_timestamps_are_the_text_sqlalchemy_writes(value: datetime) -> None:
    """start/finish_attempt write SQLite text themselves; it must equal what every other write produces,
    or times would sort and compare wrongly."""
    dialect = SQLiteDialect_pysqlite()
    through_sqlalchemy = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)(value)  # type: ignore[misc]
    assert isinstance(through_sqlalchemy, str)
    assert sqlite_timestamp(value) == through_sqlalchemy


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    garbage = b"this is a spreadsheet, not a database" * 200
    path.write_bytes(garbage)
    with pytest.raises(StoreError, match="not a database") as info:
        open_store(f"sqlite:///{path}")
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)
    assert path.read_bytes() == garbage


def test_a_definition_that_is_not_json_is_refused(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    try:
        with pytest.raises(StoreError, match=r"pipeline 'p'.*JSON"):
            store.register_pipeline("p", {"when": object()})
        assert store.get_pipeline("p") is None
    finally:
        store.close()
