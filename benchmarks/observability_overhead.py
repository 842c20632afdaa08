"""Orchestration overhead per task with JSON logs and tracing on vs off (issue 14).

A chain of N `python` tasks, each logging one INFO line through `logging`, run by the LocalExecutor
with SQLite metadata, in four modes measured in one process, interleaved, median of --repeat:

  off      no log handler (the root logger at WARNING drops the line), tracing off
  quiet    `configure("json")` at INFO, but the tasks' logger at WARNING: the setup's own cost per
           task (ids bound per attempt, stdout routing) without a line to write
  json     `configure("json")` at INFO: the line is formatted as JSON with the run's ids (to
           /dev/null) and captured into the attempt's log file under the data root
  tracing  tracing on, spans to the SDK's in-memory exporter (no network), logs off
  both     json + tracing

and `off` once more at the end of each round (its difference from the first is the noise floor).
Per-task overhead of a mode = (its run time - the `off` run time) / N. Targets: json adds at most
0.1 ms per task; tracing off costs ~0 (the `off` mode already includes the tracing-off checks, and
the hook calls are timed on their own at the end, per call).

Whole runs on a shared 2-core machine vary by a millisecond per task between two `off` runs, more
than the target; so the logging path of one attempt is also timed on its own (`per attempt` below):
an attempt's scope (ids bound, capture set up) with the task logging one INFO line, with logs off
(the line dropped) and with JSON logs on (formatted to /dev/null and kept in the attempt's log),
best and median of --repeat rounds of 2,000 attempts each.

    .venv/bin/python benchmarks/observability_overhead.py [--tasks 300] [--repeat 3] [--shared DIR]

``--shared DIR`` imports udop from DIR (e.g. an export of another commit's ``shared/``) to compare.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

MODULE = "udop_bench_chatty"


def _pipeline(n: int) -> dict[str, object]:
    tasks = []
    for i in range(n):
        task: dict[str, object] = {"id": f"t{i}", "type": "python", "callable": f"{MODULE}:chatty"}
        if i:
            task["depends_on"] = [f"t{i - 1}"]
        tasks.append(task)
    return {"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": "bench-observability"},
            "spec": {"tasks": tasks}}


def _set_mode(mode: str, devnull: object) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from udop.observability import tracing
    from udop.observability.logs import configure

    root = logging.getLogger()
    root.handlers[:] = []
    root.setLevel(logging.WARNING)
    logging.getLogger("bench.user").setLevel(logging.WARNING if mode == "quiet" else logging.NOTSET)
    tracing.reset()
    tracing._state["on"] = False  # decided: off (what an unset environment decides)
    mode = mode.removesuffix("-again")
    if mode in ("json", "both", "quiet"):
        configure("json", level=logging.INFO, stream=devnull)  # type: ignore[arg-type]
    if mode in ("tracing", "both"):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        tracing.use_provider(provider)


def _run(n: int, workdir: Path) -> float:
    from udop.executor.local import LocalExecutor
    from udop.spec.models import Pipeline
    from udop.store import open_store

    pipeline = Pipeline.model_validate(_pipeline(n))
    store = open_store(f"sqlite:///{workdir / f'{time.time_ns()}.db'}")
    executor = LocalExecutor(store, workers=4, data_root=str(workdir / "data"))
    start = time.perf_counter()
    record = executor.run(pipeline)
    took = time.perf_counter() - start
    assert record.state == "succeeded", record.error
    store.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shared", help="import udop from this folder (another commit's shared/)")
    parser.add_argument("--micro-only", action="store_true", help="only the per-attempt timing")
    args = parser.parse_args()
    if args.shared:
        sys.path.insert(0, args.shared)
    if not args.micro_only:
        _runs(args)
    _per_attempt(max(args.repeat, 5))


def _per_attempt(rounds: int, n: int = 2000) -> None:
    from udop.observability.logs import configure
    from udop.observability.tasklogs import attempt_scope

    log = logging.getLogger("bench.attempt")
    root = logging.getLogger()

    def one_round(tmp: str) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.thread_time()
        for i in range(n):
            with attempt_scope(data_root=tmp, run_id="r1", pipeline="p", task_id=f"t{i}", attempt=1,
                               logical_date="2026-11-30T00:00:00+00:00", correlation_id="c" * 32):
                log.info("did %s", i)
        return (time.perf_counter() - start) / n * 1e6, (time.thread_time() - cpu) / n * 1e6

    results: dict[str, list[float]] = {"off": [], "json": []}
    cpu: dict[str, list[float]] = {"off": [], "json": []}
    with tempfile.TemporaryDirectory() as tmp, open("/dev/null", "w") as devnull:
        root.handlers[:] = []
        configure("json", level=logging.INFO, stream=devnull)  # once, as a process does
        for r in range(rounds):
            for mode in ("off", "json"):
                # off: the line is below the root's level, dropped before a record is made
                root.setLevel(logging.INFO if mode == "json" else logging.WARNING)
                wall, used = one_round(f"{tmp}/{mode}{r}")
                results[mode].append(wall)
                cpu[mode].append(used)
        root.handlers[:] = []
        root.setLevel(logging.WARNING)
    off_best, off_med = min(results["off"]), statistics.median(results["off"])
    json_best, json_med = min(results["json"]), statistics.median(results["json"])
    print(f"per attempt ({n} attempts x {rounds} rounds, one INFO line each), us: "
          f"off best {off_best:.1f} median {off_med:.1f}; json best {json_best:.1f} median {json_med:.1f}; "
          f"json adds best {json_best - off_best:.1f} median {json_med - off_med:.1f} us "
          f"= {(json_med - off_med) / 1000:.3f} ms/task")
    # CPU time of the thread: what the work costs, less the waiting for a core on a loaded machine
    added = statistics.median(cpu["json"]) - statistics.median(cpu["off"])
    print(f"  thread CPU time, us: off median {statistics.median(cpu['off']):.1f}, json median "
          f"{statistics.median(cpu['json']):.1f}; json adds {added:.1f} us = {added / 1000:.3f} ms/task "
          f"(best: {min(cpu['json']) - min(cpu['off']):.1f} us)")


def _runs(args: argparse.Namespace) -> None:
    # `off` again last: its distance from the first `off` is the noise floor of this machine
    modes = ["off", "quiet", "json", "tracing", "both", "off-again"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp, open("/dev/null", "w") as devnull:
        workdir = Path(tmp)
        (workdir / f"{MODULE}.py").write_text(
            "import logging\nlog = logging.getLogger('bench.user')\n"
            "def chatty(context, inputs, **args):\n    log.info('did %s', context.task_id)\n")
        sys.path.insert(0, str(workdir))
        _set_mode("off", devnull)
        _run(20, workdir)  # warm-up: imports, the store's first migration
        for _ in range(args.repeat):
            for mode in modes:
                _set_mode(mode, devnull)
                times[mode].append(_run(args.tasks, workdir))
        _set_mode("off", devnull)
        folder = workdir / "data" / "_logs"
        logs = list(folder.rglob("*.log")) if folder.exists() else []
    base = statistics.median(times["off"])
    best_base = min(times["off"])
    print(f"chain of {args.tasks} python tasks, 4 workers, {args.repeat} rounds (interleaved)")
    print(f"{'mode':<9} {'median s':>9} {'ms/task':>8} {'+ms/task':>9} {'best s':>8} {'+ms/task':>9}")
    for mode in modes:
        med, best = statistics.median(times[mode]), min(times[mode])
        print(f"{mode:<9} {med:9.3f} {med / args.tasks * 1000:8.3f} {(med - base) / args.tasks * 1000:9.3f} "
              f"{best:8.3f} {(best - best_base) / args.tasks * 1000:9.3f}")
    print(f"(log files written in the json runs: {len(logs)})")

    from udop.executor.local import RunLoop  # noqa: F401  (imported for the hooks below to be warm)
    from udop.observability import hooks, tracing

    tracing.reset()
    tracing._state["on"] = False
    calls = 200_000
    took = timeit.timeit(lambda: hooks.run_span(None), number=calls)
    print(f"tracing off: one span hook call {took / calls * 1e9:.0f} ns "
          f"(3 per task: attempt, task end, and the run's once)")


if __name__ == "__main__":
    main()
