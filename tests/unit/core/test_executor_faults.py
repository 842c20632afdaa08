"""The LocalExecutor under faults of the task's own making: an unstorable return value, an attempt
that ignores its timeout, a definition edited before a resume, a second run of a limited pipeline."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import pytest
import yaml

from udop.errors import InputError, RunLimitReached
from udop.executor.local import LocalExecutor
from udop.spec.loader import load_pipeline
from udop.spec.models import Pipeline
from udop.states import AttemptState, RunState, TaskState
from udop.store.api import RunSlot


def _executor(project: Any, store: Any, **kwargs: Any) -> LocalExecutor:
    return LocalExecutor(
        store, data_root=str(project.root / "data"), services={"base_dir": str(project.root)}, **kwargs
    )


def _tasks(run: Any) -> dict[str, Any]:
    return {t.task_id: t for t in run.tasks}


def test_an_unstorable_return_value_fails_that_task_alone(project: Any, store: Any) -> None:
    path = project.pipeline(
        [
            project.task("bad", "returns", args={"kind": "object"}),
            project.task("after_bad", "record", depends_on=["bad"]),
            project.task("numbers", "returns", args={"kind": "numpy"}),
            project.task("after_numbers", "echo_args", depends_on=["numbers"]),
            project.task("unrelated", "record"),
        ]
    )
    pipeline = load_pipeline(path, import_callables=True)
    record = _executor(project, store, workers=2).run(pipeline)
    run = store.get_run(record.id)
    tasks = _tasks(run)
    assert run.state == RunState.FAILED
    assert tasks["bad"].state == TaskState.FAILED
    assert tasks["bad"].error_type == "udop.FatalError"
    assert "builtins" not in tasks["bad"].error_message and "object" in tasks["bad"].error_message
    assert "\n" not in tasks["bad"].error_message
    assert len(tasks["bad"].attempts) == 1  # not retried: another attempt returns the same
    assert tasks["after_bad"].state == TaskState.UPSTREAM_FAILED
    assert tasks["unrelated"].state == TaskState.SUCCEEDED
    assert tasks["after_numbers"].state == TaskState.SUCCEEDED
    # numpy and pandas scalars, dates, datetimes and decimals are converted, not refused
    assert tasks["numbers"].result["value"] == {
        "sum": 6,
        "mean": 1.5,
        "flag": True,
        "when": "2026-11-30T05:00:00+00:00",
        "day": "2026-11-30",
        "at": "2026-11-30T05:00:00+00:00",
        "price": "12.30",
        "arr": [1, 2],
    }

    # resume meets the same failure as a failed task, not an aborted run
    again = _executor(project, store).run(pipeline, run_id=record.id, resume=True)
    assert again.state == RunState.FAILED
    assert _tasks(store.get_run(record.id))["bad"].state == TaskState.FAILED


def test_a_timed_out_attempt_that_ignores_cancellation_is_stopped_before_its_retry(
    project: Any, store: Any
) -> None:
    seconds = 4.0
    path = project.pipeline(
        [
            project.task(
                "stubborn",
                "stubborn_effect",
                args={"seconds": seconds},
                timeout="1s",
                retry={"max_attempts": 2, "base_delay": "10ms"},
            )
        ]
    )
    started = time.monotonic()
    record = _executor(project, store).run(load_pipeline(path, import_callables=True))
    run = store.get_run(record.id)
    assert run.state == RunState.SUCCEEDED, run.error
    stubborn = _tasks(run)["stubborn"]
    assert [a.state for a in stubborn.attempts] == [AttemptState.TIMED_OUT, AttemptState.SUCCEEDED]
    # give the first attempt all the time it would need to reach its side effect, had it survived
    time.sleep(max(0.0, started + seconds + 1.5 - time.monotonic()))
    assert (project.root / "effects.log").read_text().split() == ["2"]
    pid = int((project.root / "stubborn.started").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_resume_refuses_an_edited_definition_unless_asked_to_go_on_with_it(
    project: Any, store: Any
) -> None:
    tasks = [project.task("gate", "fail_unless_flag"), project.task("after", "record", depends_on=["gate"])]
    path = project.pipeline(tasks)
    record = _executor(project, store).run(load_pipeline(path, import_callables=True))
    assert record.state == RunState.FAILED and record.pipeline_version == 1

    tasks[1]["args"] = {"name": "edited"}
    project.pipeline(tasks)  # same tasks, edited arguments
    edited = load_pipeline(path, import_callables=True)
    (project.root / "fixed").write_text("")
    with pytest.raises(InputError, match=r"version 1 .*--on-new-version"):
        _executor(project, store).run(edited, run_id=record.id, resume=True)
    assert project.count("edited") == 0 and store.get_run(record.id).state == RunState.FAILED

    resumed = _executor(project, store).run(edited, run_id=record.id, resume=True, on_new_version=True)
    assert resumed.state == RunState.SUCCEEDED
    final = store.get_run(record.id)
    assert final.pipeline_version == 2
    versions = store.get_pipeline("demo").versions
    assert [v.version for v in versions] == [1, 2]
    assert versions[1].definition["spec"]["tasks"][1]["args"] == {"name": "edited"}
    assert project.count("edited") == 1


def test_resume_on_the_unchanged_definition_keeps_its_version(project: Any, store: Any) -> None:
    path = project.pipeline([project.task("gate", "fail_unless_flag")])
    pipeline = load_pipeline(path, import_callables=True)
    record = _executor(project, store).run(pipeline)
    (project.root / "fixed").write_text("")
    resumed = _executor(project, store).run(load_pipeline(path, import_callables=True), run_id=record.id,
                                            resume=True)
    assert resumed.state == RunState.SUCCEEDED and store.get_run(record.id).pipeline_version == 1
    assert len(store.get_pipeline("demo").versions) == 1


def _definition(tasks: list[dict[str, Any]], **spec: Any) -> Pipeline:
    return Pipeline.model_validate(
        {"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": "p"}, "spec": {"tasks": tasks, **spec}}
    )


def test_max_active_runs_defaults_to_one_with_an_incremental_extract() -> None:
    extract = {"id": "e", "type": "extract", "source": {"connector": "postgres", "table": "t"}}
    incremental = {**extract, "source": {**extract["source"], "incremental": {"column": "ts"}}}
    assert _definition([extract]).active_run_limit() is None
    assert _definition([incremental]).active_run_limit() == 1
    assert _definition([incremental], max_active_runs=3).active_run_limit() == 3
    via_connection = {"id": "e", "type": "extract", "source": {"connector": "postgres", "connection": "db",
                                                               "table": "t"}}
    connections = {"db": {"connector": "postgres", "incremental": {"column": "id"}}}
    assert _definition([via_connection], connections=connections).active_run_limit() == 1


def test_a_second_run_is_refused_while_the_first_holds_the_pipeline(project: Any, store: Any) -> None:
    path = project.pipeline([project.task("only", "record")])
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["max_active_runs"] = 1
    path.write_text(yaml.safe_dump(doc))
    pipeline = load_pipeline(path, import_callables=True)
    version = store.register_pipeline("demo", pipeline.model_dump(mode="json", by_alias=True)).version
    # another process on another machine holds the pipeline, with a live lease
    holder = store.create_run(run_id="holder", pipeline="demo", pipeline_version=version, task_ids=["only"],
                              params={}, logical_date=pipeline_date(),
                              slot=RunSlot(owner="1@elsewhere", lease_seconds=60, max_active=1))
    assert holder.state == RunState.RUNNING
    with pytest.raises(RunLimitReached, match=r"run 'holder' is running in process 1@elsewhere"):
        _executor(project, store).run(pipeline)
    assert project.count("only") == 0
    assert [r.id for r in store.list_runs()] == ["holder"]  # the refused run left nothing behind


def test_a_dead_holder_on_this_machine_does_not_block(project: Any, store: Any) -> None:
    path = project.pipeline([project.task("only", "record")])
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["max_active_runs"] = 1
    path.write_text(yaml.safe_dump(doc))
    pipeline = load_pipeline(path, import_callables=True)
    version = store.register_pipeline("demo", pipeline.model_dump(mode="json", by_alias=True)).version
    dead = f"{_dead_pid()}@{socket.gethostname()}"
    store.create_run(run_id="crashed", pipeline="demo", pipeline_version=version, task_ids=["only"],
                     params={}, logical_date=pipeline_date(),
                     slot=RunSlot(owner=dead, lease_seconds=600, max_active=1))
    record = _executor(project, store).run(pipeline)
    assert record.state == RunState.SUCCEEDED and project.count("only") == 1


def test_an_expired_lease_does_not_block(project: Any, store: Any) -> None:
    path = project.pipeline([project.task("only", "record")])
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["max_active_runs"] = 1
    path.write_text(yaml.safe_dump(doc))
    pipeline = load_pipeline(path, import_callables=True)
    version = store.register_pipeline("demo", pipeline.model_dump(mode="json", by_alias=True)).version
    store.create_run(run_id="silent", pipeline="demo", pipeline_version=version, task_ids=["only"],
                     params={}, logical_date=pipeline_date(),
                     slot=RunSlot(owner="1@elsewhere", lease_seconds=0.2, max_active=1))
    time.sleep(0.3)
    record = _executor(project, store).run(pipeline)
    assert record.state == RunState.SUCCEEDED


def pipeline_date() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],  # noqa: PLW1510
                          capture_output=True, text=True)
    return int(proc.stdout)

