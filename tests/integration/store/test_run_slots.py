"""max_active_runs in the metadata store: starting a run checks and takes a slot in one transaction,
so that starters racing on one pipeline cannot both get the last slot (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from udop.errors import RunLimitReached
from udop.states import RunState
from udop.store.api import RunSlot

DEFINITION = {"apiVersion": "udop/v1", "metadata": {"name": "p"}, "spec": {"tasks": [{"id": "a"}]}}


def _start(store: Any, run_id: str, slot: RunSlot) -> Any:
    return store.create_run(run_id=run_id, pipeline="p", pipeline_version=1, task_ids=["a"], params={},
                            logical_date=datetime.now(UTC), slot=slot)


def test_racing_starters_get_exactly_max_active_slots(open_db: Any) -> None:
    open_db().register_pipeline("p", DEFINITION)
    starters = 6
    barrier = threading.Barrier(starters)
    won: list[str] = []
    refused: list[str] = []

    def start(n: int) -> None:
        store = open_db()  # each starter its own store and connections, as separate processes have
        barrier.wait()
        try:
            _start(store, f"r{n}", RunSlot(owner=f"{n}@elsewhere", lease_seconds=60, max_active=2))
            won.append(f"r{n}")
        except RunLimitReached as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=start, args=(n,)) for n in range(starters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 2 and len(refused) == starters - 2
    assert all("max_active_runs is 2" in message for message in refused)
    runs = open_db().list_runs()
    assert sorted(r.id for r in runs) == sorted(won)
    assert all(r.state == RunState.RUNNING for r in runs)


def test_a_slot_frees_when_the_run_ends_or_its_lease_expires(open_db: Any) -> None:
    store = open_db()
    store.register_pipeline("p", DEFINITION)
    one = RunSlot(owner="1@elsewhere", lease_seconds=60, max_active=1)
    _start(store, "first", one)
    with pytest.raises(RunLimitReached, match="run 'first' is running in process 1@elsewhere"):
        _start(store, "second", one)
    store.set_run_state("first", RunState.SUCCEEDED)
    assert store.get_run("first").lease_expires_at is None
    _start(store, "second", RunSlot(owner="2@elsewhere", lease_seconds=0.3, max_active=1))
    assert store.renew_lease("second", "2@elsewhere", 0.3)
    assert not store.renew_lease("second", "someone-else", 60)  # only the holder renews
    time.sleep(0.4)  # the holder stopped renewing: crashed on another machine
    _start(store, "third", one)
    # a resume takes a slot too
    store.set_run_state("second", RunState.FAILED)
    with pytest.raises(RunLimitReached, match="run 'third'"):
        store.reset_for_resume("second", slot=RunSlot(owner="4@elsewhere", lease_seconds=60, max_active=1))
    assert store.get_run("second").state == RunState.FAILED
