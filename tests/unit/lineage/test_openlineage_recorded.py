"""Where no executor reports as it goes (the run events on AWS), the events come from what one update
of the run's records added: each attempt's START and end once, timed by its records, the run's START
and end once, and nothing when the records did not change."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from udop.lineage import openlineage
from udop.states import AttemptState, RunState, TaskState
from udop.store import open_store
from udop.tasks.contract import Manifest, TaskResult

DEFINITION = {"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": "p"},
              "spec": {"tasks": [{"id": "a", "type": "python", "callable": "m:f"},
                                 {"id": "b", "type": "python", "callable": "m:f", "depends_on": ["a"]}]}}


@pytest.fixture
def events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "ol.jsonl"
    monkeypatch.setenv("UDOP_OPENLINEAGE", "1")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(path))
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    openlineage.reset_client()
    yield path
    openlineage.reset_client()


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_each_recorded_change_is_sent_once(events: Path, tmp_path: Path) -> None:
    failed_before = openlineage.stats["failed"]  # a process-wide count: other tests' failures stay in it
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    store.register_pipeline("p", DEFINITION)
    store.create_run(run_id="r1", pipeline="p", pipeline_version=1, task_ids=["a", "b"], params={},
                     logical_date=datetime(2024, 1, 1, tzinfo=UTC), executor="stepfunctions")
    before = store.get_run("r1")
    store.set_run_state("r1", RunState.RUNNING)
    store.start_attempt("r1", "a", 1)
    store.finish_attempt("r1", "a", 1, attempt_state=AttemptState.SUCCEEDED, task_state=TaskState.SUCCEEDED,
                         result=TaskResult(output=Manifest(uri="s3://data/runs/p/r1/a/", rows=2)).to_dict())
    store.start_attempt("r1", "b", 1)
    middle = store.get_run("r1")
    assert middle is not None
    openlineage.recorded(before, middle, store)
    assert [(e["job"]["name"], e["eventType"]) for e in _read(events)] == [
        ("p", "START"), ("p.a", "START"), ("p.a", "COMPLETE"), ("p.b", "START")]
    b_start = _read(events)[-1]
    # the START of b names what it will read: a's dataset, from the definition the run ran
    assert [(d["namespace"], d["name"]) for d in b_start["inputs"]] == [("s3://data", "runs/p/r1/a")]
    attempt = next(t for t in middle.tasks if t.task_id == "a").attempts[0]
    assert _read(events)[1]["eventTime"] == attempt.started_at.isoformat()

    openlineage.recorded(middle, middle, store)  # the same records again: nothing new
    assert len(_read(events)) == 4

    store.finish_attempt("r1", "b", 1, attempt_state=AttemptState.FAILED, task_state=TaskState.FAILED,
                         error_type="udop.FatalError", error_message="boom")
    store.set_run_state("r1", RunState.FAILED, error="task 'b' failed")
    after = store.get_run("r1")
    openlineage.recorded(middle, after, store)
    sent = _read(events)
    assert [(e["job"]["name"], e["eventType"]) for e in sent[4:]] == [("p.b", "FAIL"), ("p", "FAIL")]
    assert sent[4]["run"]["runId"] == sent[3]["run"]["runId"]  # one attempt, one OpenLineage run
    assert sent[4]["run"]["facets"]["errorMessage"]["message"] == "udop.FatalError: boom"
    assert openlineage.stats["failed"] == failed_before
    store.close()
