"""The Celery executor: orchestration overhead per task, and CPU-bound tasks spread over worker processes.

1. 1,000 independent no-op `python` tasks on 2 `udop worker` processes (one task process each),
   metadata on PostgreSQL, printed per task beside the LocalExecutor running the same pipeline on
   the same PostgreSQL store with 2 worker threads. Target: the Celery overhead at most 5 ms per task.
2. 4 CPU-bound `python` tasks (pure-Python loops, ~2 s each alone) on 2 worker processes vs 1.
   Target: at least 1.7x faster on 2.

Real Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432), a key prefix and a schema of its own,
removed after. The machine's load average is printed beside each figure: it is shared, and figures
taken while others work are noisy (a busy core shows directly in the CPU-bound speed-up).

    .venv/bin/python benchmarks/celery_executor.py [--tasks 1000] [--cpu-loops 20000000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

TASKS = '''
def noop(context, inputs):
    return None


def burn(context, inputs, *, loops):
    total = 0
    for i in range(loops):
        total += i * i
    return total % 1000
'''


def _pipeline(name: str, tasks: list[dict[str, Any]]) -> Any:
    from udop.spec.models import Pipeline

    return Pipeline.model_validate({"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": name},
                                    "spec": {"tasks": tasks}})


def _noops(n: int) -> Any:
    return _pipeline("bench-noop", [{"id": f"t{i}", "type": "python", "callable": "udop_bench_celery:noop"}
                                    for i in range(n)])


def _burns(loops: int) -> Any:
    return _pipeline("bench-cpu", [{"id": f"c{i}", "type": "python", "callable": "udop_bench_celery:burn",
                                    "args": {"loops": loops}} for i in range(4)])


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def _timed(executor: Any, pipeline: Any) -> float:
    start = time.perf_counter()
    record = executor.run(pipeline)
    took = time.perf_counter() - start
    assert record.state == "succeeded", record.error
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--cpu-loops", type=int, default=20_000_000)
    parser.add_argument("--prefetch", type=int, default=1, help="udop worker --prefetch-multiplier")
    args = parser.parse_args()

    from support.celery_cluster import Cluster
    from udop.executor.celery import CeleryExecutor
    from udop.executor.local import LocalExecutor
    from udop.store import open_store

    root = Path(tempfile.mkdtemp(prefix="udop-bench-celery-"))
    code = root / "code"
    code.mkdir()
    (code / "udop_bench_celery.py").write_text(TASKS)
    sys.path.insert(0, str(code))
    cluster = Cluster(root, remove_root=True)
    try:
        store = open_store(cluster.database_url)
        services = {"base_dir": str(code)}
        local = LocalExecutor(store, workers=2, data_root=cluster.data_root, services=services)
        _timed(local, _noops(20))  # warm: imports, the store's statements
        local_s = _timed(LocalExecutor(store, workers=2, data_root=cluster.data_root, services=services),
                         _noops(args.tasks))
        print(f"LocalExecutor, {args.tasks} no-op tasks, 2 threads, PostgreSQL: {local_s:.2f} s, "
              f"{local_s / args.tasks * 1000:.2f} ms per task ({_load()})")

        prefetch = ["--prefetch-multiplier", str(args.prefetch)]
        first = cluster.start_worker("one", *prefetch, concurrency=1)
        cluster.start_worker("two", *prefetch, concurrency=1)

        def celery() -> CeleryExecutor:
            # 8 attempts in flight: each worker has the next one at hand when it finishes one
            return CeleryExecutor(store, app=cluster.app, settings=cluster.settings(), workers=8,
                                  data_root=cluster.data_root, services=services)

        _timed(celery(), _noops(20))  # warm: the workers' task processes
        celery_s = _timed(celery(), _noops(args.tasks))
        per_task = celery_s / args.tasks * 1000
        print(f"CeleryExecutor, {args.tasks} no-op tasks, 2 workers (prefetch {args.prefetch}): "
              f"{celery_s:.2f} s, {per_task:.2f} ms per "
              f"task, {per_task - local_s / args.tasks * 1000:+.2f} ms beside the LocalExecutor "
              f"(target <= 5 ms per task) ({_load()})")

        burns = _burns(args.cpu_loops)
        two = _timed(celery(), burns)
        print(f"4 CPU-bound tasks on 2 worker processes: {two:.2f} s ({_load()})")
        Cluster.kill(first)
        cluster.workers.remove(first)
        one = _timed(celery(), burns)
        print(f"4 CPU-bound tasks on 1 worker process: {one:.2f} s ({_load()})")
        print(f"speed-up with 2 worker processes: {one / two:.2f}x (target >= 1.7x)")
        store.close()
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
