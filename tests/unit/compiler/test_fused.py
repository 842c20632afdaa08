"""Fused chains in the compiler: a transform whose only reader is a file load becomes one Task state
(payload ``"fused": <load>``) under the local executor's rule; ``fuse: false``, differing retry
policies or timeouts over a Lambda's 900 s keep the two-state shape."""

from __future__ import annotations

from typing import Any

import pytest
from asl_tools import assert_valid, simulate, walk

from udop.compiler import CompileOptions, compile_pipeline
from udop.settings import get_settings
from udop.spec.models import Pipeline

RUN_INPUT = {"run": {"run_id": "r1", "logical_date": "2026-11-30", "data_root": "s3://data/",
                     "data_bucket": "data", "data_prefix": "", "params": {}}}


def _pipeline(*, transform: dict[str, Any] | None = None, load: dict[str, Any] | None = None,
              target: dict[str, Any] | None = None, readers: int = 1, after_load: bool = True) -> Pipeline:
    tasks: list[dict[str, Any]] = [
        {"id": "orders", "type": "extract", "source": {"connector": "parquet", "path": "data/orders.parquet"}},
        {"id": "daily", "type": "transform", "depends_on": ["orders"], "steps": [{"filter": "amount > 0"}],
         **(transform or {})},
        {"id": "publish", "type": "load", "depends_on": ["daily"],
         "target": target or {"connector": "csv", "path": "out/daily.csv"}, **(load or {})},
    ]
    tasks += [{"id": f"audit{i}", "type": "python", "callable": "m:f", "depends_on": ["daily"]}
              for i in range(1, readers)]
    if after_load:  # a task after the load waits for the fused state
        tasks.append({"id": "notify", "type": "python", "callable": "m:f", "depends_on": ["publish"]})
    return Pipeline.model_validate({"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": "sales"},
                                    "spec": {"defaults": {"retry": {"max_attempts": 3}}, "tasks": tasks}})


def _invokes(states: dict[str, Any]) -> list[dict[str, Any]]:
    """The task runner payloads of every Task state, Parallel branches included."""
    out = []
    for state in states.values():
        for branch in state.get("Branches", ()):
            out += _invokes(branch["States"])
        if state["Type"] == "Task" and "Payload" in state.get("Parameters", {}):
            out.append(state["Parameters"]["Payload"])
    return out


def _fused(compiled: Any) -> dict[str, str]:
    return {p["task_id"]: p["fused"] for p in _invokes(compiled.definition["States"]) if "fused" in p}


def test_a_transform_read_only_by_a_file_load_is_one_task_state() -> None:
    pipeline = _pipeline()
    fused = compile_pipeline(pipeline, options=CompileOptions(fuse=True))
    apart = compile_pipeline(pipeline, options=CompileOptions(fuse=False))
    assert _fused(fused) == {"daily": "publish"}
    assert "publish" not in fused.definition["States"] and "publish failed" not in fused.definition["States"]
    state = fused.definition["States"]["daily"]
    assert state["Parameters"]["Payload"]["task_id"] == "daily" and state["Next"] == "notify"
    assert state["Retry"] == apart.definition["States"]["daily"]["Retry"]
    # the old shape: each task its own Task state and failure record
    assert _fused(apart) == {} and apart.definition["States"]["publish"]["Parameters"]["Payload"]["task_id"] == \
        "publish"
    # one Task state and its failure record fewer; one Lambda task's events fewer (3 attempts)
    assert (apart.estimates.states, fused.estimates.states) == (12, 10)
    assert apart.estimates.max_history_events - fused.estimates.max_history_events == 5 + 3 * 2 + 2
    assert fused.estimates.tasks == apart.estimates.tasks == 4
    assert fused.task_ids == apart.task_ids

    walked = walk(fused)
    assert walked.runs == {"orders": 1, "daily": 1, "publish": 1, "notify": 1}
    assert walked.before["publish"] == walked.before["daily"] == frozenset({"orders"})
    assert walked.before["notify"] == frozenset({"orders", "daily", "publish"})
    ok = simulate(fused.definition, RUN_INPUT, fail=False)
    assert ok.ran == ["orders", "daily", "notify"] and ok.largest_state < 1024
    bad = simulate(fused.definition, RUN_INPUT, fail={"daily"}, cause_bytes=100)
    assert bad.end_type == "Fail" and bad.ran == ["orders", "daily"]
    assert_valid([fused, apart])


def test_fused_inside_a_parallel_branch_keeps_the_branch_shape() -> None:
    pipeline = _pipeline(readers=1, after_load=False)
    spec = pipeline.model_dump(exclude_unset=True, by_alias=True)
    spec["spec"]["tasks"].append({"id": "other", "type": "python", "callable": "m:f"})
    compiled = compile_pipeline(Pipeline.model_validate(spec), options=CompileOptions(fuse=True))
    assert _fused(compiled) == {"daily": "publish"}
    assert any(s["Type"] == "Parallel" for s in compiled.definition["States"].values())
    walked = walk(compiled)
    assert walked.runs["publish"] == walked.runs["daily"] == 1
    bad = simulate(compiled.definition, RUN_INPUT, fail={"daily"}, cause_bytes=100)
    assert bad.end_type == "Fail" and "other" in bad.ran
    assert_valid(compiled)


@pytest.mark.parametrize(("why", "pipeline"), [
    ("fuse: false", _pipeline(transform={"fuse": False})),
    ("a second reader", _pipeline(readers=2)),
    ("a non-file load", _pipeline(target={"connector": "postgres", "table": "t"})),
    ("append to one file", _pipeline(target={"connector": "csv", "path": "out/a.csv", "mode": "append"})),
    ("a check step", _pipeline(transform={"steps": [{"check": [{"not_null": ["id"]}]}]})),
    ("another retry policy", _pipeline(load={"retry": {"max_attempts": 5}})),
    ("timeouts over 900 s together", _pipeline(transform={"timeout": "10m"}, load={"timeout": "6m"})),
    ("a timeout on one task only", _pipeline(transform={"timeout": "1m"})),
])
def test_the_two_state_shape_where_a_chain_cannot_be_one_state(why: str, pipeline: Pipeline) -> None:
    compiled = compile_pipeline(pipeline, options=CompileOptions(fuse=True))
    assert _fused(compiled) == {}, why
    assert "publish" in [p["task_id"] for p in _invokes(compiled.definition["States"])]


def test_a_fused_state_times_out_after_both_tasks_timeouts() -> None:
    compiled = compile_pipeline(_pipeline(transform={"timeout": "5m"}, load={"timeout": "2m"}),
                                options=CompileOptions(fuse=True))
    assert _fused(compiled) == {"daily": "publish"}
    assert compiled.definition["States"]["daily"]["TimeoutSeconds"] == 420
    untimed = compile_pipeline(_pipeline(), options=CompileOptions(fuse=True))
    assert untimed.definition["States"]["daily"]["TimeoutSeconds"] == 900


def test_udop_fuse_false_turns_it_off_unless_the_options_say(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UDOP_FUSE", "false")
    get_settings.cache_clear()
    try:
        assert _fused(compile_pipeline(_pipeline())) == {}
        assert _fused(compile_pipeline(_pipeline(), options=CompileOptions(fuse=True))) == {"daily": "publish"}
    finally:
        monkeypatch.delenv("UDOP_FUSE")
        get_settings.cache_clear()
    assert _fused(compile_pipeline(_pipeline())) == {"daily": "publish"}
