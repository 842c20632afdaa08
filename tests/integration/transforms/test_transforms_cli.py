"""Bad input through the real `udop` command: one line naming task and step, exit 2 when rejected
before running, exit 1 when the run fails, and a load's previous output left intact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow  # each test starts the CLI a few times

UDOP = [sys.executable, "-c", "from udop.cli import main; main()"]

PIPELINE = """\
apiVersion: udop/v1
kind: Pipeline
metadata: {name: bad-input}
spec:
  tasks:
    - id: orders
      type: extract
      source: {connector: SOURCE_CONNECTOR, path: SOURCE_PATH}
    - id: totals
      type: transform
      depends_on: [orders]
      steps:
        - filter: "amount > 0"
        - aggregate: {by: [region], metrics: {total: {sum: amount}}}
    - id: publish
      type: load
      depends_on: [totals]
      target: {connector: parquet, path: out/totals.parquet}
"""


def udop(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"UDOP_HOME": str(root / ".udop"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([*UDOP, *args], check=False, cwd=root, capture_output=True, text=True, env=env,
                          timeout=120)


def write(
    root: Path, connector: str = "parquet", path: str = "orders.parquet", steps: str | None = None
) -> Path:
    text = PIPELINE.replace("SOURCE_CONNECTOR", connector).replace("SOURCE_PATH", path)
    if steps is not None:
        text = text.replace('        - filter: "amount > 0"\n', steps)
    file = root / "pipeline.yaml"
    file.write_text(text)
    return file


@pytest.fixture
def root(tmp_path: Path) -> Path:
    pq.write_table(
        pa.table({"region": ["eu", "us", "eu"], "amount": [1.5, 2.0, -1.0]}), tmp_path / "orders.parquet"
    )
    return tmp_path


def test_unknown_column_is_rejected_before_running(root):
    write(root, steps='        - filter: "amont > 0"\n')
    done = udop(root, "validate", "pipeline.yaml")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    step_line = next(i for i, text in enumerate((root / "pipeline.yaml").read_text().splitlines(), 1)
                     if "amont" in text)
    assert lines[0].startswith(f"pipeline.yaml:{step_line}: spec.tasks[1].steps[0]: task 'totals', filter step: ")
    assert '"amont"' in lines[0]
    ran = udop(root, "run", "pipeline.yaml", "--no-progress")
    assert ran.returncode == 2
    assert not (root / "out").exists()


COPY_PIPELINE = """\
apiVersion: udop/v1
kind: Pipeline
metadata: {name: copy-orders}
spec:
  tasks:
    - id: orders
      type: extract
      source: {connector: parquet, path: orders.parquet}
    - id: publish
      type: load
      depends_on: [orders]
      target: {connector: parquet, path: out/orders.parquet}
"""


def test_a_load_that_fails_while_writing_keeps_the_previous_output(root):
    (root / "pipeline.yaml").write_text(COPY_PIPELINE)
    first = udop(root, "run", "pipeline.yaml", "--no-progress")
    assert first.returncode == 0, first.stderr
    target = root / "out" / "orders.parquet"
    before = pq.read_table(target)
    assert before.num_rows == 3

    # the next run's input is large and its load has a deadline it cannot meet: the extract succeeds,
    # the load is interrupted while its COPY is writing
    duckdb.sql(
        "COPY (SELECT 'eu' AS region, range::DOUBLE AS amount, md5(range::VARCHAR) AS note "
        f"FROM range(500000)) TO '{root / 'orders.parquet'}' (FORMAT parquet)"
    )
    (root / "pipeline.yaml").write_text(
        COPY_PIPELINE.replace("      depends_on: [orders]\n", "      depends_on: [orders]\n      timeout: 20ms\n")
    )
    second = udop(root, "run", "pipeline.yaml", "--no-progress")
    output = second.stdout + second.stderr
    assert second.returncode == 1, output
    assert "Traceback" not in output
    assert "orders succeeded: 500,000 rows" in output
    assert "publish: udop.TaskTimeout: task 'publish' attempt 1 ran longer than its timeout" in output
    assert pq.read_table(target).equals(before)
    # nothing left aside (udop's ownership marker beside the target is meant to stay)
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.endswith(".udop-output")) == [
        "orders.parquet"
    ]


def test_ragged_csv_is_rejected_before_running(root):
    (root / "orders.csv").write_text("region,amount\neu,1.5\nus,2.0,extra\n")
    write(root, connector="csv", path="orders.csv")
    done = udop(root, "validate", "pipeline.yaml")
    assert done.returncode == 2
    assert "orders.csv line 3: 3 fields where the header has 2 (a ragged row)" in done.stderr
