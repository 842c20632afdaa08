"""Claims on a stream's message ids (``StreamStore.claim``, what the stream runner on Lambda does before a
delivery's run), on SQLite and PostgreSQL: overlapping deliveries grouped differently each get only the
messages no other batch holds, committed ones are left out, a failed batch's messages are released, a
dead claimant's taken over; and on PostgreSQL a claim racing a rival's uncommitted insert of the same
message loses it once the rival commits."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest

from udop.store import open_store
from udop.stream.source import StreamBatch
from udop.stream.store import Claim, StreamStore

POSTGRES = os.environ.get("UDOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PLAIN = POSTGRES.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"s_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PLAIN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')  # type: ignore[arg-type]
    yield name
    with psycopg.connect(PLAIN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{name}" CASCADE')  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def batches(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StreamStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'meta.db'}"
    else:
        url = f"{POSTGRES}?options=-csearch_path%3D{request.getfixturevalue('schema')}"
    store = open_store(url)
    yield StreamStore(store)
    store.close()


def _batch(ids: list[str]) -> StreamBatch:
    return StreamBatch(pa.table({"id": ids}), end={}, ids=list(ids))


def _claim(batches: StreamStore, ids: list[str], stale_after: float = 900.0) -> Claim:
    return batches.claim("p", _batch(ids), stale_after=stale_after)


def _mine(claim: Claim) -> list[str]:
    return [] if claim.batch is None else claim.batch.table.column("id").to_pylist()


def _commit(batches: StreamStore, claim: Claim) -> None:
    assert claim.batch is not None
    batches.begin("p", claim.run_id, {}, {}, [], claim.batch.rows, ids=claim.batch.ids, keep_ids=3600.0)
    batches.settle("p", claim.run_id, "committed")


def test_overlapping_deliveries_each_own_what_no_other_batch_holds(batches: StreamStore) -> None:
    first = _claim(batches, ["a", "b", "c"])
    assert _mine(first) == ["a", "b", "c"] and first.busy == []
    second = _claim(batches, ["c", "d", "b", "d"])  # b and c are in flight in the first batch
    assert _mine(second) == ["d"] and second.busy == [0, 2]
    assert second.run_id != first.run_id
    assert _claim(batches, ["a", "b", "c"]).batch is None  # the same delivery, tried by another poller
    _commit(batches, first)
    third = _claim(batches, ["b", "e", "a"])  # committed ones are left out, not given back
    assert _mine(third) == ["e"] and third.busy == []
    batches.release("p", second.run_id)  # the second batch's run failed
    again = _claim(batches, ["d"])
    assert _mine(again) == ["d"] and again.run_id == second.run_id  # same messages, same run (resumed)
    assert _claim(batches, ["a", "b"]).batch is None  # nothing but repeats


def test_a_claim_left_by_a_dead_consumer_is_taken_over(batches: StreamStore) -> None:
    left = _claim(batches, ["a", "b"])
    assert _claim(batches, ["b", "c"]).busy == [0]
    taken = _claim(batches, ["b", "c"], stale_after=-1.0)  # (its claim older than the limit)
    assert _mine(taken) == ["b", "c"] and taken.busy == []
    assert _claim(batches, ["a"], stale_after=900.0).busy == [0]  # a is still the first batch's
    _commit(batches, taken)
    assert _claim(batches, ["b", "c"]).batch is None
    assert left.run_id != taken.run_id


@pytest.mark.postgres
def test_a_claim_waiting_on_a_rivals_uncommitted_insert_loses_the_message(schema: str) -> None:
    store = open_store(f"{POSTGRES}?options=-csearch_path%3D{schema}")
    try:
        batches = StreamStore(store)
        _claim(batches, ["warm"])  # tables made
        got: list[Claim | BaseException] = []
        with psycopg.connect(PLAIN, options=f"-csearch_path={schema}") as rival:
            rival.execute(
                "INSERT INTO stream_messages (pipeline, message_id, run_id, settled_at) "
                "VALUES ('p', 'x', 'rival', now())"
            )  # not committed yet: the claim below reads nothing of it, and its insert waits on it

            def claim() -> None:
                try:
                    got.append(_claim(batches, ["x", "y"]))
                except BaseException as exc:
                    got.append(exc)

            thread = threading.Thread(target=claim)
            thread.start()
            with psycopg.connect(PLAIN, autocommit=True) as watch:
                for _ in range(600):  # until the claim's insert waits on the rival's row (or it ended)
                    waiting = watch.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE 'INSERT INTO stream_messages%%'"
                    ).fetchone()
                    if (waiting and waiting[0]) or not thread.is_alive():
                        break
                    thread.join(0.05)
            assert thread.is_alive(), got  # it was waiting on the rival
            rival.commit()
            thread.join(30)
        (claimed,) = got
        assert isinstance(claimed, Claim), claimed
        assert _mine(claimed) == ["y"] and claimed.busy == [0]
    finally:
        store.close()


def test_a_committed_batch_keeps_its_ids_when_released(batches: StreamStore) -> None:
    claim = _claim(batches, ["a"])
    _commit(batches, claim)
    batches.release("p", claim.run_id)  # e.g. an error after the commit: the ids stay committed
    assert _claim(batches, ["a"]).batch is None


def _begin_kept(batches: StreamStore, claim: Claim) -> None:
    """Record the batch with its input kept (``s3://...``), as the stream runner does for a pipeline whose
    run can fail after a load committed."""
    assert claim.batch is not None
    batches.begin("p", claim.run_id, {}, {}, [], claim.batch.rows, ids=claim.batch.ids, keep_ids=3600.0,
                  input_uri=f"s3://data/runs/p/{claim.run_id}/events/")


def test_a_failed_batch_that_kept_its_input_holds_its_messages_to_be_resumed(batches: StreamStore) -> None:
    first = _claim(batches, ["a", "b", "c"])
    _begin_kept(batches, first)
    assert _claim(batches, ["a"]).busy == [0]  # its try runs
    batches.release("p", first.run_id)  # its run failed (a load may have committed): messages held
    regrouped = _claim(batches, ["a", "b", "d"])
    assert _mine(regrouped) == ["d"] and regrouped.busy == []
    assert regrouped.resume == {first.run_id: [0, 1]}  # resume that batch first; not run in this one
    assert batches.take("p", first.run_id, stale_after=900.0)
    assert not batches.take("p", first.run_id, stale_after=900.0)  # one try at a time
    assert _claim(batches, ["c"]).busy == [0]  # while the resumed try runs
    batches.settle("p", first.run_id, "committed")  # the resume committed: its claims are its ids
    assert _claim(batches, ["a", "b", "c"]).batch is None
    assert _claim(batches, ["b", "e"]).resume == {}


def test_a_dead_try_of_a_batch_that_kept_its_input_is_resumed_not_taken_over(batches: StreamStore) -> None:
    first = _claim(batches, ["a", "b"])
    _begin_kept(batches, first)  # its invocation dies here: nothing released
    assert _claim(batches, ["b", "c"]).busy == [0]
    later = _claim(batches, ["b", "c"], stale_after=-1.0)  # (its try older than the limit)
    assert _mine(later) == ["c"] and later.resume == {first.run_id: [0]}  # b is not taken over
    assert not batches.take("p", first.run_id, stale_after=900.0)  # not stale yet by that measure
    assert batches.take("p", first.run_id, stale_after=-1.0)


def test_two_deliveries_resuming_one_batch_at_once_one_wins(batches: StreamStore) -> None:
    first = _claim(batches, ["a", "b"])
    _begin_kept(batches, first)
    batches.release("p", first.run_id)
    for round_ in range(5):
        start = threading.Barrier(2)
        won: list[bool | BaseException] = []

        def take(start: threading.Barrier = start, won: list[bool | BaseException] = won) -> None:
            start.wait()
            try:
                won.append(batches.take("p", first.run_id, stale_after=900.0))
            except BaseException as exc:
                won.append(exc)

        threads = [threading.Thread(target=take) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(won, key=str) == [False, True], (round_, won)
        batches.release("p", first.run_id)  # that try failed: the batch may be taken again
