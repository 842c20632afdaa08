"""Several processes (spawned) and threads writing one metadata database at once, on both backends.

What a user depends on: concurrent `udop run`s sharing .udop/udop.db (or one Postgres) never fail
with "database is locked", never lose a row, and never let two writers make an illegal move (two
processes racing to start the same task: exactly one wins).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from store_workers import (  # type: ignore[import-not-found]  # next to this file
    DEFINITION,
    PROCESSES,
    RUNS_PER_THREAD,
    TASKS,
    THREADS,
    _fork_a_child_of_a_store,
    _in_processes,
    _open_only,
    _write_and_race,
)

from udop.states import AttemptState, RunState, TaskState
from udop.store import open_store
from udop.store.schema import HEAD

# --- tests ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_processes_and_threads_write_at_once(db_url: str, open_db: Any) -> None:
    """Each process runs threads driving its own runs and threads racing for one shared run."""
    store = open_db()  # migrated up front: this test is about writing, the migration race has its own
    version = store.register_pipeline("p", DEFINITION).version
    store.create_run(
        run_id="contended",
        pipeline="p",
        pipeline_version=version,
        task_ids=TASKS,
        params={},
        logical_date=datetime.now(UTC),
    )
    store.set_run_state("contended", RunState.RUNNING)
    prefixes = [f"proc{n}" for n in range(PROCESSES)]

    results = _in_processes(_write_and_race, [(db_url, prefix, "contended") for prefix in prefixes])

    # every run written, each through its whole lifecycle
    runs = {r.id: r for r in store.list_runs(limit=1000)}
    expected = {f"{p}-{k}-{i}" for p in prefixes for k in range(THREADS) for i in range(RUNS_PER_THREAD)}
    assert set(runs) == {*expected, "contended"}
    assert {r.state for r in runs.values()} == {RunState.SUCCEEDED}
    assert [v.version for v in store.get_pipeline("p").versions] == [1]  # concurrent registrations agree
    for run_id in sorted(expected)[::5]:
        run = store.get_run(run_id)
        assert [t.state for t in run.tasks] == [TaskState.SUCCEEDED] * len(TASKS)
        assert all(
            [(a.number, a.state) for a in t.attempts]
            == [(1, AttemptState.FAILED), (2, AttemptState.SUCCEEDED)]
            for t in run.tasks
        )
        assert sorted(lin.output_uri for lin in store.get_lineage(run_id)) == sorted(
            f"/{run_id}/{t}" for t in TASKS
        )
        assert len(store.get_checks(run_id)) == len(TASKS)

    # every contested move made exactly once; every other contender refused
    wins = [w for won, _ in results for w in won]
    assert sorted(wins) == sorted([*TASKS, "<run>"])
    contenders = PROCESSES * THREADS
    assert sum(refused for _, refused in results) == contenders * (len(TASKS) + 1) - len(wins)
    contended = store.get_run("contended")
    assert [[a.number for a in t.attempts] for t in contended.tasks] == [[1]] * len(TASKS)


def test_threads_share_one_store(store: Any) -> None:
    """The executor's worker threads and its main thread use one store object."""
    version = store.register_pipeline("p", DEFINITION).version

    def lifecycle(n: int) -> None:
        run_id = f"t{n}"
        store.create_run(
            run_id=run_id,
            pipeline="p",
            pipeline_version=version,
            task_ids=TASKS,
            params={},
            logical_date=datetime.now(UTC),
        )
        store.set_run_state(run_id, RunState.RUNNING)
        for task in TASKS:
            store.start_attempt(run_id, task, 1)
            store.finish_attempt(
                run_id, task, 1, attempt_state=AttemptState.SUCCEEDED, task_state=TaskState.SUCCEEDED
            )
        store.set_run_state(run_id, RunState.SUCCEEDED)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lifecycle, range(40)))
    runs = store.list_runs(limit=100)
    assert len(runs) == 40
    assert {r.state for r in runs} == {RunState.SUCCEEDED}


@pytest.mark.slow
def test_processes_opening_a_fresh_database_at_once_all_succeed(db_url: str) -> None:
    """The first `udop run`s on a new machine start together: one migrates, the others wait for it."""
    _in_processes(_open_only, [(db_url,)] * PROCESSES)
    store = open_store(db_url)
    try:
        assert [v.version for v in store.get_pipeline("p").versions] == [1]
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [(HEAD,)]
    finally:
        store.close()


def test_a_forked_child_can_keep_using_the_parents_store(db_url: str) -> None:
    """A fork inherits the pool; the child must open its own connections (SQLite: "do not carry an open
    database connection across a fork"; PostgreSQL: two processes on one socket), and the parent's stay
    good. (The parent is a process of its own: see _fork_a_child_of_a_store.)"""
    [seen] = _in_processes(_fork_a_child_of_a_store, [(db_url,)])
    assert seen["pooled"] >= 1  # the parent's pool held an open connection when it forked
    status, detail = seen["child"]
    assert status == "ok", detail
    assert detail == 0  # the child saw none of the parent's connections
    assert seen["exitcode"] == 0
    assert seen["runs"] == {"from-child": RunState.RUNNING.value, "from-parent": RunState.RUNNING.value}
    assert seen["child_task"] == TaskState.RUNNING.value
