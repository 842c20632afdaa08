"""The DAG -> nested Parallel schedule, read back from the emitted ASL.

Property tests: for random DAGs no task starts before its dependencies and every task runs exactly
once; for random series-parallel DAGs the compiled machine keeps all the parallelism (its makespan
equals the critical path for any task durations). Every definition passes asl-validator.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from asl_tools import assert_valid, make_pipeline, walk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from udop.compiler import (
    CompiledPipeline,
    CompileOptions,
    Parallel,
    Series,
    Step,
    compile_pipeline,
    makespan,
    schedule,
)
from udop.compiler._schedule import ScheduleError
from udop.errors import SpecErrors


def longest_path(deps: dict[str, list[str]], durations: dict[str, float]) -> float:
    """Critical path by plain memoised recursion (independent of the compiler's code)."""
    memo: dict[str, float] = {}

    def finish(t: str) -> float:
        if t not in memo:
            memo[t] = durations[t] + max((finish(p) for p in deps[t]), default=0.0)
        return memo[t]
    return max(finish(t) for t in deps)


def ancestors(deps: dict[str, list[str]], task: str) -> set[str]:
    seen: set[str] = set()
    stack = list(deps[task])
    while stack:
        t = stack.pop()
        if t not in seen:
            seen.add(t)
            stack.extend(deps[t])
    return seen


@st.composite
def random_dags(draw: Any, max_tasks: int = 24) -> dict[str, list[str]]:
    n = draw(st.integers(1, max_tasks))
    names = [f"t{i}" for i in range(n)]
    deps = {}
    for i, name in enumerate(names):
        deps[name] = draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=min(i, 4))) if i else []
    # definition order need not be topological
    order = draw(st.permutations(names))
    return {t: deps[t] for t in order}


@st.composite
def sp_dags(draw: Any) -> dict[str, list[str]]:
    """A random series-parallel DAG, built by composing sub-DAGs in series and in parallel."""
    counter = iter(range(10_000))

    def build(depth: int) -> tuple[dict[str, list[str]], list[str], list[str]]:
        kind = draw(st.sampled_from(["task", "series", "parallel"] if depth < 4 else ["task"]))
        if kind == "task":
            t = f"t{next(counter)}"
            return {t: []}, [t], [t]
        parts = [build(depth + 1) for _ in range(draw(st.integers(2, 3)))]
        deps: dict[str, list[str]] = {}
        if kind == "parallel":
            for d, _, _ in parts:
                deps.update(d)
            return deps, [s for _, s, _ in parts for s in s], [e for _, _, e in parts for e in e]
        prev_sinks: list[str] = []
        for d, sources, sinks in parts:
            for t, ps in d.items():
                deps[t] = ps + (prev_sinks if t in sources else [])
            prev_sinks = sinks
        return deps, parts[0][1], parts[-1][2]
    return build(0)[0]


def _check_order(deps: dict[str, list[str]], compiled: CompiledPipeline) -> None:
    w = walk(compiled)
    assert dict(w.runs) == dict.fromkeys(deps, 1), "every task runs exactly once"
    for task, parents in deps.items():
        missing = ancestors(deps, task) - w.before[task]
        assert not missing, f"{task} may start before {sorted(missing)} (depends on {parents})"


def test_random_dags_never_start_a_task_before_its_dependencies() -> None:
    compiled: list[CompiledPipeline] = []

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(random_dags())
    def check(deps: dict[str, list[str]]) -> None:
        c = compile_pipeline(make_pipeline(deps))
        _check_order(deps, c)
        compiled.append(c)

    check()
    assert_valid(compiled)


def test_series_parallel_dags_keep_all_their_parallelism() -> None:
    compiled: list[CompiledPipeline] = []
    rng = random.Random(7)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(sp_dags())
    def check(deps: dict[str, list[str]]) -> None:
        c = compile_pipeline(make_pipeline(deps))
        _check_order(deps, c)
        for _ in range(3):
            durations = {t: rng.choice([0.1, 1.0, 7.0, 30.0]) for t in deps}
            assert walk(c, durations).makespan == pytest.approx(longest_path(deps, durations))
        compiled.append(c)

    check()
    assert_valid(compiled)


def test_diamond_becomes_series_of_parallel() -> None:
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    assert schedule(deps) == Series((Step("a"), Parallel((Step("b"), Step("c"))), Step("d")))


def test_redundant_edges_do_not_cost_parallelism() -> None:
    # e depends on a directly and through b: still a series-parallel order
    deps = {"a": [], "b": ["a"], "c": ["a"], "e": ["a", "b"], "d": ["c", "e"]}
    durations = {"a": 1.0, "b": 5.0, "c": 9.0, "e": 1.0, "d": 1.0}
    c = compile_pipeline(make_pipeline(deps))
    assert walk(c, durations).makespan == longest_path(deps, durations) == 11.0


def test_n_shaped_dag_is_correct_and_loses_only_what_it_must() -> None:
    # the "N": c needs a and b, d needs b only. No nested Parallel expresses exactly that.
    deps = {"a": [], "b": [], "c": ["a", "b"], "d": ["b"]}
    c = compile_pipeline(make_pipeline(deps))
    _check_order(deps, c)
    unit = {t: 1.0 for t in deps}
    assert walk(c, unit).makespan == longest_path(deps, unit) == 2.0
    assert_valid(c)


def test_nesting_cap_falls_back_to_levels_and_stays_correct() -> None:
    rng = random.Random(3)
    deps = {f"t{i}": [f"t{j}" for j in rng.sample(range(max(0, i - 8), i), min(i, rng.randint(0, 2)))]
            for i in range(200)}
    capped = schedule(deps, max_depth=2)

    def depth(node: Any) -> int:
        if isinstance(node, Step):
            return 0
        inner = max(depth(x) for x in (node.items if isinstance(node, Series) else node.branches))
        return inner + (1 if isinstance(node, Parallel) else 0)
    assert depth(capped) <= 3
    unit = dict.fromkeys(deps, 1.0)
    # levels keep the unit-time makespan: the critical path in tasks
    assert makespan(capped) == longest_path(deps, unit)
    c = compile_pipeline(make_pipeline(deps), options=CompileOptions(max_depth=2))
    _check_order(deps, c)


def test_cycle_and_unknown_dependency_are_input_errors() -> None:
    with pytest.raises(ScheduleError, match=r"cycle: (a -> b -> a|b -> a -> b)"):
        schedule({"a": ["b"], "b": ["a"]})
    with pytest.raises(ScheduleError, match="'a' depends on unknown task 'zz'"):
        schedule({"a": ["zz"]})
    with pytest.raises(SpecErrors, match="cycle"):
        compile_pipeline(make_pipeline({"a": ["b"], "b": ["a"]}))


def test_random_dags_split_into_child_machines_keep_their_order() -> None:
    compiled: list[CompiledPipeline] = []
    tiny = CompileOptions(max_history_events=120, max_definition_bytes=12_000)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(random_dags(max_tasks=40))
    def check(deps: dict[str, list[str]]) -> None:
        c = compile_pipeline(make_pipeline(deps), options=tiny)
        _check_order(deps, c)
        for m in (c, *c.all_children()):
            assert m.estimates.definition_bytes <= tiny.max_definition_bytes
            assert m.estimates.max_history_events <= tiny.max_history_events
        compiled.append(c)

    check()
    assert any(c.children for c in compiled), "the budgets are small enough to force splits"
    assert_valid(compiled)
