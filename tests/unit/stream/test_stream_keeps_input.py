"""Which stream pipelines keep each batch's input on AWS to resume a failed batch (``keeps_input``): those
whose run can fail after a load committed, and no others (they pay no S3 write)."""

from __future__ import annotations

from pathlib import Path

import pytest

from udop.aws.streams import keeps_input
from udop.spec.loader import load_pipeline

LOAD = "type: load, target: {connector: sqlite, database: t.db, table: t, mode: append}"
CHECK = "type: validate, rules: [{not_null: [id]}]"


@pytest.mark.parametrize(
    ("tasks", "keeps"),
    [
        # one load, every other task before it: a failed run loaded nothing
        ([f"{{id: land, depends_on: [events], {LOAD}}}"], False),
        ([f"{{id: checked, depends_on: [events], {CHECK}}}",
          f"{{id: land, depends_on: [checked], {LOAD}}}"], False),
        # two loads: the second can fail after the first committed
        ([f"{{id: one, depends_on: [events], {LOAD}}}", f"{{id: two, depends_on: [events], {LOAD}}}"], True),
        # a task after the load, or beside it
        ([f"{{id: land, depends_on: [events], {LOAD}}}",
          f"{{id: after, depends_on: [events, land], {CHECK}}}"], True),
        ([f"{{id: land, depends_on: [events], {LOAD}}}", f"{{id: beside, depends_on: [events], {CHECK}}}"],
         True),
        # no load: nothing written exactly once to protect
        ([f"{{id: checked, depends_on: [events], {CHECK}}}"], False),
    ],
)
def test_a_batch_keeps_its_input_when_a_task_can_fail_after_a_load_committed(
    tmp_path: Path, tasks: list[str], keeps: bool
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "apiVersion: udop/v1\nkind: Pipeline\nmetadata: {name: p}\nspec:\n"
        "  trigger: {stream: {source: {connector: sqs, queue: q}, id: events}}\n  tasks:\n"
        + "".join(f"    - {t}\n" for t in tasks)
    )
    assert keeps_input(load_pipeline(path)) is keeps
