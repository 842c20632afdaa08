"""``udop stream`` on a Redis stream (consumer group) into PostgreSQL: entries are acknowledged only after
their batch committed; a process killed after a batch's offsets moved but before its XACK, then started
again, loads nothing twice (the committed id tells the pending entries already loaded from the rest)."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from streams_support import count_rows, definition, udop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture
def stream_key() -> Iterator[str]:
    client = redis.Redis(decode_responses=True)
    key = f"h17:stream:{uuid.uuid4().hex[:8]}"
    yield key
    client.delete(key)
    client.close()


def test_killed_between_commit_and_xack_then_restarted_loads_every_entry_once(
    stream_key: str, pg_table: tuple[sa.Engine, str], tmp_path: Path
) -> None:
    engine, table = pg_table
    client = redis.Redis(decode_responses=True)
    total = 500
    for i in range(total):
        client.xadd(stream_key, {"id": str(i), "amount": str(i % 5)})
    target = (
        "{connector: postgres, host: 127.0.0.1, port: 5432, user: postgres, database: test, "
        f"table: {table}, mode: append}}"
    )
    name = f"h17-redis-{uuid.uuid4().hex[:6]}"
    options = f"stream: '{stream_key}', columns: {{id: int, amount: int}}"
    (tmp_path / "p.yaml").write_text(
        definition(name, "{connector: redis, kind: stream}", options, target, rows=200)
    )
    group = f"udop-{stream_key}"

    first = udop(tmp_path, "stream", "p.yaml", fault="stream-offsets-committed")
    _out, err = first.communicate(timeout=120)
    assert first.returncode == -signal.SIGKILL, err
    loaded = count_rows(engine, table)
    assert 0 < loaded[0] <= 200 and loaded[0] == loaded[1]
    # committed but never acknowledged (and, read ahead by the reader thread, the next batch's entries)
    assert client.xpending(stream_key, group)["pending"] >= loaded[0]

    again = udop(tmp_path, "stream", "p.yaml")
    wait_for(lambda: count_rows(engine, table)[0] >= total, f"{total} rows in {table}")
    time.sleep(1.0)
    again.send_signal(signal.SIGTERM)
    _out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert count_rows(engine, table) == (total, total)
    assert client.xpending(stream_key, group)["pending"] == 0  # everything acknowledged after its commit
    client.close()
