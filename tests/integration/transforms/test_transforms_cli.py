"""Bad input through the real `udop` command: one line naming task and step, exit 2 when rejected
before running, exit 1 when the run fails, and a load's previous output left intact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_a_failed_run_keeps_the_previous_load_output(root):
    write(root)
    first = udop(root, "run", "pipeline.yaml", "--no-progress")
    assert first.returncode == 0, first.stderr
    target = root / "out" / "totals.parquet"
    before = pq.read_table(target).to_pydict()
    assert sorted(zip(before["region"], before["total"], strict=True)) == [("eu", 1.5), ("us", 2.0)]

    (root / "orders.parquet").unlink()  # the next run's input is gone
    second = udop(root, "run", "pipeline.yaml", "--no-progress")
    assert second.returncode == 1
    assert "task 'orders': source: no parquet file matches" in second.stdout + second.stderr
    assert "Traceback" not in second.stdout + second.stderr
    assert pq.read_table(target).to_pydict() == before


def test_ragged_csv_is_rejected_before_running(root):
    (root / "orders.csv").write_text("region,amount\neu,1.5\nus,2.0,extra\n")
    write(root, connector="csv", path="orders.csv")
    done = udop(root, "validate", "pipeline.yaml")
    assert done.returncode == 2
    assert "orders.csv line 3: 3 fields where the header has 2 (a ragged row)" in done.stderr
