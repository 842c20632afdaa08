"""The differences between executors that cannot be removed (docs/executors.md), asserted as such:
Step Functions counts retry intervals and timeouts in whole seconds, at least 1 s."""

from __future__ import annotations

from udop.compiler import compile_pipeline
from udop.spec.models import Pipeline


def test_sub_second_delays_and_timeouts_round_up_to_one_second_on_step_functions() -> None:
    pipeline = Pipeline.model_validate({
        "apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": "rounding"},
        "spec": {"defaults": {"retry": {"max_attempts": 3, "base_delay": "50ms", "max_delay": "200ms",
                                        "jitter": "none"}},
                 "tasks": [{"id": "t", "type": "python", "callable": "m:f", "timeout": "250ms"}]}})
    task = pipeline.task("t")
    policy = pipeline.retry_for(task)
    assert policy.delay(1) == 0.05 and pipeline.timeout_for(task) == 0.25  # honoured as written locally
    state = compile_pipeline(pipeline).definition["States"]["t"]
    rule = state["Retry"][-1]
    assert (rule["IntervalSeconds"], rule["MaxDelaySeconds"], state["TimeoutSeconds"]) == (1, 1, 1)


def test_the_scenario_table_lists_no_difference_in_run_records() -> None:
    from conformance.scenarios import SCENARIOS

    assert {s.name: s.differences for s in SCENARIOS if s.differences} == {}


def test_scenarios_left_out_on_an_executor_are_the_documented_ones() -> None:
    """A scenario an executor does not run is a feature it lacks, listed in docs/executors.md; adding
    one to the table is a decision this test makes visible."""
    from conformance.scenarios import SCENARIOS

    assert {s.name: sorted(s.not_on) for s in SCENARIOS if s.not_on} == {}
