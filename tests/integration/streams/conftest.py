"""Fixtures of the stream tests: one Tansu broker per module (a real Kafka-protocol broker, in memory),
topics and tables named after the test (uuid), dropped afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from streams_support import tansu


@pytest.fixture(scope="module")
def kafka() -> Iterator[str]:
    with tansu() as bootstrap:
        yield bootstrap
