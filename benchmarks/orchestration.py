"""Orchestration overhead of the LocalExecutor, and `udop --help` start-up time.

1,000 no-op `python` tasks as a chain and as a wide fan-out, metadata persisted to SQLite; printed
per task beside baselines run in the same process: calling the functions directly, and running the
same graph through a bare ThreadPoolExecutor (what a scheduler without persistence costs). Then a
short chain of the same tasks with a `timeout`, whose attempts each run in a child process (so that
a timed-out one can be killed), beside the same chain without one.
Target: at most 1 ms per task (Prefect 3.9 took about 10.7 ms per task for the chain on this
machine class, as measured by the team; Prefect is not installed here). `udop --help` target: 0.5 s.

    .venv/bin/python benchmarks/orchestration.py [--tasks 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MODULE = "udop_bench_noop"


def _pipeline(n: int, shape: str, timeout: str | None = None) -> dict:
    tasks = []
    for i in range(n):
        task = {"id": f"t{i}", "type": "python", "callable": f"{MODULE}:noop"}
        if timeout:
            task["timeout"] = timeout
        if shape == "chain" and i:
            task["depends_on"] = [f"t{i - 1}"]
        elif shape == "fanout" and i:
            task["depends_on"] = ["t0"]
        tasks.append(task)
    return {
        "apiVersion": "udop/v1",
        "kind": "Pipeline",
        "metadata": {"name": f"bench-{shape}"},
        "spec": {"tasks": tasks},
    }


def _udop(n: int, shape: str, workdir: Path, workers: int, timeout: str | None = None) -> float:
    from udop.executor.local import LocalExecutor
    from udop.spec.models import Pipeline
    from udop.store import open_store

    pipeline = Pipeline.model_validate(_pipeline(n, shape, timeout))
    store = open_store(f"sqlite:///{workdir / f'{shape}-{time.time_ns()}.db'}")
    executor = LocalExecutor(store, workers=workers, data_root=str(workdir / "data"))
    start = time.perf_counter()
    record = executor.run(pipeline)
    took = time.perf_counter() - start
    assert record.state == "succeeded", record.error
    store.close()
    return took


def _direct(n: int) -> float:
    from udop_bench_noop import noop

    start = time.perf_counter()
    for _ in range(n):
        noop(None, {})
    return time.perf_counter() - start


def _threadpool(n: int, shape: str, workers: int) -> float:
    from udop_bench_noop import noop

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        if shape == "chain":
            for _ in range(n):
                pool.submit(noop, None, {}).result()
        else:
            pool.submit(noop, None, {}).result()
            for f in [pool.submit(noop, None, {}) for _ in range(n - 1)]:
                f.result()
    return time.perf_counter() - start


def _help_time(repeat: int) -> tuple[float, float]:
    udop = str(Path(sys.executable).parent / "udop")

    def best(cmd: list[str]) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        return min(times)

    return best([udop, "--help"]), best([sys.executable, "-c", "pass"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / f"{MODULE}.py").write_text("def noop(context, inputs, **args):\n    return None\n")
        sys.path.insert(0, str(workdir))
        n = args.tasks
        print(f"{n} no-op python tasks, {args.workers} workers, metadata in SQLite (best of {args.repeat})")
        print(f"{'graph':<8} {'udop ms/task':>13} {'threadpool ms/task':>19} {'direct call ms/task':>20}")
        for shape in ("chain", "fanout"):
            udop = min(_udop(n, shape, workdir, args.workers) for _ in range(args.repeat))
            pool = min(_threadpool(n, shape, args.workers) for _ in range(args.repeat))
            direct = min(_direct(n) for _ in range(args.repeat))
            print(f"{shape:<8} {udop / n * 1000:>13.3f} {pool / n * 1000:>19.4f} {direct / n * 1000:>20.5f}")
        print("target: <= 1 ms/task (reference: Prefect 3.9 chain ~10.7 ms/task on this machine class)")
        helped, bare = _help_time(max(3, args.repeat))
        print(
            f"`udop --help` in a fresh process: {helped:.3f} s (bare `python -c pass`: {bare:.3f} s; "
            "target < 0.5 s)"
        )
        samples = [_udop(50, "chain", workdir, 1) for _ in range(3)]
        print(f"sanity: 50-task chain {statistics.median(samples) * 1000 / 50:.3f} ms/task")
        short = 20
        _udop(2, "chain", workdir, 1, timeout="1h")  # the fork server starts once per process
        child = min(_udop(short, "chain", workdir, 1, timeout="1h") for _ in range(args.repeat))
        thread = min(_udop(short, "chain", workdir, 1) for _ in range(args.repeat))
        print(
            f"{short}-task chain with a timeout (each attempt in a child process): "
            f"{child / short * 1000:.1f} ms/task; the same chain without a timeout (worker threads): "
            f"{thread / short * 1000:.3f} ms/task"
        )


if __name__ == "__main__":
    main()
