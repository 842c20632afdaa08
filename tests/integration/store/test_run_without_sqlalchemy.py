"""A ``udop run`` on an SQLite database whose schema is current never imports SQLAlchemy (~0.15 s of a
short run): every store operation of a run (a fresh run with a retry, checks, lineage and an upstream
failure; a resume; a resume after the definition changed) goes to sqlite3. The runs happen in a process
where importing SQLAlchemy raises, and what they recorded is then read back through SQLAlchemy.

The same process refuses the other imports a local run on DuckDB does not need: sqlglot (~0.1 s; the
definition check needs it only for a task on another engine) and pydantic-settings (the settings read
their variables themselves). Its tasks run with the garbage collector on, which ``udop`` keeps off only
while it imports its modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from udop.states import AttemptState, RunState, TaskState
from udop.store import open_store

pytestmark = pytest.mark.slow  # five udop processes

TASKS = '''
import os
def flaky(context, inputs):
    n = int(open("count").read()) if os.path.exists("count") else 0
    open("count", "w").write(str(n + 1))
    if n == 0:
        raise RuntimeError("the first attempt fails")
def gate(context, inputs):
    import gc
    open("gc", "w").write(str(gc.isenabled()))
    if not os.path.exists("open"):
        raise RuntimeError("closed")
'''

PIPELINE = '''
apiVersion: udop/v1
kind: Pipeline
metadata: {name: nosa}
spec:
  max_active_runs: 1
  tasks:
  - {id: flaky, type: python, callable: "tasks:flaky", retry: {max_attempts: 2, base_delay: 0s}, timeout: null}
  - {id: src, type: extract, source: {connector: csv, path: src.csv}}
  - {id: q, type: transform, depends_on: [src], steps: [{sql: "SELECT id, name FROM src"}]}
  - {id: checks, type: validate, depends_on: [q], rules: [{not_null: [id]}, {row_count: {min: MIN}}]}
  - {id: out, type: load, depends_on: [checks], target: {connector: csv, path: out.csv, mode: overwrite}}
  - {id: gate, type: python, callable: "tasks:gate", depends_on: [out], timeout: null}
  - {id: after, type: python, callable: "tasks:gate", depends_on: [gate], timeout: null}
'''

#: run udop's CLI in a process where any import of SQLAlchemy (or sqlglot, pydantic-settings) fails, and
#: say whether one was tried
HOOKED = '''
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("sqlalchemy", "sqlglot", "pydantic_settings"):
            print("REFUSED IMPORT", name, file=sys.stderr)
            raise ImportError("a udop run on SQLite and DuckDB must not import " + name)
sys.meta_path.insert(0, Refuse())
from udop.cli import main
sys.argv[0] = "udop"
sys.exit(main())
'''


def _udop(root: Path, env: dict[str, str], *args: str, hooked: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", HOOKED, *args] if hooked else [str(Path(sys.executable).parent / "udop"), *args]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert "REFUSED IMPORT" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_runs_resumes_and_retries_record_everything_without_sqlalchemy(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(TASKS)
    (tmp_path / "src.csv").write_text("id,name\n1,a\n2,b\n3,\n")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE.replace("MIN", "1"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("UDOP_")}
    env["UDOP_HOME"] = str(tmp_path / ".udop")
    # the first run creates and migrates the database: that one may use SQLAlchemy and Alembic
    (tmp_path / "open").touch()
    assert _udop(tmp_path, env, "run", str(pipeline), "--no-progress", hooked=False).returncode == 0
    (tmp_path / "open").unlink()
    (tmp_path / "count").unlink()

    failed = _udop(tmp_path, env, "run", str(pipeline), "--no-progress")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert (tmp_path / "gc").read_text() == "True"  # a task runs with the garbage collector on
    run_id = failed.stdout.split("resume with: udop run <FILE> --resume ")[1].split()[0]

    # the definition changed: the resume goes on under a new version
    pipeline.write_text(PIPELINE.replace("MIN", "2"))
    (tmp_path / "open").touch()
    resumed = _udop(tmp_path, env, "run", str(pipeline), "--no-progress", "--resume", run_id, "--on-new-version")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    store = open_store(f"sqlite:///{tmp_path / '.udop' / 'udop.db'}")
    try:
        store._sqlite = False  # read back through SQLAlchemy, as on PostgreSQL
        run = store.get_run(run_id)
        assert run is not None and run.state is RunState.SUCCEEDED and run.pipeline_version == 2
        tasks = {t.task_id: t for t in run.tasks}
        assert all(t.state is TaskState.SUCCEEDED for t in tasks.values())
        assert [a.state for a in tasks["flaky"].attempts] == [AttemptState.FAILED, AttemptState.SUCCEEDED]
        assert [a.state for a in tasks["gate"].attempts] == [AttemptState.FAILED, AttemptState.SUCCEEDED]
        assert tasks["after"].error_message is None  # upstream_failed, then reset by the resume
        assert sorted((c.rule, c.passed) for c in store.get_checks(run_id)) == [
            ("not_null(id)", True), ("row_count", True)]  # kept: it succeeded before the resume
        outputs = {e.task_id: e.rows for e in store.get_lineage(run_id)}
        assert outputs["src"] == 3 and outputs["out"] == 3
        pipeline_record = store.get_pipeline("nosa")
        assert pipeline_record is not None and [v.version for v in pipeline_record.versions] == [1, 2]
    finally:
        store.close()
