"""Fixtures of the stream tests: one Tansu broker per module (a real Kafka-protocol broker, in memory),
topics and tables named after the test (uuid), dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from streams_support import PG_URL, tansu


@pytest.fixture(scope="module")
def kafka() -> Iterator[str]:
    with tansu() as bootstrap:
        yield bootstrap


@pytest.fixture
def pg_table() -> Iterator[tuple[sa.Engine, str]]:
    """A table name of this test's own in the PostgreSQL test database, dropped afterwards."""
    engine = sa.create_engine(PG_URL, poolclass=sa.pool.NullPool)
    name = f"h17_stream_{uuid.uuid4().hex[:10]}"
    yield engine, name
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))
    engine.dispose()
