"""OpenLineage events of real runs, captured by the client's file transport and checked by ``ol_schema``
(the client's typed model and our JSON Schema): START/COMPLETE/FAIL/ABORT for the run and each task, in
order, with datasets, schema, column lineage, row counts and data-quality facets; off unless
UDOP_OPENLINEAGE."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ol_schema import validate_event

from udop.executor.local import LocalExecutor
from udop.lineage import openlineage
from udop.spec.loader import load_pipeline
from udop.store import open_store

PIPELINE = """
apiVersion: udop/v1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  tasks:
    - id: orders
      type: extract
      source: {{connector: local, path: "{src}", format: csv}}
    - id: totals
      type: transform
      depends_on: [orders]
      steps:
        - derive: {{doubled: "amount * 2"}}
        - select: [id, region, doubled]
    - id: checks
      type: validate
      depends_on: [totals]
      rules: [{{not_null: [region]}}, {{row_count: {{min: {min_rows}}}}}]
    - id: out
      type: load
      depends_on: [checks]
      target: {{connector: local, path: "{dst}", format: parquet}}
"""


@pytest.fixture
def events_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """OpenLineage on, through the client's own file transport configuration (append: one JSON a line)."""
    path = tmp_path / "openlineage.jsonl"
    monkeypatch.setenv("UDOP_OPENLINEAGE", "1")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(path))
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    monkeypatch.setenv("OPENLINEAGE_NAMESPACE", "udop-test")
    openlineage.reset_client()
    yield path
    openlineage.reset_client()


def _run(tmp_path: Path, *, min_rows: int = 1) -> tuple[Any, Any, Path, Path]:
    src = tmp_path / "in" / "orders.csv"
    src.parent.mkdir()
    src.write_text("id,region,amount\n1,eu,2.5\n2,us,4.0\n3,eu,1.0\n")
    dst = tmp_path / "out"
    name = f"ol-{uuid.uuid4().hex[:6]}"
    pipeline = load_pipeline(PIPELINE.format(name=name, src=src, dst=dst, min_rows=min_rows),
                             filename="ol.yaml")
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    executor = LocalExecutor(store, workers=1, data_root=str(tmp_path / "data"))
    return executor.run(pipeline, run_id=f"r-{uuid.uuid4().hex[:6]}"), pipeline, src, dst


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _key(event: dict[str, Any]) -> tuple[str, str]:
    return event["job"]["name"], event["eventType"]


def test_a_run_sends_valid_events_for_the_run_and_each_task_in_order(
    events_file: Path, tmp_path: Path
) -> None:
    run, pipeline, src, dst = _run(tmp_path)
    assert run.state.value == "succeeded"
    events = _events(events_file)
    for event in events:
        validate_event(event)
    p = pipeline.name
    assert [_key(e) for e in events] == [
        (p, "START"),
        (f"{p}.orders", "START"), (f"{p}.orders", "COMPLETE"),
        (f"{p}.totals", "START"), (f"{p}.totals", "COMPLETE"),
        (f"{p}.checks", "START"), (f"{p}.checks", "COMPLETE"),
        (f"{p}.out", "START"), (f"{p}.out", "COMPLETE"),
        (p, "COMPLETE"),
    ]
    assert {e["job"]["namespace"] for e in events} == {"udop-test"}
    run_id = openlineage.run_uuid(p, run.id)
    assert events[0]["run"]["runId"] == events[-1]["run"]["runId"] == run_id
    tasks = {(e["job"]["name"], e["eventType"]): e for e in events[1:-1]}
    for event in tasks.values():  # the parent run facet links every task event to the run's
        assert event["run"]["facets"]["parent"]["run"]["runId"] == run_id
        job = event["run"]["facets"]["parent"]["job"]
        assert (job["namespace"], job["name"]) == ("udop-test", p)
    # a task's START and COMPLETE are one OpenLineage run
    assert tasks[(f"{p}.totals", "START")]["run"]["runId"] == tasks[(f"{p}.totals", "COMPLETE")]["run"]["runId"]

    extract = tasks[(f"{p}.orders", "COMPLETE")]
    assert [(d["namespace"], d["name"]) for d in extract["inputs"]] == [("file", str(src))]
    staged = extract["outputs"][0]
    assert staged["namespace"] == "file"
    assert staged["outputFacets"]["outputStatistics"]["rowCount"] == 3
    assert [f["name"] for f in staged["facets"]["schema"]["fields"]] == ["id", "region", "amount"]

    transform = tasks[(f"{p}.totals", "COMPLETE")]
    assert transform["inputs"][0]["name"] == staged["name"]
    out = transform["outputs"][0]
    assert [f["name"] for f in out["facets"]["schema"]["fields"]] == ["id", "region", "doubled"]
    mapping = {col: [(f["namespace"], f["name"], f["field"]) for f in v["inputFields"]]
               for col, v in out["facets"]["columnLineage"]["fields"].items()}
    assert mapping["doubled"] == [("file", staged["name"], "amount")]
    assert mapping["region"] == [("file", staged["name"], "region")]

    checks = tasks[(f"{p}.checks", "COMPLETE")]
    assertions = checks["inputs"][0]["inputFacets"]["dataQualityAssertions"]["assertions"]
    assert len(assertions) == 2 and all(a["success"] for a in assertions)

    load = tasks[(f"{p}.out", "COMPLETE")]
    target = load["outputs"][0]
    assert (target["namespace"], target["name"]) == ("file", str(dst))
    assert target["outputFacets"]["outputStatistics"]["rowCount"] == 3
    # a load writes the columns it read, one for one
    assert set(target["facets"]["columnLineage"]["fields"]) == {"id", "region", "doubled"}
    assert openlineage.stats["failed"] == 0


def test_a_failed_check_sends_fail_with_the_failed_assertion(events_file: Path, tmp_path: Path) -> None:
    run, pipeline, _, _ = _run(tmp_path, min_rows=10)
    assert run.state.value == "failed"
    events = _events(events_file)
    for event in events:
        validate_event(event)
    p = pipeline.name
    keys = [_key(e) for e in events]
    assert keys[-1] == (p, "FAIL")
    assert (f"{p}.checks", "FAIL") in keys
    assert (f"{p}.out", "START") not in keys  # upstream failed: it never ran, it has no run
    failed = next(e for e in events if _key(e) == (f"{p}.checks", "FAIL"))
    assert "row_count" in failed["run"]["facets"]["errorMessage"]["message"]
    assertions = failed["inputs"][0]["inputFacets"]["dataQualityAssertions"]["assertions"]
    assert [a["success"] for a in assertions] == [False]
    assert events[-1]["run"]["facets"]["errorMessage"]["message"]


def test_a_transport_that_fails_never_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UDOP_OPENLINEAGE", "1")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    # a folder that does not exist: every emit raises inside the client
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(tmp_path / "missing" / "ol.jsonl"))
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    openlineage.reset_client()
    before = openlineage.stats["failed"]
    try:
        run, _, _, _ = _run(tmp_path)
    finally:
        openlineage.reset_client()
    assert run.state.value == "succeeded"
    assert openlineage.stats["failed"] - before == 10  # every event counted, none sent


def test_off_by_default_nothing_is_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ol.jsonl"
    monkeypatch.delenv("UDOP_OPENLINEAGE", raising=False)
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(path))
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    openlineage.reset_client()
    run, _, _, _ = _run(tmp_path)
    assert run.state.value == "succeeded"
    assert not path.exists()


def test_a_cancelled_run_aborts_itself_and_its_running_task(
    events_file: Path, tmp_path: Path, project: Any
) -> None:
    import threading

    path = project.pipeline([project.task("first"), project.task("slow", "wait_for_cancel", depends_on=["first"],
                                                                 args={"marker": "started"})],
                            name=f"ol-{uuid.uuid4().hex[:6]}")
    pipeline = load_pipeline(str(path))
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    executor = LocalExecutor(store, workers=2, data_root=str(tmp_path / "data"), stop_grace=5)
    marker = project.root / "started"

    def stop_when_started() -> None:
        for _ in range(3000):
            if marker.exists():
                executor.request_stop("test stops it")
                return
            threading.Event().wait(0.01)

    stopper = threading.Thread(target=stop_when_started)
    stopper.start()
    run = executor.run(pipeline)
    stopper.join()
    assert run.state.value == "cancelled"
    events = _events(events_file)
    for event in events:
        validate_event(event)
    p = pipeline.name
    assert [_key(e) for e in events] == [
        (p, "START"), (f"{p}.first", "START"), (f"{p}.first", "COMPLETE"), (f"{p}.slow", "START"),
        (f"{p}.slow", "ABORT"), (p, "ABORT")]
