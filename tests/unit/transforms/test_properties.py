"""Property tests: steps on random small tables agree with plain-Python computations."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transform_helpers import context_for, make_pipeline

from udop.tasks import run_task

ROWS = st.lists(
    st.tuples(
        st.one_of(st.none(), st.integers(0, 3)),
        st.one_of(st.none(), st.integers(-50, 50)),
        st.one_of(st.none(), st.sampled_from(["a", "b", "c", "é", ""])),
    ),
    max_size=30,
)


def run_steps(rows: list[tuple], steps: list[dict], other: list[tuple] | None = None) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        table = pa.table(
            {
                "k": pa.array([r[0] for r in rows], pa.int64()),
                "v": pa.array([r[1] for r in rows], pa.int64()),
                "s": pa.array([r[2] for r in rows], pa.string()),
            }
        )
        pq.write_table(table, root / "a.parquet")
        tasks = [{"id": "a", "type": "extract", "source": {"connector": "parquet", "path": "a.parquet"}}]
        deps = ["a"]
        if other is not None:
            pq.write_table(
                pa.table(
                    {
                        "k": pa.array([o[0] for o in other], pa.int64()),
                        "w": pa.array([o[1] for o in other], pa.int64()),
                    }
                ),
                root / "b.parquet",
            )
            tasks.append(
                {"id": "b", "type": "extract", "source": {"connector": "parquet", "path": "b.parquet"}}
            )
            deps.append("b")
        tasks.append({"id": "t", "type": "transform", "depends_on": deps, "steps": steps})
        pipeline = make_pipeline(tasks, {"t": {"type": "int", "default": 0}})
        results: dict = {}
        for task in pipeline.spec.tasks:
            ctx = context_for(pipeline, task.id, root, {"t": 0})
            results[task.id] = run_task(ctx, task, {d: results[d] for d in task.depends_on})
        return pq.read_table(results["t"].output.uri).to_pylist()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ROWS)
def test_filter_then_aggregate(rows):
    got = run_steps(
        rows,
        [
            {"filter": "v > ${params.t}"},
            {
                "aggregate": {
                    "by": ["k"],
                    "metrics": {
                        "n": "count(*)",
                        "total": {"sum": "v"},
                        "lo": {"min": "v"},
                        "hi": {"max": "v"},
                        "kinds": {"count_distinct": "s"},
                    },
                }
            },
        ],
    )
    groups: dict = {}
    for k, v, s in rows:
        if v is not None and v > 0:
            groups.setdefault(k, []).append((v, s))
    want = {
        k: (
            len(g),
            sum(v for v, _ in g),
            min(v for v, _ in g),
            max(v for v, _ in g),
            len({s for _, s in g if s is not None}),
        )
        for k, g in groups.items()
    }
    assert {r["k"]: (r["n"], r["total"], r["lo"], r["hi"], r["kinds"]) for r in got} == want


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ROWS)
def test_dedupe_keeps_the_first_in_order(rows):
    indexed = [(i, *r) for i, r in enumerate(rows)]
    got = run_steps(
        rows, [{"derive": {"i": "0"}}, {"distinct": {"on": ["k"], "order_by": ["v desc nulls last", "s"]}}]
    )
    # expected: per key, max v (NULL last), then smallest s (NULL last, DuckDB's default for asc)
    best: dict = {}
    for _, k, v, s in indexed:
        rank = (v is None, -(v or 0), s is None, s or "")
        if k not in best or rank < best[k][0]:
            best[k] = (rank, v, s)
    assert sorted(((r["k"] is None, r["k"] or 0), r["v"], r["s"]) for r in got) == sorted(
        ((k is None, k or 0), v, s) for k, (_, v, s) in best.items()
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ROWS, st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 3)), st.integers(0, 9)), max_size=8))
def test_left_join_and_anti_join(rows, other):
    left = run_steps(rows, [{"join": {"with": "b", "on": ["k"], "how": "left"}}], other)
    want = []
    for k, v, s in rows:
        matches = [w for ok, w in other if ok is not None and ok == k]
        want += [(k, v, s, w) for w in matches] or [(k, v, s, None)]

    def key(t):
        return tuple((x is None, x if x is not None else 0) for x in t)

    assert sorted(((r["k"], r["v"], r["s"], r["w"]) for r in left), key=key) == sorted(want, key=key)
    anti = run_steps(rows, [{"join": {"with": "b", "on": ["k"], "how": "anti"}}], other)
    keys = {ok for ok, _ in other if ok is not None}
    assert sorted(((r["k"], r["v"], r["s"]) for r in anti), key=key) == sorted(
        [r for r in rows if r[0] is None or r[0] not in keys], key=key
    )
