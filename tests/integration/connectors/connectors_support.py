"""Helpers for the connector integration tests, imported by name (test folders are not packages):
every test works in tables of its own (unique names, dropped afterwards)."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from udop.spec.models import Pipeline

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
PG = {"connector": "postgres", "host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "test"}
MYSQL = {"connector": "mysql", "host": "127.0.0.1", "port": 3306, "user": "root", "database": "test"}


class Tables:
    """Unique table names in one database, dropped when the test ends."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.names: list[str] = []

    def new(self, stem: str = "t") -> str:
        name = f"udop_{stem}_{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        return name

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self.engine.begin() as conn:
            result = conn.execute(sa.text(sql), params or {})
            return [tuple(r) for r in result] if result.returns_rows else []

    def drop_all(self) -> None:
        q = self.engine.dialect.identifier_preparer.quote
        with self.engine.begin() as conn:
            for name in self.names:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {q(name)}"))
        self.engine.dispose()


def make_pipeline(
    tasks: list[dict[str, Any]], connections: dict[str, Any] | None = None, name: str | None = None
) -> Pipeline:
    return Pipeline.model_validate(
        {
            "apiVersion": "udop/v1",
            "kind": "Pipeline",
            "metadata": {"name": name or f"p-{uuid.uuid4().hex[:8]}"},
            "spec": {"connections": connections or {}, "tasks": tasks},
        }
    )
