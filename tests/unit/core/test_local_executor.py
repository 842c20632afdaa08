"""The LocalExecutor: parallelism, retries with backoff, timeouts, failure propagation, resume."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from udop.errors import InputError, SpecErrors
from udop.executor.local import LocalExecutor
from udop.spec.loader import load_pipeline
from udop.spec.models import RetryPolicy
from udop.states import AttemptState, RunState, TaskState

FAST_RETRY = {"max_attempts": 3, "base_delay": "10ms", "max_delay": "50ms"}


def _run(project: Any, store: Any, path: Any, *, workers: int = 4, **kwargs: Any) -> Any:
    pipeline = load_pipeline(path, import_callables=True)
    executor = LocalExecutor(
        store, workers=workers, data_root=str(project.root / "data"), services={"base_dir": str(project.root)}
    )
    record = executor.run(pipeline, **kwargs)
    return store.get_run(record.id)


def _tasks(run: Any) -> dict[str, Any]:
    return {t.task_id: t for t in run.tasks}


def test_independent_tasks_run_at_the_same_time(project: Any, store: Any) -> None:
    # rendezvous succeeds only when both tasks are inside it together (a barrier with a timeout)
    path = project.pipeline(
        [
            project.task("left", "rendezvous", args={"key": project.module}),
            project.task("right", "rendezvous", args={"key": project.module}),
            project.task("join", "record", depends_on=["left", "right"]),
        ]
    )
    run = _run(project, store, path, workers=2)
    assert run.state == RunState.SUCCEEDED
    assert _tasks(run)["join"].result["value"]["inputs"] == ["left", "right"]


def test_dependencies_pass_datasets_by_reference(project: Any, store: Any) -> None:
    path = project.pipeline(
        [
            project.task("numbers", "numbers", args={"n": 5}),
            project.task("doubled", "double", depends_on=["numbers"]),
        ]
    )
    run = _run(project, store, path)
    doubled = _tasks(run)["doubled"].result["output"]
    assert doubled["rows"] == 5 and doubled["uri"].endswith(f"/runs/demo/{run.id}/doubled/")
    import pyarrow.parquet as pq

    assert pq.read_table(doubled["uri"]).column("n").to_pylist() == [0, 2, 4, 6, 8]
    lineage = {x.task_id: x for x in store.get_lineage(run.id)}
    assert lineage["doubled"].inputs == [_tasks(run)["numbers"].result["output"]["uri"]]
    assert lineage["doubled"].rows == 5


def test_a_task_failing_twice_then_succeeding_is_retried(project: Any, store: Any) -> None:
    path = project.pipeline(
        [project.task("flaky", "fail_until", args={"name": "flaky", "succeed_on": 3}, retry=FAST_RETRY)]
    )
    run = _run(project, store, path)
    flaky = _tasks(run)["flaky"]
    assert run.state == RunState.SUCCEEDED
    assert [a.state for a in flaky.attempts] == [
        AttemptState.FAILED,
        AttemptState.FAILED,
        AttemptState.SUCCEEDED,
    ]
    assert flaky.attempts[0].error_type == "ConnectionError"
    assert flaky.attempts[0].error_message == "transient failure 1"
    assert project.count("flaky") == 3


def test_retries_stop_at_max_attempts(project: Any, store: Any) -> None:
    path = project.pipeline(
        [project.task("flaky", "fail_until", args={"name": "flaky", "succeed_on": 99}, retry=FAST_RETRY)]
    )
    run = _run(project, store, path)
    assert run.state == RunState.FAILED
    assert len(_tasks(run)["flaky"].attempts) == 3
    assert "task 'flaky' failed: ConnectionError: transient failure 3" in run.error


def test_a_fatal_error_is_not_retried(project: Any, store: Any) -> None:
    path = project.pipeline([project.task("bad", "fail_fatal", retry=FAST_RETRY)])
    run = _run(project, store, path)
    assert len(_tasks(run)["bad"].attempts) == 1
    assert _tasks(run)["bad"].error_type == "udop.FatalError"


def test_backoff_is_exponential_and_capped() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=2, backoff_rate=3, max_delay=30)
    assert [policy.delay(n) for n in range(1, 6)] == [2, 6, 18, 30, 30]


class _Draws(random.Random):
    """The executor's random source, answering a fixed point of each range it is asked for."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction
        self.asked: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.asked.append((a, b))
        return a + (b - a) * self.fraction


@pytest.mark.parametrize("jitter", ["full", "none"])
def test_the_executor_draws_each_retry_wait_from_zero_to_the_backoff(
    project: Any, store: Any, jitter: str
) -> None:
    retry = {"max_attempts": 3, "base_delay": "200ms", "backoff_rate": 2, "max_delay": 1, "jitter": jitter}
    path = project.pipeline(
        [project.task("flaky", "fail_until", args={"name": "flaky", "succeed_on": 3}, retry=retry)]
    )
    rng = _Draws(0.5)
    events: list[Any] = []
    executor = LocalExecutor(
        store, data_root=str(project.root / "data"), services={"base_dir": str(project.root)},
        on_event=events.append, rng=rng,
    )
    record = executor.run(load_pipeline(path, import_callables=True))
    assert record.state == RunState.SUCCEEDED
    waits = [e.message.rsplit("retry in ", 1)[1] for e in events if e.state == TaskState.RETRYING.value]
    if jitter == "full":
        # full jitter: uniform over [0, backoff] for each retry, and the drawn value is the wait
        assert rng.asked == [(0, 0.2), (0, 0.4)]
        assert waits == ["0.1s)", "0.2s)"]
    else:
        assert rng.asked == []
        assert waits == ["0.2s)", "0.4s)"]


def test_retry_waits_are_observed(project: Any, store: Any) -> None:
    retry = {"max_attempts": 3, "base_delay": "200ms", "backoff_rate": 2, "max_delay": 1, "jitter": "none"}
    path = project.pipeline(
        [project.task("flaky", "fail_until", args={"name": "flaky", "succeed_on": 3}, retry=retry)]
    )
    run = _run(project, store, path)
    a1, a2, a3 = _tasks(run)["flaky"].attempts
    assert (a2.started_at - a1.ended_at).total_seconds() >= 0.19
    assert (a3.started_at - a2.ended_at).total_seconds() >= 0.39


def test_timeout_ends_the_attempt_and_frees_the_worker(project: Any, store: Any) -> None:
    path = project.pipeline(
        [
            project.task(
                "slow",
                "sleep",
                args={"seconds": 30},
                timeout="300ms",
                retry={"max_attempts": 2, "base_delay": "10ms"},
            ),
            project.task("after", "record"),
        ]
    )
    started = time.monotonic()
    run = _run(project, store, path, workers=1)
    assert time.monotonic() - started < 10
    tasks = _tasks(run)
    assert [a.state for a in tasks["slow"].attempts] == [AttemptState.TIMED_OUT, AttemptState.TIMED_OUT]
    assert tasks["slow"].error_type == "udop.TaskTimeout"
    assert tasks["after"].state == TaskState.SUCCEEDED  # the single worker slot was given back


def test_failure_marks_dependants_upstream_failed_and_unrelated_branches_finish(
    project: Any, store: Any
) -> None:
    path = project.pipeline(
        [
            project.task("bad", "fail_fatal"),
            project.task("child", "record", depends_on=["bad"]),
            project.task("grandchild", "record", depends_on=["child"]),
            project.task("other", "record"),
            project.task("other_child", "record", depends_on=["other"]),
        ]
    )
    run = _run(project, store, path)
    states = {tid: t.state for tid, t in _tasks(run).items()}
    assert run.state == RunState.FAILED
    assert states == {
        "bad": TaskState.FAILED,
        "child": TaskState.UPSTREAM_FAILED,
        "grandchild": TaskState.UPSTREAM_FAILED,
        "other": TaskState.SUCCEEDED,
        "other_child": TaskState.SUCCEEDED,
    }
    assert project.count("child") == 0


def test_resume_runs_only_what_did_not_succeed(project: Any, store: Any) -> None:
    path = project.pipeline(
        [
            project.task("first", "record"),
            project.task("gate", "fail_unless_flag", depends_on=["first"]),
            project.task("last", "record", depends_on=["gate"]),
            project.task("side", "record"),
        ]
    )
    run = _run(project, store, path)
    assert run.state == RunState.FAILED
    (project.root / "fixed").write_text("")
    resumed = _run(project, store, path, run_id=run.id, resume=True)
    assert resumed.id == run.id and resumed.state == RunState.SUCCEEDED
    assert (project.count("first"), project.count("gate"), project.count("last"), project.count("side")) == (
        1,
        2,
        1,
        1,
    )
    gate = _tasks(resumed)["gate"]
    assert [a.number for a in gate.attempts] == [1, 2]
    # the resumed task still got its upstream's output from the store
    assert _tasks(resumed)["last"].result["value"]["inputs"] == ["gate"]


def test_resume_refuses_a_succeeded_run_and_an_unknown_one(project: Any, store: Any) -> None:
    path = project.pipeline([project.task("only", "record")])
    run = _run(project, store, path)
    with pytest.raises(InputError, match="already succeeded"):
        _run(project, store, path, run_id=run.id, resume=True)
    with pytest.raises(InputError, match="no run 'nope'"):
        _run(project, store, path, run_id="nope", resume=True)


def test_parameters_are_typed_overridable_and_rendered(project: Any, store: Any) -> None:
    path = project.pipeline(
        [
            project.task(
                "t",
                "echo_args",
                args={
                    "month": "${params.month}",
                    "label": "m=${params.month} d=${run.logical_date}",
                    "run": "${run.id}",
                    "home": "${env.UDOP_HOME}",
                },
            )
        ],
        params={"month": {"type": "int", "default": 1}},
    )
    run = _run(project, store, path, params={"month": "7"})
    value = _tasks(run)["t"].result["value"]
    assert value["month"] == 7 and value["run"] == run.id
    assert value["label"] == f"m=7 d={run.logical_date.date().isoformat()}"
    assert run.params == {"month": 7}


def test_missing_or_bad_parameters_fail_before_anything_runs(project: Any, store: Any) -> None:
    path = project.pipeline([project.task("t", "record")], params={"month": {"type": "int"}})
    with pytest.raises(
        SpecErrors, match="parameter 'month' has no default and no value; give it with --param month=VALUE"
    ):
        _run(project, store, path)
    with pytest.raises(SpecErrors, match="parameter 'month': 'june' is not a valid int"):
        _run(project, store, path, params={"month": "june"})
    with pytest.raises(SpecErrors, match="unknown parameter 'mnth'; did you mean 'month'"):
        _run(project, store, path, params={"mnth": "1", "month": "1"})
    assert project.count("t") == 0 and store.list_runs() == []


def test_missing_environment_variable_fails_before_anything_runs(project: Any, store: Any) -> None:
    path = project.pipeline([project.task("t", "record", args={"token": "${env.UDOP_TEST_SURELY_UNSET}"})])
    with pytest.raises(SpecErrors, match="environment variable 'UDOP_TEST_SURELY_UNSET' is not set"):
        _run(project, store, path)


def test_a_too_large_return_value_fails_the_task_with_a_clear_error(project: Any, store: Any) -> None:
    path = project.pipeline([project.task("big", "big_value")])
    run = _run(project, store, path)
    big = _tasks(run)["big"]
    assert big.error_type == "udop.PayloadTooLarge" and "return a table" in big.error_message


def test_a_configuration_error_inside_a_task_is_not_retried(project: Any, store: Any) -> None:
    path = project.pipeline([project.task("cfg", "bad_setting", retry=FAST_RETRY)])
    run = _run(project, store, path)
    assert project.count("cfg") == 1
    assert _tasks(run)["cfg"].error_type == "udop.ConfigError"


def test_runs_inside_reusing_workers_share_one_pool_whose_threads_end_with_it(project: Any, store: Any) -> None:
    import threading

    path = project.pipeline(
        [project.task("a", "thread_uses"), project.task("b", "thread_uses", depends_on=["a"])]
    )
    pipeline = load_pipeline(path, import_callables=True)
    executor = LocalExecutor(store, workers=2, data_root=str(project.root / "data"))

    def uses(record: Any) -> list[int]:
        run = store.get_run(record.id)
        assert run.state == RunState.SUCCEEDED
        return [t.result["value"]["uses"] for t in run.tasks]

    # on their own, each run starts its threads: no thread runs more than the run's two attempts
    assert max(u for _ in range(3) for u in uses(executor.run(pipeline))) <= 2
    with executor.reusing_workers():
        counts = [u for _ in range(3) for u in uses(executor.run(pipeline))]
    # six attempts on at most two threads: one of them ran at least three, across runs
    assert max(counts) >= 3
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(getattr(t, "udop_test_uses", 0) for t in threading.enumerate()):
        time.sleep(0.02)
    assert not [t.name for t in threading.enumerate() if getattr(t, "udop_test_uses", 0)]
