"""Which messages of a batch the stream runner leaves out as repeats (``StreamStore.fresh``), on the
SQLite metadata store: ids of committed batches, a second copy inside a batch, RabbitMQ's redelivered
flags, and ids dropped after the source's window. The interleavings that produce repeats are in
tests/integration/streams (SQS on moto, RabbitMQ)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from udop.store import open_store
from udop.stream.source import StreamBatch
from udop.stream.store import StreamStore


@pytest.fixture
def batches(tmp_path: Path) -> Iterator[StreamStore]:
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    yield StreamStore(store)
    store.close()


def _batch(ids: list[str | None], redelivered: list[bool] | None = None) -> StreamBatch:
    rows = list(range(len(ids)))
    return StreamBatch(
        pa.table({"row": rows}), end={}, acks=[f"h{r}" for r in rows], ids=ids, redelivered=redelivered
    )


def _commit(batches: StreamStore, run_id: str, batch: StreamBatch, keep: float = 3600.0) -> None:
    batches.begin("p", run_id, {}, batch.end, batch.acks, batch.rows, ids=batch.ids, keep_ids=keep)
    batches.settle("p", run_id, "committed")


def test_ids_of_every_committed_batch_are_left_out_with_their_acks_kept(batches: StreamStore) -> None:
    _commit(batches, "r1", _batch(["a", "b"]))
    _commit(batches, "r2", _batch(["c"]))
    again = batches.fresh("p", _batch(["a", "x", "c", "x", None, None]))
    assert again is not None
    assert again.table.column("row").to_pylist() == [1, 4, 5]  # a, c (earlier batches), the second x
    assert again.ids == ["x", None, None]
    assert again.acks == ["h0", "h1", "h2", "h3", "h4", "h5"]  # the repeats are acknowledged with it
    assert batches.fresh("p", _batch(["b", "c"])) is None
    assert batches.fresh("other", _batch(["a"])) is not None  # per pipeline


def test_only_redelivered_messages_are_taken_for_repeats(batches: StreamStore) -> None:
    _commit(batches, "r1", _batch(["a"]))
    again = batches.fresh("p", _batch(["a", "a", "a"], redelivered=[False, True, False]))
    assert again is not None
    assert again.table.column("row").to_pylist() == [0, 2]  # a producer's repeated ids still load
    _commit(batches, "r2", again)  # ids kept already stay as they are


def test_ids_are_dropped_after_the_sources_window(batches: StreamStore) -> None:
    _commit(batches, "r1", _batch(["a"]))
    _commit(batches, "r2", _batch(["b"]), keep=0.0)  # a batch whose source keeps ids for 0 s prunes them
    assert batches.fresh("p", _batch(["a"])) is not None
