"""The API's Alembic revision chains on the store's head and builds the tables the API code defines;
the API works end to end on PostgreSQL (store, audit log, API keys in one database)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, inspect

from .conftest import Api

ROOT = Path(__file__).resolve().parents[3]
STORE_MIGRATIONS = ROOT / "shared" / "udop" / "store" / "migrations"
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _admin(sql: str, url: str = ADMIN_URL) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    name = f"udop_api_test_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _alembic(engine: Engine, script_dir: Path, target: str, *, down: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(script_dir))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, target)


def _columns(engine: Engine, table: str) -> dict[str, tuple[str, bool]]:
    cols = inspect(engine).get_columns(table)
    return {c["name"]: (type(c["type"]).__name__, bool(c["nullable"])) for c in cols}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_api_revision_follows_the_store_head_and_matches_the_api_tables(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from alembic.script import ScriptDirectory

    from udop.api.audit import API_METADATA, ensure_api_tables
    from udop.store.schema import HEAD

    scripts = tmp_path / "migrations"
    shutil.copytree(STORE_MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    chain = ScriptDirectory(str(scripts))
    assert chain.get_heads() == [HEAD], "one chain: the API revision is in it, the store's head ends it"
    assert chain.get_revision("0002").down_revision == "0001"

    url = (
        request.getfixturevalue("postgres_url") if backend == "postgres" else f"sqlite:///{tmp_path / 'm.db'}"
    )
    migrated = create_engine(url)
    _alembic(migrated, scripts, "head")
    reference = create_engine(f"sqlite:///{tmp_path / 'ref.db'}" if backend == "sqlite" else url)
    for table in ("udop_audit_log", "udop_api_keys"):
        assert inspect(migrated).has_table(table)
    # the same columns (names, types, nullability) as the tables the code writes
    if backend == "sqlite":
        ensure_api_tables(reference)
        for table in API_METADATA.tables:
            assert _columns(migrated, table) == _columns(reference, table), table
    else:
        for table in API_METADATA.tables.values():
            got = _columns(migrated, table.name)
            assert set(got) == {c.name for c in table.columns}
            assert {n: nullable for n, (_, nullable) in got.items()} == {
                c.name: c.nullable for c in table.columns
            }

    # idempotent with the API's own create-if-missing, both ways round
    ensure_api_tables(migrated)
    _alembic(migrated, scripts, "0001", down=True)
    assert not inspect(migrated).has_table("udop_audit_log")
    assert inspect(migrated).has_table("runs")  # the store's tables are untouched
    ensure_api_tables(migrated)
    _alembic(migrated, scripts, "head")  # tables already there: skipped, not an error
    migrated.dispose()
    reference.dispose()


@pytest.mark.postgres
def test_the_api_end_to_end_on_postgres(api_factory: Callable[..., Api], postgres_url: str) -> None:
    api = api_factory(database_url=postgres_url)
    assert api.register(api.definition("pg", [api.task("a", "maybe_fail")])).status_code == 201
    run_id = api.client("operator").post("/pipelines/pg/runs").json()["run_id"]
    assert api.wait_for_run(run_id, {"succeeded", "failed"})["state"] == "succeeded"
    key = api.client("admin").post("/api-keys", json={"name": "pg-svc", "role": "viewer"}).json()["key"]
    import httpx

    with httpx.Client(base_url=api.url, headers={"X-API-Key": key}) as svc:
        assert [r["id"] for r in svc.get("/runs").json()["items"]] == [run_id]
        assert svc.post("/pipelines/pg/runs").status_code == 403
    audit = api.client("admin").get("/audit").json()["items"]
    assert [(i["action"], i["status"]) for i in audit[:4]] == [
        ("trigger_run", 403),
        ("create_api_key", 201),
        ("trigger_run", 202),
        ("register_pipeline", 201),
    ]
