"""`udop run --resume` after the process running the pipeline was killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from udop.states import AttemptState, RunState, TaskState

pytestmark = pytest.mark.slow
UDOP = str(Path(sys.executable).parent / "udop")


def test_a_run_killed_mid_way_resumes_where_it_stopped(project: Any) -> None:
    path = project.pipeline(
        [
            project.task("first", "record"),
            project.task("slow", "sleep_once", depends_on=["first"], args={"seconds": 120}),
            project.task("side", "record"),
            project.task("last", "record", depends_on=["slow"]),
        ]
    )
    env = {
        **os.environ,
        "UDOP_DATABASE_URL": f"sqlite:///{project.root / 'meta.db'}",
        "UDOP_DATA_ROOT": str(project.root / "data"),
    }
    proc = subprocess.Popen(
        [UDOP, "run", str(path), "--workers", "1"],
        cwd=project.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    marker = project.root / "started"
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    assert marker.exists(), f"the slow task never started: {out}"

    from udop.store import open_store

    store = open_store(env["UDOP_DATABASE_URL"])
    run_id = out.split("run ")[1].split()[0]
    killed = store.get_run(run_id)
    assert killed is not None and killed.state == RunState.RUNNING  # nobody got to record the end
    tasks = {t.task_id: t for t in killed.tasks}
    assert tasks["first"].state == TaskState.SUCCEEDED and tasks["slow"].state == TaskState.RUNNING

    resumed = subprocess.run(  # noqa: PLW1510 - the return code is what is checked
        [UDOP, "run", str(path), "--resume", run_id],
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    final = store.get_run(run_id)
    assert final is not None and final.state == RunState.SUCCEEDED
    tasks = {t.task_id: t for t in final.tasks}
    assert [a.state for a in tasks["slow"].attempts] == [AttemptState.ABANDONED, AttemptState.SUCCEEDED]
    # only what had not succeeded ran again
    assert (project.count("first"), project.count("slow"), project.count("last")) == (1, 2, 1)
    assert project.count("side") == 1
    store.close()


def test_two_runs_at_once_share_one_sqlite_store(project: Any) -> None:
    path = project.pipeline(
        [project.task(f"t{i}", "record", depends_on=[f"t{i - 1}"] if i else None) for i in range(20)]
    )
    env = {
        **os.environ,
        "UDOP_DATABASE_URL": f"sqlite:///{project.root / 'meta.db'}",
        "UDOP_DATA_ROOT": str(project.root / "data"),
    }
    procs = [
        subprocess.Popen(
            [UDOP, "run", str(path)],
            cwd=project.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    from udop.store import open_store

    store = open_store(env["UDOP_DATABASE_URL"])
    runs = store.list_runs()
    assert len(runs) == 3 and all(r.state == RunState.SUCCEEDED for r in runs)
    for r in runs:
        record = store.get_run(r.id)
        assert record is not None and all(len(t.attempts) == 1 for t in record.tasks)
    store.close()
