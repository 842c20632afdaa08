"""Fixtures for the connector integration tests: real PostgreSQL, MariaDB, Redis, RabbitMQ on this
machine; every test works in tables/keys/queues of its own (unique names, dropped afterwards)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from connectors_support import MYSQL_URL, PG_URL, Tables

from udop.spec.models import Pipeline
from udop.state import MemoryStateStore
from udop.tasks.contract import TaskContext


@pytest.fixture
def pg() -> Iterator[Tables]:
    tables = Tables(PG_URL)
    yield tables
    tables.drop_all()


@pytest.fixture
def mysql() -> Iterator[Tables]:
    tables = Tables(MYSQL_URL)
    yield tables
    tables.drop_all()


ContextFactory = Callable[..., TaskContext]


@pytest.fixture
def context_for(tmp_path: Path) -> ContextFactory:
    """``context_for(pipeline, task_id, run_id=..., state=...)``: what an executor hands a task."""

    def make(
        pipeline: Pipeline, task_id: str, *, run_id: str = "run-1", state: Any = None, attempt: int = 1
    ) -> TaskContext:
        return TaskContext(
            pipeline=pipeline,
            task_id=task_id,
            run_id=run_id,
            attempt=attempt,
            logical_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            params={},
            data_root=str(tmp_path / "data"),
            services={"state": state if state is not None else MemoryStateStore()},
        )

    return make
