"""``reset_for_retry`` (a run queued again from a task) and the run's recorded trigger, on each backend."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from udop.errors import RunNotFound, TransitionError
from udop.states import AttemptState, RunState, TaskState
from udop.store.api import MetadataStore

DEFINITION = {"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": "p"},
              "spec": {"tasks": [{"id": "a", "type": "python", "callable": "m:f"}]}}


def _succeeded_run(store: MetadataStore, run_id: str, tasks: tuple[str, ...]) -> None:
    version = store.register_pipeline("p", DEFINITION).version
    store.create_run(run_id=run_id, pipeline="p", pipeline_version=version, task_ids=list(tasks),
                     params={}, logical_date=datetime(2026, 1, 1, tzinfo=UTC), trigger="schedule")
    store.set_run_state(run_id, RunState.RUNNING, owner="1@host")
    for t in tasks:
        store.start_attempt(run_id, t, 1)
        store.finish_attempt(run_id, t, 1, attempt_state=AttemptState.SUCCEEDED,
                             task_state=TaskState.SUCCEEDED, result={"output": {"uri": f"/{t}"}, "inputs": []})
    store.set_run_state(run_id, RunState.SUCCEEDED)


def test_reset_for_retry_queues_an_ended_run_again_from_its_tasks(store: MetadataStore) -> None:
    _succeeded_run(store, "r1", ("a", "b", "c"))
    assert store.reset_for_retry("r1", ["c", "b"]) == ["b", "c"]  # in task order
    run = store.get_run("r1")
    assert run is not None
    assert (run.state, run.ended_at, run.owner, run.lease_expires_at, run.trigger) == (
        RunState.PENDING, None, None, None, "schedule")  # the run keeps how it was first started
    tasks = {t.task_id: t for t in run.tasks}
    assert tasks["a"].state is TaskState.SUCCEEDED and tasks["a"].result is not None
    for t in ("b", "c"):
        assert (tasks[t].state, tasks[t].result, tasks[t].ended_at) == (TaskState.PENDING, None, None)
        assert [a.state for a in tasks[t].attempts] == [AttemptState.SUCCEEDED]  # history kept
    assert [lin.task_id for lin in store.get_lineage("r1")] == ["a"]
    # the executor's resume takes it from there
    assert store.reset_for_resume("r1") == ["b", "c"]
    assert store.get_run("r1").state is RunState.RUNNING  # type: ignore[union-attr]


def test_reset_for_retry_refuses_a_live_run_and_unknown_tasks(store: MetadataStore) -> None:
    _succeeded_run(store, "r1", ("a",))
    store.reset_for_retry("r1", ["a"])  # now pending: queued
    before = store.get_run("r1")
    with pytest.raises(TransitionError, match="is pending"):
        store.reset_for_retry("r1", ["a"])
    store.set_run_state("r1", RunState.RUNNING)
    with pytest.raises(TransitionError, match="is running"):
        store.reset_for_retry("r1", ["a"])
    assert store.get_run("r1").tasks == before.tasks  # type: ignore[union-attr]
    store.set_run_state("r1", RunState.FAILED)
    with pytest.raises(RunNotFound, match="no task 'zz'"):
        store.reset_for_retry("r1", ["a", "zz"])
    assert store.get_run("r1").state is RunState.FAILED  # type: ignore[union-attr]  # all or nothing
    with pytest.raises(RunNotFound):
        store.reset_for_retry("nope", ["a"])


def test_list_runs_filters_by_trigger(store: MetadataStore) -> None:
    version = store.register_pipeline("p", DEFINITION).version
    for i, trigger in enumerate(["cli", "api", None, "api"]):
        store.create_run(run_id=f"r{i}", pipeline="p", pipeline_version=version, task_ids=["a"], params={},
                         logical_date=datetime(2026, 1, 1, tzinfo=UTC), trigger=trigger)
    assert [r.id for r in store.list_runs(trigger="api")] == ["r3", "r1"]
    assert [r.trigger for r in store.list_runs()] == ["api", None, "api", "cli"]
    assert [r.id for r in store.list_runs(trigger="api", limit=1, before="r3")] == ["r1"]
