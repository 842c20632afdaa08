"""The Celery executor under the faults of a cluster: real ``udop worker`` processes on the shared Redis,
metadata on PostgreSQL (a schema of its own), a worker SIGKILLed after its load committed, the
coordinator SIGKILLed mid-run and resumed, queues routing tasks to their workers, a per-task memory
limit, a fused transform and load computed by one worker (and redelivered), and SQLite refused. The
conformance suite runs every scenario on this executor too."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from udop.states import AttemptState, RunState, TaskState

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from support.celery_cluster import UDOP, Cluster

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]
HERE = Path(__file__).resolve().parent
ROWS = 2_500


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    made = Cluster(tmp_path_factory.mktemp("celery"))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def workers(cluster: Cluster) -> Iterator[Cluster]:
    """The module's cluster; the workers a test starts are gone after it."""
    started = len(cluster.workers)
    yield cluster
    for process in cluster.workers[started:]:
        if process.poll() is None:
            Cluster.kill(process)
    del cluster.workers[started:]


def _pipeline(tmp: Path, name: str, tasks: str) -> Path:
    path = tmp / f"{name}.yaml"
    (tmp / "celery_tasks.py").write_text((HERE / "celery_tasks.py").read_text())  # `udop run` imports it
    path.write_text(f"apiVersion: udop/v1\nkind: Pipeline\nmetadata: {{name: {name}}}\nspec:\n"
                    f"  defaults: {{retry: {{max_attempts: 2, base_delay: 50ms, jitter: none}}}}\n"
                    f"  tasks:\n{tasks}")
    return path


def _load(db: Path, after: str) -> str:
    return (f"    - {{id: publish, type: load, depends_on: [{after}], "
            f"target: {{connector: sqlite, database: '{db}', table: dst, mode: append}}}}\n")


def _count(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        found = conn.execute("SELECT count(*), count(DISTINCT id) FROM dst").fetchone()
    return int(found[0]), int(found[1])


def _has_rows(db: Path) -> bool:
    try:
        return _count(db)[0] > 0
    except sqlite3.Error:
        return False


def _until(what: Callable[[], bool], timeout: float = 90.0, why: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {why or what}")
        time.sleep(0.05)


def _executor(cluster: Cluster, tmp: Path) -> Any:
    from udop.executor.celery import CeleryExecutor
    from udop.store import open_store

    return CeleryExecutor(open_store(cluster.database_url), app=cluster.app, settings=cluster.settings(),
                          workers=2, data_root=cluster.data_root, services={"base_dir": str(HERE)})


def _in_thread(executor: Any, path: Path) -> tuple[threading.Thread, list[Any]]:
    from udop.spec.loader import load_pipeline

    pipeline = load_pipeline(str(path))
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(executor.run(pipeline, params={})), daemon=True)
    thread.start()
    return thread, out


def _attempts(record: Any, task_id: str) -> list[tuple[str, str | None]]:
    task = next(t for t in record.tasks if t.task_id == task_id)
    return [(a.state.value, a.error_type) for a in task.attempts]


def test_a_worker_killed_after_its_load_committed_is_replaced_and_the_rows_load_once(
        workers: Cluster, tmp_path: Path) -> None:
    db = tmp_path / "dst.db"
    path = _pipeline(tmp_path, "killed-worker", f"    - {{id: rows, type: python, callable: 'celery_tasks:rows', "
                                                f"args: {{n: {ROWS}}}}}\n" + _load(db, "rows"))
    # this worker's task process SIGKILLs itself once the load's rows and ledger entry committed
    # a short visibility timeout: a task taken by a killed worker comes back within seconds (it must
    # exceed the longest attempt, or a running attempt is delivered twice: see docs/executors.md)
    short = {"UDOP_CELERY_VISIBILITY_TIMEOUT": "4"}
    doomed = workers.start_worker("doomed", env={**short, "UDOP_FAULT_INJECT": "load-committed"})
    executor = _executor(workers, tmp_path)
    thread, out = _in_thread(executor, path)
    _until(lambda: _has_rows(db), why="the load to commit")
    Cluster.kill(doomed)  # the whole worker, mid-task: its delivery is never acknowledged
    workers.start_worker("rescuer", env=short)  # takes the task back once the visibility timeout passes
    thread.join(120)
    assert out, "the run did not end"
    record = executor.store.get_run(out[0].id)
    assert record.state == RunState.SUCCEEDED
    # delivered again to the other worker and recorded once: one attempt, found in the load ledger
    assert _attempts(record, "publish") == [("succeeded", None)]
    publish = next(t for t in record.tasks if t.task_id == "publish")
    assert publish.result["metrics"]["ledger"] == "already loaded"
    assert _count(db) == (ROWS, ROWS)
    executor.store.close()


def test_a_worker_killed_mid_task_has_its_task_delivered_to_another_and_the_attempt_recorded_once(
        workers: Cluster, tmp_path: Path) -> None:
    db = tmp_path / "dst.db"
    marks = tmp_path / "marks"
    marks.mkdir()
    path = _pipeline(tmp_path, "worker-killed-mid-task",
                     f"    - {{id: rows, type: python, callable: 'celery_tasks:rows', args: {{n: {ROWS}}}}}\n"
                     f"    - {{id: held, type: python, callable: 'celery_tasks:held', depends_on: [rows], "
                     f"args: {{marks: '{marks}', source: rows}}}}\n" + _load(db, "held"))
    short = {"UDOP_CELERY_VISIBILITY_TIMEOUT": "4"}
    first = workers.start_worker("first", env=short)
    executor = _executor(workers, tmp_path)
    thread, out = _in_thread(executor, path)
    _until((marks / "started-1").exists, why="'held' to start on the first worker")
    killed_pid = (marks / "started-1").read_text()
    Cluster.kill(first)  # SIGKILL of the worker and its task process, in the middle of 'held'
    (marks / "started-1").unlink()
    (marks / "release").write_text("go")
    workers.start_worker("second", env=short)
    thread.join(120)
    assert out and out[0].state == RunState.SUCCEEDED
    record = executor.store.get_run(out[0].id)
    assert _attempts(record, "held") == [("succeeded", None)]  # delivered twice, one attempt
    assert (marks / "started-1").read_text() != killed_pid  # computed again, by the second worker
    assert _count(db) == (ROWS, ROWS)
    executor.store.close()


def test_the_coordinator_killed_mid_run_is_resumed_and_the_killed_attempt_never_finishes(
        workers: Cluster, tmp_path: Path) -> None:
    db = tmp_path / "dst.db"
    marks = tmp_path / "marks"
    marks.mkdir()
    path = _pipeline(tmp_path, "killed-coordinator",
                     f"    - {{id: rows, type: python, callable: 'celery_tasks:rows', args: {{n: {ROWS}}}}}\n"
                     f"    - {{id: held, type: python, callable: 'celery_tasks:held', depends_on: [rows], "
                     f"args: {{marks: '{marks}', source: rows}}}}\n" + _load(db, "held"))
    workers.start_worker("steady")
    run_id = "coordinator-killed-1"
    command = [UDOP, "run", str(path), "--executor", "celery", "--no-progress"]
    first = subprocess.Popen([*command, "--run-id", run_id], env=workers.env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _until((marks / "started-1").exists, why="attempt 1 of 'held' to start on the worker")
    first.kill()  # SIGKILL: no cleanup, the run stays 'running' in the metadata store
    first.communicate(timeout=30)

    resumed = subprocess.Popen([*command, "--resume", run_id], env=workers.env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _until((marks / "started-2").exists, why="attempt 2 of 'held' to start")
    (marks / "release").write_text("go")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err

    from udop.store import open_store

    store = open_store(workers.database_url)
    record = store.get_run(run_id)
    store.close()
    assert record is not None and record.state == RunState.SUCCEEDED
    # the attempt left running by the dead coordinator: abandoned, and its worker process stopped
    assert [a.state for a in next(t for t in record.tasks if t.task_id == "held").attempts] == [
        AttemptState.ABANDONED, AttemptState.SUCCEEDED]
    assert not (marks / "done-1").exists()
    assert _attempts(record, "rows") == [("succeeded", None)]  # done before the kill: not run again
    assert _count(db) == (ROWS, ROWS)


def test_a_task_naming_a_queue_runs_on_that_queues_workers(workers: Cluster, tmp_path: Path) -> None:
    path = _pipeline(tmp_path, "routed",
                     "    - {id: anywhere, type: python, callable: 'celery_tasks:where'}\n"
                     "    - {id: heavy, type: python, callable: 'celery_tasks:where', queue: big-memory}\n")
    workers.start_worker("general", env={"UDOP_TEST_WORKER": "general"})
    workers.start_worker("big", "--queues", "big-memory", env={"UDOP_TEST_WORKER": "big"})
    executor = _executor(workers, tmp_path)
    thread, out = _in_thread(executor, path)
    thread.join(90)
    assert out and out[0].state == RunState.SUCCEEDED
    values = {t.task_id: t.result["value"] for t in executor.store.get_run(out[0].id).tasks}
    assert values == {"anywhere": {"worker": "general"}, "heavy": {"worker": "big"}}
    executor.store.close()


def test_a_task_past_the_workers_memory_limit_fails_with_memory_error(workers: Cluster, tmp_path: Path) -> None:
    path = _pipeline(tmp_path, "hungry",
                     "    - {id: hungry, type: python, callable: 'celery_tasks:hungry', args: {mb: 6000}, "
                     "retry: {max_attempts: 1}}\n")
    workers.start_worker("capped", "--max-memory-per-task", "3G")
    executor = _executor(workers, tmp_path)
    thread, out = _in_thread(executor, path)
    thread.join(90)
    assert out and out[0].state == RunState.FAILED
    record = executor.store.get_run(out[0].id)
    assert _attempts(record, "hungry") == [("failed", "MemoryError")]
    assert next(t for t in record.tasks if t.task_id == "hungry").state == TaskState.FAILED
    executor.store.close()


def test_a_sqlite_metadata_store_is_refused_with_one_line(tmp_path: Path) -> None:
    path = _pipeline(tmp_path, "on-sqlite", "    - {id: rows, type: python, callable: 'celery_tasks:rows', "
                                           "args: {n: 1}}\n")
    env = {"PATH": "/usr/bin:/bin", "UDOP_HOME": str(tmp_path / "home"),
           "UDOP_CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}  # nothing listens: never reached
    done = subprocess.run([UDOP, "run", str(path), "--executor", "celery", "--no-progress"], env=env, check=False,
                          cwd=HERE, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "--executor celery needs a metadata store every worker reaches: set "
        "UDOP_DATABASE_URL=postgresql://... (a SQLite file is one machine's; UDOP_CELERY_SINGLE_MACHINE=1 "
        "allows it when all workers run here)"]


def test_the_api_launcher_runs_on_workers_and_cancels_the_attempt_they_compute(
        workers: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from udop.api.launcher import CeleryLauncher
    from udop.sandbox import Policy
    from udop.spec.loader import load_pipeline
    from udop.store import open_store

    for name in ("UDOP_CELERY_BROKER_URL", "UDOP_CELERY_PREFIX"):
        monkeypatch.setenv(name, workers.env[name])
    marks = tmp_path / "marks"
    marks.mkdir()
    path = _pipeline(tmp_path, "through-api",
                     f"    - {{id: rows, type: python, callable: 'celery_tasks:rows', args: {{n: 10}}}}\n"
                     f"    - {{id: held, type: python, callable: 'celery_tasks:held', depends_on: [rows], "
                     f"args: {{marks: '{marks}', source: rows}}}}\n")
    workers.start_worker("api", env={"UDOP_CODE_DIR": str(HERE)})  # as a server, python tasks come from there
    store = open_store(workers.database_url)
    launcher = CeleryLauncher(store, workers=2, data_root=workers.data_root, policy=Policy.trusted())
    pipeline = load_pipeline(str(path))
    run = launcher.trigger(pipeline, params={}, logical_date=None, run_id="through-api-1")
    _until((marks / "started-1").exists, why="'held' to start on the worker")
    cancelled = launcher.cancel(run, reason="stopped by an operator")
    assert cancelled.state == RunState.CANCELLED
    assert _attempts(cancelled, "rows") == [("succeeded", None)]
    assert _attempts(cancelled, "held") == [("abandoned", "Cancelled")]
    time.sleep(1.0)  # the worker's process is killed by the revoke: 'held' never finishes
    (marks / "release").write_text("go")
    time.sleep(1.0)
    assert not (marks / "done-1").exists()
    launcher.close()
    store.close()


def test_a_server_mode_worker_computes_only_on_its_own_data_root(workers: Cluster, tmp_path: Path) -> None:
    from udop.executor.celery import CeleryExecutor
    from udop.spec.loader import load_pipeline
    from udop.store import open_store

    path = _pipeline(tmp_path, "server-mode", "    - {id: rows, type: python, callable: 'celery_tasks:rows', "
                                              "args: {n: 3}, retry: {max_attempts: 1}}\n")
    # no --trusted: the server policy over the worker's data root, python modules from UDOP_CODE_DIR
    workers.start_worker("server", trusted=False, env={"UDOP_CODE_DIR": str(HERE)})
    store = open_store(workers.database_url)
    records = {}
    for root in (workers.data_root, str(tmp_path / "elsewhere")):
        executor = CeleryExecutor(store, app=workers.app, settings=workers.settings(), workers=2, data_root=root)
        records[root] = store.get_run(executor.run(load_pipeline(str(path)), params={}).id)
    assert records[workers.data_root].state == RunState.SUCCEEDED
    elsewhere = records[str(tmp_path / "elsewhere")]
    assert _attempts(elsewhere, "rows") == [("failed", "udop.FatalError")]
    assert "coordinator and workers must share one data root" in (elsewhere.tasks[0].error_message or "")
    assert not (tmp_path / "elsewhere").exists()  # nothing written outside the worker's root
    store.close()


def test_an_attempt_whose_process_dies_each_time_fails_after_a_few_deliveries(
        workers: Cluster, tmp_path: Path) -> None:
    from udop.executor.celery import MAX_DELIVERIES

    marks = tmp_path / "marks"
    marks.mkdir()
    path = _pipeline(tmp_path, "poison", f"    - {{id: dies, type: python, callable: 'celery_tasks:dies', "
                                         f"args: {{marks: '{marks}'}}, retry: {{max_attempts: 1}}}}\n")
    workers.start_worker("poisoned")
    executor = _executor(workers, tmp_path)
    thread, out = _in_thread(executor, path)
    thread.join(120)
    assert out and out[0].state == RunState.FAILED
    record = executor.store.get_run(out[0].id)
    assert _attempts(record, "dies") == [("failed", "udop.FatalError")]
    assert f"delivered {MAX_DELIVERIES + 1} times" in (record.tasks[0].error_message or "")
    assert (marks / "deliveries").read_text() == "x" * MAX_DELIVERIES  # ran each time until the limit
    executor.store.close()


def test_an_unreachable_broker_is_one_line_and_the_run_can_be_resumed(workers: Cluster, tmp_path: Path) -> None:
    path = _pipeline(tmp_path, "no-broker", "    - {id: rows, type: python, callable: 'celery_tasks:rows', "
                                           "args: {n: 4}}\n")
    env = {**workers.env, "UDOP_CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}  # nothing listens there
    command = [UDOP, "run", str(path), "--executor", "celery", "--no-progress"]
    done = subprocess.run([*command, "--run-id", "no-broker-1"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, check=False, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "the Celery broker redis://127.0.0.1:1/0 cannot be reached (")
    assert "Traceback" not in done.stderr
    workers.start_worker("after-outage")
    again = subprocess.run([*command, "--resume", "no-broker-1"], env=workers.env, cwd=tmp_path,
                           capture_output=True, text=True, check=False, timeout=120)
    assert again.returncode == 0, again.stderr


def _fused_chain(tmp: Path, name: str, db: Path) -> Path:
    return _pipeline(tmp, name, f"    - {{id: rows, type: python, callable: 'celery_tasks:rows', args: {{n: {ROWS}}}}}\n"
                                f"    - {{id: shape, type: transform, depends_on: [rows], "
                                f"steps: [{{derive: {{twice: 'id * 2'}}}}]}}\n" + _load(db, "shape"))


def _records(store: Any, run_id: str, data_root: str) -> dict[str, Any]:
    """What a run records per task, its data root left out: attempts, output rows and schema, lineage,
    rows written and the fused metric."""
    run = store.get_run(run_id)
    assert run is not None
    out: dict[str, Any] = {"state": run.state.value}
    for t in run.tasks:
        result = t.result or {}
        output = result.get("output") or {}
        metrics = result.get("metrics") or {}
        out[t.task_id] = {
            "attempts": [(a.state.value, a.error_type) for a in t.attempts],
            "rows": output.get("rows"), "schema": output.get("schema_fingerprint"),
            "lineage": sorted(u.replace(data_root, "<root>").replace(run_id, "<run>")
                              for u in result.get("inputs") or []),
            "rows_written": metrics.get("rows_written"), "fused_into": metrics.get("fused_into"),
            "ledger": metrics.get("ledger"),
        }
    return out


def test_a_fused_chain_loads_once_on_a_worker_and_records_what_the_local_executor_records(
        workers: Cluster, tmp_path: Path) -> None:
    import random

    from udop.executor.celery import celery_task_id
    from udop.executor.local import LocalExecutor
    from udop.spec.loader import load_pipeline
    from udop.store import open_store

    workers.start_worker("fuser")
    executor = _executor(workers, tmp_path)
    on_celery = tmp_path / "celery.db"
    record = executor.run(load_pipeline(str(_fused_chain(tmp_path, "fused-chain", on_celery))), params={})
    celery = _records(executor.store, record.id, workers.data_root)
    # the load's attempt completed from its transform's worker: no Celery task of its own, rows once
    assert workers.app.AsyncResult(celery_task_id(record.id, "publish", 1)).state == "PENDING"
    assert workers.app.AsyncResult(celery_task_id(record.id, "shape", 1)).state == "SUCCESS"
    assert _count(on_celery) == (ROWS, ROWS)
    executor.store.close()

    local_dir = tmp_path / "local"
    local_dir.mkdir()
    on_local = tmp_path / "local.db"
    store = open_store(f"sqlite:///{local_dir / 'meta.db'}")
    local = LocalExecutor(store, workers=2, data_root=str(local_dir / "data"), rng=random.Random(1),
                          services={"base_dir": str(HERE)})
    done = local.run(load_pipeline(str(_fused_chain(local_dir, "fused-chain", on_local))), params={})
    assert _records(store, done.id, str(local_dir / "data")) == celery
    store.close()
    assert _count(on_local) == (ROWS, ROWS)
    assert celery["shape"]["fused_into"] == "publish"
    assert celery["publish"] == {**celery["publish"], "attempts": [("succeeded", None)],
                                 "rows_written": ROWS, "ledger": "recorded"}


def test_a_fused_chain_whose_worker_died_after_the_load_committed_loads_once(
        workers: Cluster, tmp_path: Path) -> None:
    db = tmp_path / "dst.db"
    path = _fused_chain(tmp_path, "fused-killed", db)
    short = {"UDOP_CELERY_VISIBILITY_TIMEOUT": "4"}
    # the transform's task process, running the fused pair, SIGKILLs itself once the load committed
    doomed = workers.start_worker("fused-doomed", env={**short, "UDOP_FAULT_INJECT": "load-committed"})
    executor = _executor(workers, tmp_path)
    thread, out = _in_thread(executor, path)
    _until(lambda: _has_rows(db), why="the fused load to commit")
    Cluster.kill(doomed)
    workers.start_worker("fused-rescuer", env=short)  # the transform's task comes back to it
    thread.join(120)
    assert out, "the run did not end"
    record = executor.store.get_run(out[0].id)
    assert record.state == RunState.SUCCEEDED
    # delivered twice, each attempt recorded once; the second delivery found the load's ledger entry
    assert _attempts(record, "shape") == [("succeeded", None)]
    assert _attempts(record, "publish") == [("succeeded", None)]
    publish = next(t for t in record.tasks if t.task_id == "publish")
    assert publish.result["metrics"]["ledger"] == "already loaded"
    assert publish.result["metrics"]["rows_written"] == ROWS
    assert _count(db) == (ROWS, ROWS)
    executor.store.close()
