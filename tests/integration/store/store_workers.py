"""Bodies of the processes spawned by test_store_concurrency.py.

Kept apart from the test module so that a spawned child imports only this (not pytest).
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

# imported here, before a spawned child waits at the start line, so that the processes really collide on
# the migration itself rather than on imports
import alembic.command  # noqa: F401

import udop.store.sql  # noqa: F401
from udop.errors import TransitionError
from udop.states import AttemptState, RunState, TaskState
from udop.store import open_store

DEFINITION = {"apiVersion": "udop/v1", "metadata": {"name": "p"}, "spec": {"tasks": [{"id": "a"}]}}
TASKS = ["extract", "transform", "load"]
PROCESSES = 3
THREADS = 3
RUNS_PER_THREAD = 4


def _lifecycles(store: Any, prefix: str, k: int, version: int) -> None:
    """Drive whole runs from pending to succeeded, with a retry in every task."""
    for i in range(RUNS_PER_THREAD):
        run_id = f"{prefix}-{k}-{i}"
        store.create_run(
            run_id=run_id,
            pipeline="p",
            pipeline_version=version,
            task_ids=TASKS,
            params={"i": i},
            logical_date=datetime.now(UTC),
        )
        store.set_run_state(run_id, RunState.RUNNING, owner=f"{prefix}@test")
        for task in TASKS:
            store.start_attempt(run_id, task, 1)
            store.finish_attempt(
                run_id,
                task,
                1,
                attempt_state=AttemptState.FAILED,
                task_state=TaskState.RETRYING,
                error_type="X",
                error_message="retry",
            )
            store.start_attempt(run_id, task, 2)
            store.finish_attempt(
                run_id,
                task,
                2,
                attempt_state=AttemptState.SUCCEEDED,
                task_state=TaskState.SUCCEEDED,
                result={
                    "output": {"uri": f"/{run_id}/{task}", "rows": i},
                    "inputs": [],
                    "checks": [{"rule": "r", "severity": "warn", "passed": True}],
                },
            )
        store.set_run_state(run_id, RunState.SUCCEEDED)


class _Race:
    """Moves won and refused by the contending threads of one process."""

    def __init__(self) -> None:
        self.won: list[str] = []
        self.refused = 0
        self.lock = threading.Lock()

    def attempt(self, move: str, do: Any) -> bool:
        try:
            do()
        except TransitionError:
            with self.lock:
                self.refused += 1
            return False
        with self.lock:
            self.won.append(move)
        return True


def _contend(store: Any, run_id: str, race: _Race) -> None:
    """Try to start attempt 1 of every task of the shared run, and to finish the run."""
    for task in TASKS:
        if race.attempt(task, lambda task=task: store.start_attempt(run_id, task, 1)):
            store.finish_attempt(
                run_id, task, 1, attempt_state=AttemptState.SUCCEEDED, task_state=TaskState.SUCCEEDED
            )
    race.attempt("<run>", lambda: store.set_run_state(run_id, RunState.SUCCEEDED))


def _write_and_race(url: str, prefix: str, contended: str, start: Any, out: Any) -> None:
    """In threads at once: some drive this process's own runs, others race for the shared run."""
    try:
        store = open_store(url)
        start.wait(timeout=60)
        version = store.register_pipeline("p", DEFINITION).version
        race = _Race()
        with ThreadPoolExecutor(2 * THREADS) as pool:
            futures = [pool.submit(_lifecycles, store, prefix, k, version) for k in range(THREADS)]
            futures += [pool.submit(_contend, store, contended, race) for _ in range(THREADS)]
            for f in futures:
                f.result()
        store.close()
        out.put(("ok", (race.won, race.refused)))
    except BaseException:
        out.put(("error", traceback.format_exc()))


def _open_only(url: str, start: Any, out: Any) -> None:
    try:
        start.wait(timeout=60)
        store = open_store(url)
        store.register_pipeline("p", DEFINITION)
        store.close()
        out.put(("ok", None))
    except BaseException:
        out.put(("error", traceback.format_exc()))


def _in_processes(target: Any, args_for: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``target(*args, start, out)`` in spawned processes released together; return their results."""
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, start, out)) for args in args_for]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [detail for status, detail in results if status != "ok"]
    assert not errors, errors[0]
    assert all(p.exitcode == 0 for p in procs)
    return [detail for _, detail in results]


def _write_in_forked_child(store: Any, out: Any) -> None:
    """Runs in a fork: uses the parent's store object (and so its engine) as a forked worker would."""
    try:
        inherited = store.engine.pool.checkedin()  # connections of the parent's pool usable here
        store.create_run(
            run_id="from-child",
            pipeline="p",
            pipeline_version=1,
            task_ids=TASKS,
            params={},
            logical_date=datetime.now(UTC),
        )
        store.set_run_state("from-child", RunState.RUNNING)
        store.start_attempt("from-child", TASKS[0], 1)
        out.put(("ok", inherited))
    except BaseException:
        out.put(("error", traceback.format_exc()))


def _fork_a_child_of_a_store(url: str, start: Any, out: Any) -> None:
    """Runs in a spawned (so single-threaded) process: opens a store, writes, forks a child that keeps
    using the same store object, then writes again; reports what it saw.

    Not forked from the test process itself: a pytest-xdist worker runs threads of its own (execnet's,
    and whatever earlier tests left running), and a fork copies any lock such a thread holds at that
    moment (an import's module lock, a buffered stream's) held forever in the child, which then hangs
    on a loaded machine; a process that forks workers forks before it starts threads.
    """
    try:
        start.wait(timeout=60)
        store = open_store(url)
        assert store.register_pipeline("p", DEFINITION).version == 1
        store.create_run(
            run_id="from-parent",
            pipeline="p",
            pipeline_version=1,
            task_ids=TASKS,
            params={},
            logical_date=datetime.now(UTC),
        )
        pooled = store.engine.pool.checkedin()  # the pool now holds an open connection
        ctx = mp.get_context("fork")
        child_out = ctx.SimpleQueue()  # no feeder thread: this process stays single-threaded
        child = ctx.Process(target=_write_in_forked_child, args=(store, child_out))
        child.start()
        child.join()  # the child ends after its one answer; its exit is the event waited on
        status, detail = child_out.get() if not child_out.empty() else ("error", "the child said nothing")
        store.set_run_state("from-parent", RunState.RUNNING)  # the parent's pooled connection still works
        store.start_attempt("from-parent", TASKS[0], 1)
        runs = {r.id: r.state.value for r in store.list_runs()}
        child_task = store.get_run("from-child").tasks[0].state.value if "from-child" in runs else None
        store.close()
        out.put(("ok", {"pooled": pooled, "child": (status, detail), "exitcode": child.exitcode,
                        "runs": runs, "child_task": child_task}))
    except BaseException:
        out.put(("error", traceback.format_exc()))
