"""Exactly-once loads under SIGKILL: ``udop run`` kills itself (``UDOP_FAULT_INJECT``) at each commit
boundary of an incremental load — before the target's commit, between the target's commit and the
watermark's, between the watermark's and the task's record in the metadata store — then
``udop run --resume`` finishes the run and a next run loads rows added since. Every target must
then hold each source row exactly once; the same for two runs of one pipeline started together.
(The matrix itself is in exactly_once_support.py; benchmarks/exactly_once_matrix.py prints it.)"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from exactly_once_support import (
    BEFORE_COMMIT,
    FIRST,
    MORE,
    TARGETS,
    UDOP,
    Target,
    add_source_rows,
    check_kill_cell,
    definition,
    open_target,
    run_cell,
    udop,
)

# each test starts `udop run` three times or more: on a loaded 2-core machine that can pass 300 s
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    with open_target(request.param, tmp_path) as made:
        yield made


# The SIGKILL matrix is split over two files by fault point (the others in test_exactly_once_after_commit.py):
# pytest-xdist's --dist loadfile runs a file on one worker, and the whole matrix in one file was the
# longest single unit of the suite (~20 `udop run` cells, several minutes on a loaded 2-core machine).
@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.rabbitmq
@pytest.mark.parametrize("kind", TARGETS)
@pytest.mark.parametrize("fault", BEFORE_COMMIT)
def test_sigkill_at_each_commit_boundary_then_resume_loads_each_row_once(
    tmp_path: Path, kind: str, fault: str
) -> None:
    check_kill_cell(tmp_path, kind, fault)


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["postgres", "file"])
def test_sigterm_mid_load_cancels_the_run_and_resume_loads_each_row_once(tmp_path: Path, kind: str) -> None:
    """SIGTERM (what systemd and Kubernetes send) arrives with every row sent and the target's commit
    next: the load's thread carries on and commits while the run is cancelled (exit 143) and records
    the load as cancelled; ``--resume`` runs the load again, which finds its ledger entry."""
    with open_target(kind, tmp_path) as target:
        cell = run_cell(tmp_path, kind, target, "load-before-commit:SIGTERM")
    assert cell.killed.returncode == 128 + signal.SIGTERM, cell.killed.stdout + cell.killed.stderr
    assert "--resume r1" in cell.killed.stderr and "Traceback" not in cell.killed.stderr
    assert cell.resumed.returncode == 0, cell.resumed.stdout + cell.resumed.stderr
    assert cell.after_resume == (FIRST, FIRST)
    assert cell.nxt.returncode == 0, cell.nxt.stdout + cell.nxt.stderr
    assert cell.after_next == (FIRST + MORE, FIRST + MORE)


@pytest.mark.postgres
@pytest.mark.parametrize("target", ["postgres"], indirect=True)
@pytest.mark.parametrize("fault", ["load-before-commit", "load-committed"])
def test_a_new_run_after_a_crash_settles_the_crashed_range_from_the_ledger(
    tmp_path: Path, target: Target, fault: str
) -> None:
    """No resume: the next run finds the dead run's range in the target's ledger (committed: the
    watermark advances past it; not committed: it reads the range again) — and the dead run can
    no longer load it when resumed late."""
    add_source_rows(tmp_path / "shop.db", range(1, FIRST + 1))
    (tmp_path / "p.yaml").write_text(definition(f"eo-{uuid.uuid4().hex[:8]}", target.spec))
    assert udop(tmp_path, "--run-id", "r1", fault=fault).returncode == -signal.SIGKILL
    add_source_rows(tmp_path / "shop.db", range(FIRST + 1, FIRST + MORE + 1))
    nxt = udop(tmp_path, "--run-id", "r2")
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    assert target.count() == (FIRST + MORE, FIRST + MORE)
    late = udop(tmp_path, "--resume", "r1")
    assert target.count() == (FIRST + MORE, FIRST + MORE)
    if fault == "load-before-commit":  # r2 took r1's range over: r1 must not load it as well
        assert late.returncode == 1
        assert "run r2 already read the rows" in late.stdout + late.stderr


@pytest.mark.postgres
@pytest.mark.parametrize("target", ["postgres"], indirect=True)
def test_two_runs_of_one_incremental_pipeline_started_together_load_once(
    tmp_path: Path, target: Target
) -> None:
    add_source_rows(tmp_path / "shop.db", range(1, 50_001))
    (tmp_path / "p.yaml").write_text(definition(f"eo-{uuid.uuid4().hex[:8]}", target.spec))
    env = {**os.environ, "UDOP_HOME": str(tmp_path / ".udop")}
    env.pop("UDOP_FAULT_INJECT", None)
    procs = [
        subprocess.Popen(
            [UDOP, "run", "p.yaml", "--no-progress", "--run-id", run],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for run in ("ra", "rb")
    ]
    outputs: list[Any] = [p.communicate(timeout=240)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert target.count() == (50_000, 50_000)
    assert 0 in codes, outputs
    for run, other, code, out in zip(("ra", "rb"), ("rb", "ra"), codes, outputs, strict=True):
        if code != 0:  # refused in one line naming the other run: by max_active_runs, or the watermark lease
            if f"run '{other}' is running" in out:
                continue  # max_active_runs refused it before it started: nothing was recorded
            assert f"is held by run {other}" in out, out
            assert f"run {run} failed" in out, out
