"""compile_pipeline: Task payloads, Retry/Catch/timeouts, failure routing, payload sizes, Map
states for foreach, and splitting into child machines at the Step Functions limits."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from asl_tools import (
    assert_valid,
    failure_cause,
    failure_routes,
    make_pipeline,
    simulate,
    validate,
    walk,
)

from udop.compiler import CompileError, CompileOptions, compile_pipeline
from udop.errors import NOT_RETRIED

RUN_INPUT = {"run": {"run_id": "r-2026-11-26", "logical_date": "2026-11-26", "data_root": "s3://data/udop/",
                     "data_bucket": "data", "data_prefix": "udop/",
                     "params": {"month": 11, "region": "eu-west-1", "note": "x" * 200}}}
KIB = 1024


def all_states(states: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, state in states.items():
        out.append((name, state))
        for branch in state.get("Branches", ()):
            out.extend(all_states(branch["States"]))
        if "ItemProcessor" in state:
            out.extend(all_states(state["ItemProcessor"]["States"]))
    return out


def test_task_state_invokes_the_runner_with_the_run_context_only() -> None:
    c = compile_pipeline(make_pipeline({"extract": []}, name="sales"), options=CompileOptions(version=7))
    state = c.definition["States"]["extract"]
    assert state["Resource"] == "arn:aws:states:::lambda:invoke"
    assert state["Parameters"] == {"FunctionName": "${TaskRunnerArn}", "Payload": {
        "run.$": "$$.Execution.Input.run", "pipeline": "sales", "version": 7, "task_id": "extract",
        "execution.$": "$$.Execution.Id", "attempt.$": "$$.State.RetryCount"}}
    assert state["ResultPath"] is None  # the manifest is not carried: downstream reads it from S3
    assert c.substitutions == ["TaskRunnerArn"]
    assert json.loads(c.to_json()) == c.definition
    assert '"${TaskRunnerArn}"' in c.to_json()


def test_retry_policy_and_timeout_become_retry_and_timeout_seconds() -> None:
    p = make_pipeline({"a": [], "b": ["a"], "c": ["a"]}, extra={
        "a": {"retry": {"max_attempts": 4, "base_delay": "2.5s", "backoff_rate": 3, "max_delay": "60.2s",
                        "jitter": "full"}, "timeout": "10m"},
        "b": {"retry": {"max_attempts": 2, "base_delay": "250ms", "jitter": "none"}},
        "c": {"retry": {"max_attempts": 1}}})
    states = dict(all_states(compile_pipeline(p).definition["States"]))
    lambda_errors = ["Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
                     "Lambda.TooManyRequestsException"]
    # never-retried names first (stopped), Lambda's transient errors, then everything else per the
    # policy: a foreign ValueError is retried, as by the LocalExecutor
    a_fatal, a_lambda, a_retry = states["a"]["Retry"]
    assert a_fatal == {"ErrorEquals": list(NOT_RETRIED), "MaxAttempts": 0}
    assert {"udop.FatalError", "udop.DataQualityError", "udop.InputError"} <= set(a_fatal["ErrorEquals"])
    assert a_retry == {"ErrorEquals": ["States.ALL"], "IntervalSeconds": 3, "BackoffRate": 3.0, "MaxAttempts": 3,
                       "MaxDelaySeconds": 61, "JitterStrategy": "FULL"}
    assert a_lambda["ErrorEquals"] == lambda_errors
    assert a_lambda["MaxAttempts"] >= 1
    assert states["a"]["TimeoutSeconds"] == 600
    b_retry = states["b"]["Retry"][-1]
    # 250 ms rounds up to the 1 s minimum; no jitter asked, none given
    assert b_retry["IntervalSeconds"] == 1
    assert b_retry["MaxAttempts"] == 1
    assert "JitterStrategy" not in b_retry
    assert states["b"]["TimeoutSeconds"] == 900  # no timeout: the Lambda maximum
    # one attempt: only Lambda's own transient errors are retried
    assert [r["ErrorEquals"] for r in states["c"]["Retry"]] == [lambda_errors]


def test_retry_on_names_only_those_errors_and_a_timeout_its_lambda_alias() -> None:
    p = make_pipeline({"a": []}, extra={"a": {"retry": {"max_attempts": 3,
                                                         "retry_on": ["udop.TaskTimeout", "ValueError"]}}})
    rules = compile_pipeline(p).definition["States"]["a"]["Retry"]
    assert rules[0]["ErrorEquals"] == ["udop.TaskTimeout", "ValueError", "States.Timeout"]
    assert rules[0]["MaxAttempts"] == 2
    assert all("States.ALL" not in r["ErrorEquals"] for r in rules)


def test_a_task_retry_merges_over_the_defaults_field_by_field() -> None:
    defaults = {"retry": {"max_attempts": 4, "base_delay": "3s", "max_delay": "1m"}}
    p = make_pipeline({"a": []}, defaults=defaults, extra={"a": {"retry": {"max_attempts": 2}}})
    policy = p.retry_for(p.task("a"))
    assert (policy.max_attempts, policy.base_delay, policy.max_delay) == (2, 3.0, 60.0)
    rule = compile_pipeline(p).definition["States"]["a"]["Retry"][-1]
    assert (rule["MaxAttempts"], rule["IntervalSeconds"], rule["MaxDelaySeconds"]) == (1, 3, 60)


def test_pipeline_defaults_apply_when_a_task_sets_nothing() -> None:
    defaults = {"retry": {"max_attempts": 3, "base_delay": "2s", "max_delay": "1m"}, "timeout": "90s"}
    p = make_pipeline({"a": []}, defaults=defaults)
    state = compile_pipeline(p).definition["States"]["a"]
    assert state["Retry"][-1]["MaxAttempts"] == 2
    assert state["Retry"][-1]["MaxDelaySeconds"] == 60
    assert state["TimeoutSeconds"] == 90


def test_timeout_over_the_lambda_limit_is_a_one_line_compile_error() -> None:
    p = make_pipeline({"slow": []}, extra={"slow": {"timeout": "1h"}})
    with pytest.raises(CompileError) as err:
        compile_pipeline(p)
    msg = str(err.value)
    assert "\n" not in msg
    assert "'slow'" in msg
    assert "900s" in msg
    assert "2700s" in msg


def test_failures_end_in_fail_with_the_tasks_error_or_leave_the_branch() -> None:
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    c = compile_pipeline(make_pipeline(deps))
    routes = failure_routes(c.definition)
    # a and d run at the top: their failure goes straight to Fail; b and c sit in a Parallel branch,
    # which ends carrying the failure so the other branch can finish
    assert routes == {"a": "fail", "d": "fail", "b": "end", "c": "end"}
    states = c.definition["States"]
    fail = states[states["Run failed"]["Default"]]
    assert fail == {"Type": "Fail", "Comment": fail["Comment"], "ErrorPath": "$.failure.Error",
                    "CausePath": "$.failure.Cause"}
    parallel = c.definition["States"]["Parallel 1"]
    assert parallel["ResultSelector"] == {"failures.$": "$[*].failure"}
    check = c.definition["States"][parallel["Next"]]
    assert check["Choices"][0]["Variable"] == "$.branches.failures[0]"
    assert states[check["Choices"][0]["Next"]]["Next"] == "Run failed"


def test_simulated_failure_reaches_fail_with_the_tasks_error() -> None:
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    c = compile_pipeline(make_pipeline(deps))
    # a fails at the top: the execution fails with a's own error and cause, nothing after it runs
    out = simulate(c.definition, RUN_INPUT, fail={"a"}, cause_bytes=100)
    assert (out.end_type, out.ran) == ("Fail", ["a"])
    assert (out.error, out.cause) == ("udop.FatalError", failure_cause("a", 100))
    assert out.largest_state < 2 * KIB
    # c fails inside a Parallel branch: b still finishes, d never starts, the run fails with c's error
    # (the cause points at the task record, as a branch carries a fixed-size failure)
    out = simulate(c.definition, RUN_INPUT, fail={"c"}, cause_bytes=100)
    assert out.end_type == "Fail"
    assert sorted(out.ran) == ["a", "b", "c"]
    assert (out.error, out.cause) == ("udop.FatalError", "udop.FatalError in task c; its message is in the task record")
    # a task that times out (States.Timeout from Step Functions) ends as udop.TaskTimeout naming it
    out = simulate(c.definition, RUN_INPUT, fail={"d"}, cause_bytes=100, error="States.Timeout")
    assert out.end_type == "Fail" and out.ran[-1] == "d"
    assert (out.error, out.cause) == ("udop.TaskTimeout", f"States.Timeout in task d: {failure_cause('d', 100)}")
    # and with nothing failing, the run ends in success
    ok = simulate(c.definition, RUN_INPUT, fail=False)
    assert (ok.end_state, ok.end_type, ok.error) == ("d", "Task", None)  # d ends the machine
    assert sorted(ok.ran) == ["a", "b", "c", "d"]


def test_five_hundred_parents_keep_every_state_small() -> None:
    def compiled(n: int) -> Any:
        deps: dict[str, list[str]] = {f"p{i}": [] for i in range(n)}
        deps["join"] = list(deps)
        return compile_pipeline(make_pipeline(deps))

    big, small = compiled(500), compiled(5)
    assert big.estimates.tasks == 501
    ok_big = simulate(big.definition, RUN_INPUT, fail=False)
    ok_small = simulate(small.definition, RUN_INPUT, fail=False)
    # on success no state grows with the fan-in at all
    assert ok_big.largest_state == ok_small.largest_state < 2 * KIB
    assert ok_big.largest_result <= 500 * 4
    # all 500 parents failing with 4 KiB causes: the branches carry fixed-size records
    bad = simulate(big.definition, RUN_INPUT, fail=True, cause_bytes=4 * KIB)
    assert bad.largest_result < 64 * KIB, bad
    assert bad.largest_state < 64 * KIB, bad
    walked = walk(big)
    assert walked.before["join"] == frozenset(f"p{i}" for i in range(500))
    assert_valid(big)


def test_state_names_are_unique_across_branches() -> None:
    deps = {"a": [], "b": ["a"], "c": ["a"], "x": ["b"], "y": ["b"], "z": ["c"], "w": ["c"],
            "end": ["x", "y", "z", "w"]}
    c = compile_pipeline(make_pipeline(deps))
    names = [n for n, _ in all_states(c.definition["States"])]
    assert len(names) == len(set(names))
    assert all(len(n) <= 80 for n in names)


# -- foreach -----------------------------------------------------------------------------------------

def _foreach_pipeline(over: str = "files") -> Any:
    return make_pipeline({"list_files": [], "each": ["list_files"], "after": ["each"]}, name="fan", extra={
        "each": {"foreach": {"input": "list_files", "over": over, "max_concurrency": 8}}})


def test_foreach_becomes_a_distributed_map_over_the_inputs_prefix() -> None:
    c = compile_pipeline(_foreach_pipeline())
    m = c.definition["States"]["each"]
    assert m["Type"] == "Map"
    assert m["MaxConcurrency"] == 8
    assert m["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    reader = m["ItemReader"]
    assert reader["Resource"] == "arn:aws:states:::s3:listObjectsV2"
    assert reader["Parameters"]["Bucket.$"] == "$$.Execution.Input.run.data_bucket"
    assert "runs/fan/{}/list_files/" in reader["Parameters"]["Prefix.$"]
    assert "ResultWriter" in m
    assert m["ResultPath"] is None
    inner = next(iter(m["ItemProcessor"]["States"].values()))
    payload = inner["Parameters"]["Payload"]
    assert payload["task_id"] == "each"
    assert payload["item.$"] == "$.item"
    assert payload["run.$"] == "$.run"
    assert m["ItemSelector"]["item"]["key.$"] == "$$.Map.Item.Value.Key"
    assert walk(c).before["after"] == {"list_files", "each"}


def test_foreach_over_partitions_reads_the_partition_manifest() -> None:
    c = compile_pipeline(_foreach_pipeline("partitions"))
    reader = c.definition["States"]["each"]["ItemReader"]
    assert reader["Resource"] == "arn:aws:states:::s3:getObject"
    assert reader["ReaderConfig"] == {"InputType": "JSON"}
    assert "list_files/_partitions.json" in reader["Parameters"]["Key.$"]


def test_inline_map_lists_at_most_the_cap_and_fails_beyond_it() -> None:
    c = compile_pipeline(_foreach_pipeline(), options=CompileOptions(map_mode="inline", inline_max_items=50))
    states = c.definition["States"]
    assert states["list_files"]["Next"] == "each list"
    listing = states["each list"]
    assert listing["Resource"] == "arn:aws:states:::aws-sdk:s3:listObjectsV2"
    assert listing["Parameters"]["MaxKeys"] == 50
    check = states[listing["Next"]]
    too_many = states[check["Choices"][0]["Next"]]
    assert too_many["Result"]["Error"] == "udop.FatalError"
    assert "more than 50" in too_many["Result"]["Cause"]
    m = states["each"]
    assert m["ItemProcessor"]["ProcessorConfig"] == {"Mode": "INLINE"}
    assert m["ItemsPath"] == "$.items.keys"
    parts = compile_pipeline(_foreach_pipeline("partitions"), options=CompileOptions(map_mode="inline"))
    # partitions: the list the upstream's runner wrote, as for the distributed Map
    part_list = parts.definition["States"]["each list"]
    assert part_list["Resource"] == "arn:aws:states:::lambda:invoke"
    assert part_list["Parameters"]["Payload"]["list"] is True
    assert part_list["Parameters"]["Payload"]["max_items"] == 100
    assert part_list["ResultSelector"]["truncated.$"] == "$.Payload.truncated"  # the same cap check
    assert_valid([c, parts, compile_pipeline(_foreach_pipeline()),
                  compile_pipeline(_foreach_pipeline("partitions"))])


# -- limits and splitting --------------------------------------------------------------------------------

def test_estimates_follow_the_documented_event_model() -> None:
    n, attempts = 40, 3
    deps = {f"t{i}": [f"t{i - 1}"] if i else [] for i in range(n)}
    c = compile_pipeline(make_pipeline(deps, defaults={"retry": {"max_attempts": attempts}}))
    # per task: 5 events + 3 per retry + 2 for the failure record; per execution 4
    assert c.estimates.max_history_events == n * (5 + 3 * (attempts - 1) + 2) + 4
    assert c.estimates.definition_bytes == len(c.to_json().encode())
    assert c.estimates.states == 2 * n + 4  # task + its failure record each, and the failure end
    assert c.estimates.tasks == n


def test_a_long_chain_over_the_size_budget_is_split_into_children() -> None:
    n = 300
    deps = {f"t{i}": [f"t{i - 1}"] if i else [] for i in range(n)}
    options = CompileOptions(max_definition_bytes=60_000)
    c = compile_pipeline(make_pipeline(deps, name="chain"), options=options)
    machines = [c, *c.all_children()]
    assert len(machines) > 1
    assert all(m.estimates.definition_bytes <= 60_000 for m in machines)
    assert sorted(t for m in machines for t in m.task_ids) == sorted(deps)
    child_keys = [s for s in c.substitutions if s.startswith("Child_")]
    assert [f"Child_{ch.name}Arn" for ch in c.children] == child_keys
    call = next(s for _, s in all_states(c.definition["States"])
                if s.get("Resource") == "arn:aws:states:::states:startExecution.sync:2")
    assert call["Parameters"]["Input"]["run.$"] == "$$.Execution.Input.run"
    child_task = next(s for _, s in all_states(c.children[0].definition["States"]) if s["Type"] == "Task")
    # tasks in a child report the run's root execution, not the child's
    assert child_task["Parameters"]["Payload"]["execution.$"] == "$$.Execution.Input.root_execution"
    w = walk(c)
    assert dict(w.runs) == dict.fromkeys(deps, 1)
    assert all(w.before[f"t{i}"] >= {f"t{i - 1}"} for i in range(1, n))
    assert_valid(c)


def test_a_wide_fan_out_over_the_event_budget_is_split_and_keeps_its_parallelism() -> None:
    n = 600
    deps: dict[str, list[str]] = {"start": []}
    deps.update({f"w{i}": ["start"] for i in range(n)})
    deps["end"] = [f"w{i}" for i in range(n)]
    options = CompileOptions(max_history_events=2_000)
    c = compile_pipeline(make_pipeline(deps, name="wide"), options=options)
    machines = [c, *c.all_children()]
    assert len(machines) > 1
    assert all(m.estimates.max_history_events <= 2_000 for m in machines)
    durations = dict.fromkeys(deps, 1.0)
    durations["w7"] = 50.0
    w = walk(c, durations)
    assert dict(w.runs) == dict.fromkeys(deps, 1)
    assert w.makespan == 52.0  # start, the slowest worker, end: nothing serialised by the split
    assert w.before["end"] >= {f"w{i}" for i in range(n)}
    assert_valid(c)


def test_over_the_limit_without_splitting_says_which_limit_and_by_how_much() -> None:
    n, budget = 200, 1_000
    deps = {f"t{i}": [f"t{i - 1}"] if i else [] for i in range(n)}
    options = CompileOptions(max_history_events=budget, split=False)
    with pytest.raises(CompileError) as err:
        compile_pipeline(make_pipeline(deps, name="long"), options=options)
    msg = str(err.value)
    expected = n * 7 + 4  # documented model, one attempt per task
    assert "\n" not in msg
    assert "'long'" in msg
    assert f"up to {expected:,} history events" in msg
    assert f"{expected - budget:,} over" in msg


def test_a_single_task_too_big_for_any_machine_is_rejected() -> None:
    p = make_pipeline({"src": [], "each": ["src"]}, extra={
        "each": {"foreach": {"input": "src"}, "retry": {"max_attempts": 20}}})
    options = CompileOptions(map_mode="inline", inline_max_items=1000)
    with pytest.raises(CompileError, match=r"task 'each' alone needs .* history events.*distributed"):
        compile_pipeline(p, options=options)


def test_the_validator_helper_rejects_broken_definitions() -> None:
    c = compile_pipeline(make_pipeline({"a": [], "b": ["a"]}))
    dangling = json.loads(c.to_json())
    dangling["States"]["a"]["Next"] = "nowhere"
    wrong_type = json.loads(c.to_json())
    wrong_type["States"]["a"]["TimeoutSeconds"] = "soon"
    bad = validate({"ok": c.definition, "dangling": dangling, "wrong_type": wrong_type})
    assert set(bad) == {"dangling", "wrong_type"}
    assert "nowhere" in bad["dangling"]
    assert "TimeoutSeconds" in bad["wrong_type"]


def test_interval_rounding_matches_the_policy() -> None:
    for base, expected in [(0.1, 1), (1.0, 1), (1.01, 2), (30, 30)]:
        p = make_pipeline({"a": []}, extra={"a": {"retry": {"max_attempts": 2, "base_delay": base}}})
        rule = compile_pipeline(p).definition["States"]["a"]["Retry"][-1]
        assert rule["IntervalSeconds"] == expected == max(1, math.ceil(base))


def test_catching_can_be_turned_off_so_redrive_resumes_at_the_failed_task() -> None:
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["d"]}
    extra = {"e": {"foreach": {"input": "d"}}}
    plain = compile_pipeline(make_pipeline(deps, extra=extra), options=CompileOptions(catch_failures=False))
    inline = compile_pipeline(make_pipeline(deps, extra=extra),
                              options=CompileOptions(catch_failures=False, map_mode="inline"))
    for c in (plain, inline):
        states = all_states(c.definition["States"])
        assert not [n for n, s in states if "Catch" in s]
        assert not [n for n, s in states if n.endswith(" failed") and s["Type"] == "Pass"]
        assert walk(c).before["e"] == {"a", "b", "c", "d"}
    too_many = dict(all_states(inline.definition["States"]))["e too many items"]
    assert too_many["Type"] == "Fail"
    assert too_many["Error"] == "udop.FatalError"
    assert_valid([plain, inline])


def test_the_same_pipeline_compiles_to_the_same_definition() -> None:
    # deployers compare definitions to decide whether to update a state machine
    rng = random.Random(11)
    deps = {f"t{i}": [f"t{j}" for j in rng.sample(range(max(0, i - 10), i), min(i, rng.randint(0, 3)))]
            for i in range(150)}
    options = CompileOptions(max_definition_bytes=50_000)
    first = compile_pipeline(make_pipeline(deps), options=options)
    again = compile_pipeline(make_pipeline(deps), options=options)
    assert first.to_json() == again.to_json()
    assert [c.to_json() for c in first.all_children()] == [c.to_json() for c in again.all_children()]
    assert [c.name for c in first.all_children()] == [c.name for c in again.all_children()]
