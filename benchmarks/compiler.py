"""Compile time and definition size of the Step Functions compiler, and how much parallelism its
schedule keeps, for series-parallel and random DAGs of 10, 100, 1,000 and 5,000 tasks.

Makespan is the finishing time of the compiled schedule when every Parallel waits for its slowest
branch; the critical path (longest dependency chain) is the best any executor can do. Printed side
by side with a baseline computed in the same run: plain topological levels (each level one Parallel,
the next level starts when the whole level is done). Unit task times first, then task times drawn
from an exponential distribution (mean 1), the median ratio over ``--draws`` draws.

    .venv/bin/python benchmarks/compiler.py [--sizes 10,100,1000,5000] [--draws 5] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from udop.compiler import compile_pipeline, critical_path, makespan, schedule
from udop.spec.models import Pipeline

Deps = dict[str, list[str]]


def random_dag(n: int, rng: random.Random, window: int = 50, max_parents: int = 3) -> Deps:
    """Each task depends on 0..max_parents tasks among the ``window`` defined just before it."""
    deps: Deps = {}
    for i in range(n):
        pool = range(max(0, i - window), i)
        k = min(len(pool), rng.randint(0, max_parents))
        deps[f"t{i}"] = [f"t{j}" for j in rng.sample(pool, k)]
    return deps


def sp_dag(n: int, rng: random.Random) -> Deps:
    """A random series-parallel DAG of exactly ``n`` tasks (random series/parallel splits)."""
    counter = iter(range(n))

    def build(size: int) -> tuple[Deps, list[str], list[str]]:
        if size == 1:
            t = f"t{next(counter)}"
            return {t: []}, [t], [t]
        parts_n = min(size, rng.randint(2, 4))
        cuts = sorted(rng.sample(range(1, size), parts_n - 1))
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, size], strict=True)]
        parts = [build(s) for s in sizes]
        deps: Deps = {}
        if rng.random() < 0.5:  # parallel
            for d, _, _ in parts:
                deps.update(d)
            return deps, [x for _, s, _ in parts for x in s], [x for _, _, e in parts for x in e]
        prev: list[str] = []
        for d, sources, sinks in parts:
            for t, ps in d.items():
                deps[t] = ps + (prev if t in sources else [])
            prev = sinks
        return deps, parts[0][1], parts[-1][2]

    return build(n)[0]


def levels_makespan(deps: Deps, durations: dict[str, float] | None) -> float:
    """Baseline: topological levels, each a Parallel that waits for its slowest task."""
    level: dict[str, int] = {}

    def of(t: str) -> int:
        if t not in level:
            level[t] = 1 + max((of(p) for p in deps[t]), default=-1)
        return level[t]
    slowest: dict[int, float] = {}
    for t in deps:
        d = 1.0 if durations is None else durations[t]
        slowest[of(t)] = max(slowest.get(of(t), 0.0), d)
    return sum(slowest.values())


def pipeline_of(deps: Deps) -> Pipeline:
    tasks = [{"id": t, "type": "python", "callable": "m:f", "depends_on": ps} for t, ps in deps.items()]
    return Pipeline.model_validate({"apiVersion": "udop/v1", "kind": "Pipeline",
                                    "metadata": {"name": "bench"}, "spec": {"tasks": tasks}})


def measure(name: str, make: Callable[[int, random.Random], Deps], sizes: list[int], draws: int,
            seed: int) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        rng = random.Random(seed * 1_000_003 + n)
        deps = make(n, rng)
        pipeline = pipeline_of(deps)
        t0 = time.perf_counter()
        compiled = compile_pipeline(pipeline)
        compile_s = time.perf_counter() - t0
        machines = [compiled, *compiled.all_children()]
        tree = schedule(deps)
        unit_cp = critical_path(deps)
        ratios, base_ratios = [], []
        for _ in range(draws):
            durations = {t: rng.expovariate(1.0) for t in deps}
            cp = critical_path(deps, durations)
            ratios.append(makespan(tree, durations) / cp)
            base_ratios.append(levels_makespan(deps, durations) / cp)
        rows.append({
            "dag": name, "tasks": n, "compile_s": compile_s,
            "root_kb": compiled.estimates.definition_bytes / 1024,
            "total_kb": sum(m.estimates.definition_bytes for m in machines) / 1024,
            "machines": len(machines),
            "events": max(m.estimates.max_history_events for m in machines),
            "unit": makespan(tree) / unit_cp, "unit_base": levels_makespan(deps, None) / unit_cp,
            "exp": statistics.median(ratios), "exp_base": statistics.median(base_ratios),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,5000")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 50_000))
    rows = (measure("series-parallel", sp_dag, sizes, args.draws, args.seed)
            + measure("random", random_dag, sizes, args.draws, args.seed))
    print("makespan / critical path: compiled schedule vs baseline (topological levels)")
    header = (f"{'dag':<16}{'tasks':>6}{'compile s':>11}{'root KiB':>10}{'all KiB':>9}{'machines':>9}"
              f"{'max events':>11}{'unit':>7}{'unit lvl':>9}{'exp':>7}{'exp lvl':>9}")
    print(header)
    for r in rows:
        print(f"{r['dag']:<16}{r['tasks']:>6}{r['compile_s']:>11.3f}{r['root_kb']:>10.1f}{r['total_kb']:>9.1f}"
              f"{r['machines']:>9}{r['events']:>11}{r['unit']:>7.2f}{r['unit_base']:>9.2f}{r['exp']:>7.2f}"
              f"{r['exp_base']:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
