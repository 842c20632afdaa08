"""Exactly-once loads under SIGKILL, the fault points after the target's commit: between the target's
commit and the watermark's, and between the watermark's and the task's record in the metadata store.
The cells before the target's commit, SIGTERM and the runs without resume are in test_exactly_once.py;
the two files split one matrix so that pytest-xdist (--dist loadfile) can run its halves side by side."""

from __future__ import annotations

from pathlib import Path

import pytest
from exactly_once_support import AFTER_COMMIT, TARGETS, check_kill_cell

# each cell starts `udop run` three times: on a loaded 2-core machine that can pass 300 s
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.rabbitmq
@pytest.mark.parametrize("kind", TARGETS)
@pytest.mark.parametrize("fault", AFTER_COMMIT)
def test_sigkill_after_the_targets_commit_then_resume_loads_each_row_once(
    tmp_path: Path, kind: str, fault: str
) -> None:
    check_kill_cell(tmp_path, kind, fault)
