"""Scheduling delay of the local scheduler: N pipelines ticking every minute, real clock.

For each tick, the delay is from the tick to the run being recorded as running (what a user sees as
"late"). The baseline is the same scheduler with ONE pipeline (no queueing behind other runs).
Runs are one trivial python task each, on a SQLite metadata store in a temporary folder.

    .venv/bin/python benchmarks/scheduler_delay.py --pipelines 100 --ticks 2 [--max-runs 8]

Takes about ``ticks`` minutes per configuration (it waits for real minute boundaries). The machine is
shared with other work: the figures are noisy; best and median are printed beside the longest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

TASK = "def noop(context, inputs, **args):\n    return {'ok': True}\n"


def _definitions(folder: Path, count: int, module: str) -> None:
    for i in range(count):
        (folder / f"p{i:03d}.yaml").write_text(
            "apiVersion: udop/v1\nkind: Pipeline\n"
            f"metadata: {{name: bench-{i:03d}}}\n"
            "spec:\n  schedule: {cron: '* * * * *', catchup: none}\n"
            f"  tasks: [{{id: a, type: python, callable: '{module}:noop'}}]\n")


def measure(count: int, ticks: int, max_runs: int) -> list[float]:
    from udop.sandbox import Policy
    from udop.schedule.scheduler import DirectoryPipelines, Scheduler
    from udop.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        module = f"bench_tasks_{os.getpid()}_{count}"
        (root / f"{module}.py").write_text(TASK)
        sys.path.insert(0, str(root))
        folder = root / "pipelines"
        folder.mkdir()
        _definitions(folder, count, module)
        os.environ["UDOP_HOME"] = str(root / ".udop")
        store = open_store(f"sqlite:///{root / 'meta.db'}")
        source = DirectoryPipelines(folder, recheck_seconds=3600)
        scheduler = Scheduler(store, source, policy=Policy.trusted(), max_runs=max_runs, workers=1,
                              data_root=str(root / "data"))
        stop = threading.Event()
        thread = threading.Thread(target=scheduler.run_forever, args=(stop,))
        thread.start()
        try:
            # until `ticks` full minutes have fired for every pipeline
            while len([f for f in scheduler.fired if f.delay is not None]) < count * ticks:
                time.sleep(1)
            scheduler.wait_idle(timeout=300)
        finally:
            stop.set()
            thread.join()
            scheduler.close()
            store.close()
            sys.path.remove(str(root))
        return [f.delay for f in scheduler.fired if f.delay is not None][: count * ticks]


def _report(label: str, delays: list[float]) -> None:
    print(f"{label:<28} runs={len(delays):<4} longest={max(delays):7.3f}s  "
          f"median={statistics.median(delays):7.3f}s  best={min(delays):7.3f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=100)
    parser.add_argument("--ticks", type=int, default=2)
    parser.add_argument("--max-runs", type=int, default=8, help="scheduled runs at the same time")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    print(f"udop scheduler: tick -> run recorded as running; {args.ticks} tick(s) each; "
          f"max-runs {args.max_runs}; cpus {os.cpu_count()} (shared machine: noisy)")
    _report("baseline: 1 pipeline", measure(1, args.ticks, args.max_runs))
    _report(f"{args.pipelines} pipelines", measure(args.pipelines, args.ticks, args.max_runs))


if __name__ == "__main__":
    main()
