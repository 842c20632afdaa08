"""Sources read in place under the LocalExecutor: lineage and checks are recorded as before, a resumed
run reads what its extract recorded (and no copy of the source is made), and a source changed before
the resume stops the resumed task with one line instead of reading other data."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from udop.executor.local import LocalExecutor
from udop.spec.loader import load_pipeline
from udop.states import RunState, TaskState
from udop.store import open_store

ORDERS = pa.table({"region": ["eu", "us", "eu", "apac"], "amount": [1.5, 2.0, -1.0, 4.0], "note": ["n"] * 4})

PIPELINE = """\
apiVersion: udop/v1
kind: Pipeline
metadata: {name: lake}
spec:
  tasks:
    - id: orders
      type: extract
      source: {connector: parquet, path: orders.parquet}
    - id: totals
      type: transform
      depends_on: [orders]
      steps:
        - filter: "amount > 0"
        - aggregate: {by: [region], metrics: {total: {sum: amount}}}
        - sort: [region]
    - id: checks
      type: validate
      depends_on: [totals]
      rules: [{not_null: [region]}, {row_count: {min: 1}}]
    - id: publish
      type: load
      depends_on: [checks]
      target: {connector: csv, path: out/totals.csv}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    pq.write_table(ORDERS, tmp_path / "orders.parquet")
    (tmp_path / "pipeline.yaml").write_text(textwrap.dedent(PIPELINE))
    return tmp_path


def _run(root: Path, store: Any, **kwargs: Any) -> Any:
    executor = LocalExecutor(store, workers=2, data_root=str(root / "data"), services={"base_dir": str(root)})
    record = executor.run(load_pipeline(str(root / "pipeline.yaml")), **kwargs)
    return store.get_run(record.id)


def _block_the_target(root: Path) -> None:
    (root / "out").write_text("a file where the load wants a folder")  # the load fails until removed


def test_lineage_checks_and_a_resume_read_the_source_in_place(project: Path) -> None:
    store = open_store(f"sqlite:///{project / 'meta.db'}")
    try:
        _block_the_target(project)
        run = _run(project, store)
        assert run.state == RunState.FAILED
        tasks = {t.task_id: t for t in run.tasks}
        assert tasks["publish"].state == TaskState.FAILED
        assert tasks["orders"].result["output"]["format"] == "snapshot"

        (project / "out").unlink()
        resumed = _run(project, store, run_id=run.id, resume=True)
        assert resumed.state == RunState.SUCCEEDED
        tasks = {t.task_id: t for t in resumed.tasks}
        assert [len(tasks[t].attempts) for t in ("orders", "totals", "checks", "publish")] == [1, 1, 1, 2]
        assert (project / "out" / "totals.csv").read_text().splitlines() == [
            "region,total", "apac,4.0", "eu,1.5", "us,2.0"]

        lineage = {r.task_id: r for r in store.get_lineage(run.id)}
        assert lineage["orders"].inputs == [str(project / "orders.parquet")]
        assert lineage["orders"].rows == 4
        assert lineage["totals"].inputs == [tasks["orders"].result["output"]["uri"]]
        assert lineage["totals"].rows == 3
        assert sorted((c.task_id, c.rule, c.passed) for c in store.get_checks(run.id)) == [
            ("checks", "not_null(region)", True), ("checks", "row_count", True)]
        # no Parquet copy of the source in the run's data: the transform's output and the validate's
        # pass-through of it are all there is
        assert sorted(p.parent.name for p in (project / "data").rglob("*.parquet")) == ["checks", "totals"]
    finally:
        store.close()


def test_a_source_changed_before_the_resume_stops_the_resumed_task(project: Path) -> None:
    store = open_store(f"sqlite:///{project / 'meta.db'}")
    try:
        (project / "pipeline.yaml").write_text(textwrap.dedent(PIPELINE).replace(
            "    - id: totals\n", "    - {id: gate, type: python, callable: 'gate:ready'}\n    - id: totals\n"
        ).replace("      depends_on: [orders]\n      steps:", "      depends_on: [orders, gate]\n      steps:"))
        (project / "gate.py").write_text(
            "from pathlib import Path\n\n"
            "def ready(context, inputs):\n"
            "    if not (Path(context.services['base_dir']) / 'ready').exists():\n"
            "        raise ValueError('not ready')\n")
        run = _run(project, store)
        assert run.state == RunState.FAILED
        assert {t.task_id: t.state for t in run.tasks}["orders"] == TaskState.SUCCEEDED

        pq.write_table(ORDERS.slice(0, 1), project / "orders.parquet")  # changed after the snapshot
        (project / "ready").write_text("")
        resumed = _run(project, store, run_id=run.id, resume=True)
        assert resumed.state == RunState.FAILED
        totals = {t.task_id: t for t in resumed.tasks}["totals"]
        assert totals.state == TaskState.FAILED
        assert totals.error_message.startswith("task 'totals': input 'orders': the source changed after extract "
                                       f"'orders' recorded it: {project / 'orders.parquet'} was modified")
        assert "\n" not in totals.error_message
        assert not (project / "out").exists()
    finally:
        store.close()
