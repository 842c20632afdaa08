"""Fixtures for the connector integration tests: real PostgreSQL, MariaDB, Redis, RabbitMQ on this
machine; every test works in tables/keys/queues of its own (unique names, dropped afterwards)."""

from __future__ import annotations

import datetime as dt
import uuid
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
def queue() -> Iterator[tuple[Any, str]]:
    """A durable RabbitMQ queue of the test's own: (a channel, its name); deleted afterwards."""
    import pika

    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    channel = conn.channel()
    name = f"udop-test-{uuid.uuid4().hex[:10]}"
    channel.queue_declare(name, durable=True)
    yield channel, name
    channel.queue_delete(name)
    conn.close()


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
