"""What OpenLineage emission adds per task: a task's START and COMPLETE events (datasets, schema,
column lineage, row counts, checks) built and written by the client's file transport, against the
same executor callback with emission off (``UDOP_OPENLINEAGE`` unset: ``listen`` hands back the
callback itself). Also a whole ``LocalExecutor`` run of ``--tasks`` python tasks, on and off.

    .venv/bin/python benchmarks/openlineage_overhead.py [--repeat 2000] [--tasks 40] [--runs 5]

With emission on, the executor only hands the events to the sender thread; what that thread spends
(the client's serialisation, the file write) is printed too. Prints best and median: the machine
may be shared, so medians move between runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from udop.executor.events import RunEvent
from udop.lineage import openlineage
from udop.tasks.contract import CheckResult, Manifest, TaskResult


class _Task:
    depends_on = ("orders",)


class _Pipeline:
    name = "bench"

    def task(self, _tid: str) -> _Task:
        return _Task()


def _per_task_us(listener: Callable[[Any], None], repeat: int) -> tuple[float, float]:
    times = []
    for i in range(repeat + 50):
        start = time.perf_counter()
        listener(RunEvent("task", "r1", "running", "totals", i + 1))
        listener(RunEvent("task", "r1", "succeeded", "totals", i + 1))
        if i >= 50:  # warm-up: the client, the schema cache
            times.append((time.perf_counter() - start) * 1e6)
    return min(times), statistics.median(times)


def _fixture(tmp: Path) -> dict[str, TaskResult]:
    cols = [f"c{i}" for i in range(10)]
    staged = tmp / "runs" / "bench" / "r1" / "orders"
    staged.mkdir(parents=True)
    pq.write_table(pa.table({c: [1, 2, 3] for c in cols}), staged / "part-0.parquet")
    out = tmp / "runs" / "bench" / "r1" / "totals"
    out.mkdir(parents=True)
    pq.write_table(pa.table({c: [1, 2, 3] for c in cols}), out / "part-0.parquet")
    orders = TaskResult(output=Manifest(uri=str(staged) + "/", rows=3, schema_fingerprint="fp-orders"),
                        inputs=("postgres://db:5432/shop.public.orders",))
    totals = TaskResult(
        output=Manifest(uri=str(out) + "/", rows=3, bytes=1000, schema_fingerprint="fp-totals"),
        inputs=(str(staged) + "/",),
        checks=(CheckResult("not_null(c0)", "error", True), CheckResult("row_count(min=1)", "error", True)),
        columns={c: [[str(staged) + "/", c]] for c in cols})
    return {"orders": orders, "totals": totals}


def _run_ms(tasks: int, tmp: Path) -> float:
    from udop.executor.local import LocalExecutor
    from udop.spec.loader import load_pipeline
    from udop.store import open_store

    mod = tmp / "bench_tasks.py"
    mod.write_text("def noop(context, inputs):\n    return None\n")
    body = "\n".join(f"    - {{id: t{i}, type: python, callable: 'bench_tasks:noop'"
                     + (f", depends_on: [t{i - 1}]" if i else "") + "}" for i in range(tasks))
    pipeline = load_pipeline(f"apiVersion: udop/v1\nkind: Pipeline\nmetadata: {{name: bench}}\nspec:\n"
                             f"  tasks:\n{body}\n", filename="bench.yaml")
    store = open_store(f"sqlite:///{tmp / f'meta-{time.monotonic_ns()}.db'}")
    start = time.perf_counter()
    run = LocalExecutor(store, workers=1, data_root=str(tmp / "data")).run(pipeline)
    elapsed = (time.perf_counter() - start) * 1000
    assert run.state.value == "succeeded", run.error
    store.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        results = _fixture(tmp)
        events = tmp / "openlineage.jsonl"
        os.environ.update({"OPENLINEAGE__TRANSPORT__TYPE": "file", "OPENLINEAGE__TRANSPORT__APPEND": "true",
                           "OPENLINEAGE__TRANSPORT__LOG_FILE_PATH": str(events)})
        os.environ.pop(openlineage.ENV, None)
        off = openlineage.listen(lambda _e: None, None, _Pipeline(), "r1", logical_date=None, results=results)
        off_best, off_median = _per_task_us(off, args.repeat)
        os.environ[openlineage.ENV] = "1"
        on = openlineage.listen(lambda _e: None, None, _Pipeline(), "r1", logical_date=None, results=results)
        start = time.perf_counter()
        on_best, on_median = _per_task_us(on, args.repeat)
        openlineage._sender.flush(600)  # the sender thread's share: every event built and written
        sent_ms = (time.perf_counter() - start) * 1000 / (args.repeat + 50)
        written = len(events.read_text().splitlines())
        assert written == 2 * (args.repeat + 50), written
        assert openlineage.stats["failed"] == 0, openlineage.stats
        print(f"per task (START + COMPLETE, 10 columns with column lineage, 2 checks), repeat={args.repeat}")
        print(f"  emission off (baseline)        best {off_best:8.1f} us   median {off_median:8.1f} us")
        print(f"  emission on, file transport    best {on_best:8.1f} us   median {on_median:8.1f} us")
        print(f"  added per task                 best {(on_best - off_best) / 1000:8.3f} ms   "
              f"median {(on_median - off_median) / 1000:8.3f} ms   (target <= 0.2 ms)")
        print(f"  sender thread: building and writing both events {sent_ms:8.3f} ms per task "
              "(off the task's path)")

        sys.path.insert(0, str(tmp))  # the python tasks' module
        figures: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.runs):
            for mode in ("off", "on"):
                if mode == "on":
                    os.environ[openlineage.ENV] = "1"
                else:
                    os.environ.pop(openlineage.ENV, None)
                figures[mode].append(_run_ms(args.tasks, tmp) / args.tasks)
        os.environ.pop(openlineage.ENV, None)
        print(f"whole LocalExecutor run, {args.tasks} python tasks in a chain, {args.runs} runs each "
              "(ms per task)")
        for mode in ("off", "on"):
            print(f"  emission {mode:<3}                   best {min(figures[mode]):8.3f} ms   "
                  f"median {statistics.median(figures[mode]):8.3f} ms")


if __name__ == "__main__":
    main()
